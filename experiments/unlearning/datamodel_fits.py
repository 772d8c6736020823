"""Least squares against the held-out ridge: which datamodel fit predicts the effect of
forgetting a client? (issue 17, the protocol's check on validation models)

Trains the datamodel's M subset federations (or reads their outputs from ``--outputs``,
where a first run saves them), fits B both ways, and compares each fit's predicted
change of the logits when ``--client`` is removed, ``-B[client]``, with the measured one
(the N oracles' mean logits minus the N originals'; trained or read from OUT/models) on
the client's own examples and on all the others.

    python experiments/unlearning/datamodel_fits.py experiments/unlearning/mnist5k.toml \\
        runs/unlearning-mnist5k-validation --client auto \\
        --outputs runs/unlearning-mnist5k-validation/datamodel-outputs.pt \\
        --set seed=1000 --set data.partition_seed=0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fedsec.config import load_config
from fedsec.unlearning.artifact import tensor_hash
from fedsec.unlearning.datamodel import fit_datamodel
from fedsec.unlearning.federated import (
    DEFAULT_Q,
    FederatedSubsetTrainer,
    Federation,
    train_federations,
)
from fedsec.unlearning.subsets import federation_variant, train_datamodel
from fedsec_core.seeding import derive_seed
from fedsec_core.training import predict_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the unlearn-eval config")
    parser.add_argument("out", type=Path, help="a folder for (or with) the trained models")
    parser.add_argument("--client", default="auto", help="the forgotten client, or auto")
    parser.add_argument("--models", type=int, default=50, help="originals and oracles (N)")
    parser.add_argument("--subsets", type=int, default=100, help="the datamodel's M")
    parser.add_argument("--outputs", type=Path, required=True, help="the subset outputs' file")
    parser.add_argument("--set", action="append", default=[], help="config override")
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    torch.set_num_threads(config.engine.client_num_cpus)
    base = federation_variant(config, config.seed)  # the federation pinned, as every model's
    fed = Federation.from_config(base)
    if args.outputs.is_file():
        saved = torch.load(args.outputs)
        masks, outputs = saved["masks"], saved["outputs"]
    else:  # the trainings get_datamodel runs: same masks, same seeds
        build = train_datamodel(
            FederatedSubsetTrainer(fed.config, fed.inputs),
            num_models=args.subsets,
            q=DEFAULT_Q,
            seed=fed.config.seed,
            progress=False,
        )
        masks, outputs = torch.from_numpy(build.masks), build.outputs
        torch.save({"masks": masks, "outputs": outputs}, args.outputs)
    ridge_seed = derive_seed(fed.config.seed, "ridge-val")
    least_squares = fit_datamodel(masks, outputs, seed=ridge_seed)
    if least_squares.lam != 0.0:
        raise SystemExit("M < 2U: the default fit is the held-out ridge, nothing to compare")
    heldout = fit_datamodel(masks, outputs, seed=ridge_seed, least_squares=False)
    client = int(least_squares.influence().argmax()) if args.client == "auto" else int(args.client)

    def all_logits(label: str, exclude: tuple[int, ...]) -> torch.Tensor:
        jobs = [(derive_seed(config.seed, label, i), exclude) for i in range(args.models)]
        states, _ = train_federations(
            base,
            jobs,
            workers=1,
            progress=False,
            cache_dir=args.out / "models" / tensor_hash(fed.inputs)[:16],
        )
        return torch.stack([predict_logits(fed.model_from(s), fed.inputs) for s in states])

    originals = all_logits("klom-original", ())
    oracles = all_logits("klom-oracle", (client,))
    measured = (oracles.mean(0) - originals.mean(0)).double()
    noise = (originals.var(0) / args.models + oracles.var(0) / args.models).double()
    own = torch.zeros(len(fed.inputs), dtype=torch.bool)
    own[torch.as_tensor(fed.client_rows((client,)))] = True
    print(f"client {client}: {int(own.sum())} own examples of {len(own)}")
    print("fit | lambda | own examples: MSE, norm ratio | other examples: MSE, norm ratio")
    for name, dm in (("held-out ridge", heldout), ("least squares", least_squares)):
        predicted = -dm.B[client].double()
        cells = []
        for rows in (own, ~own):
            mse = ((predicted[rows] - measured[rows]) ** 2).mean().item()
            ratio = (predicted[rows].norm() / measured[rows].norm()).item()
            cells.append(f"{mse:.4f} (measurement noise {noise[rows].mean():.4f}), {ratio:.3f}")
        print(f"{name} | {dm.lam:.4g} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
