"""KLoM of DMM on the first n requests of an ``unlearn-eval`` (issue 17, diagnostics).

Unlearns (or reads back from ``OUT/unlearned/``) the first n of the evaluation's
originals with DMM and the datamodel at ``--datamodel``, and prints the KLoM p95 of those
n models against all the evaluation's oracles, beside do-nothing and retraining on the
same n requests. It compares two datamodels on the same requests while a full evaluation
is still running (the full evaluation reuses every model this unlearns).

    python experiments/unlearning/first_requests.py experiments/unlearning/mnist5k.toml \
        runs/unlearning-mnist5k --client 15 -n 10 --datamodel runs/unlearning-mnist5k/datamodel.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fedsec.config import load_config
from fedsec.unlearning.artifact import config_hash, load_artifact, tensor_hash
from fedsec.unlearning.evaluation import klom_splits, model_margins, unlearn_cached
from fedsec.unlearning.federated import Federation, UnlearnSettings, train_federations
from fedsec.unlearning.klom import klom, percentile
from fedsec.unlearning.subsets import federation_variant
from fedsec_core.seeding import derive_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the unlearn-eval config")
    parser.add_argument("out", type=Path, help="the unlearn-eval --out folder")
    parser.add_argument("--client", type=int, required=True, help="the forgotten client")
    parser.add_argument("-n", type=int, required=True, help="the first n requests")
    parser.add_argument("--models", type=int, default=50, help="unlearn-eval's --models (N)")
    parser.add_argument("--datamodel", type=Path, required=True, help="a datamodel artifact")
    args = parser.parse_args()
    config = load_config(args.config)
    torch.set_num_threads(config.engine.client_num_cpus)
    base = federation_variant(config, config.seed)
    fed = Federation.from_config(base)
    datamodel = load_artifact(
        args.datamodel, config_hash=config_hash(fed.config), inputs_hash=tensor_hash(fed.inputs)
    ).datamodel
    forget = (args.client,)
    seeds = [derive_seed(config.seed, "klom-original", i) for i in range(args.models)]
    oracle_seeds = [derive_seed(config.seed, "klom-oracle", i) for i in range(args.models)]
    jobs = [(s, ()) for s in seeds] + [(s, forget) for s in oracle_seeds]
    jobs += [(s, forget) for s in seeds[: args.n]]  # the retrainings of the n requests
    states, _ = train_federations(
        base, jobs, progress=False, cache_dir=args.out / "models" / tensor_hash(fed.inputs)[:16]
    )
    m = args.models
    originals, oracles, retrained = states[: args.n], states[m : 2 * m], states[2 * m :]
    rows = klom_splits(fed, forget)

    oracle_margins = model_margins(fed, oracles)

    def report(name: str, model_states) -> None:
        k = klom(model_margins(fed, model_states), oracle_margins)
        cells = " ".join(
            f"{split} {percentile(k[torch.as_tensor(r)]):.3f}" for split, r in rows.items()
        )
        print(f"{name:8s} n={len(model_states)}  KLoM p95 {cells}", flush=True)

    report("none", originals)
    report("retrain", retrained)
    unlearned = [
        unlearn_cached(
            args.out / "unlearned",
            "dmm",
            fed=fed,
            state=state,
            forget=forget,
            seed=seed,
            settings=UnlearnSettings(),
            datamodel=datamodel,
        )[0]
        for state, seed in zip(originals, seeds, strict=False)
    ]
    report("dmm", unlearned)


if __name__ == "__main__":
    main()
