"""Does the datamodel predict the effect of forgetting a client? (issue 17, diagnostics)

From an ``unlearn-eval`` output folder (its cached originals, oracles and datamodel),
compare on the forget client's examples the datamodel's predicted change of the logits,
``-B[client]``, with the measured one: the oracles' mean logits minus the originals'.
DMM matches ``logits - B[client]``, so the ratio of the two norms bounds how much of
the way to the oracles DMM can go, whatever the fine-tuning does.

    python experiments/unlearning/datamodel_check.py experiments/unlearning/mnist5k.toml \
        runs/unlearning-mnist5k --client 15 --models 50 [--datamodel OTHER.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fedsec.config import load_config
from fedsec.unlearning.artifact import tensor_hash
from fedsec.unlearning.federated import (
    DATAMODEL_FILE,
    Federation,
    get_datamodel,
    train_federations,
)
from fedsec.unlearning.subsets import federation_variant
from fedsec_core.seeding import derive_seed
from fedsec_core.training import predict_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the unlearn-eval config")
    parser.add_argument("out", type=Path, help="the unlearn-eval --out folder")
    parser.add_argument("--client", type=int, required=True, help="the forgotten client")
    parser.add_argument("--models", type=int, default=50, help="unlearn-eval's --models (N)")
    parser.add_argument(
        "--datamodel", type=Path, help="another artifact of the same setting (default: OUT's)"
    )
    args = parser.parse_args()
    config = load_config(args.config)
    torch.set_num_threads(config.engine.client_num_cpus)
    base = federation_variant(config, config.seed)
    fed = Federation.from_config(base)
    path = args.datamodel or args.out / DATAMODEL_FILE
    art, _ = get_datamodel(fed, path, progress=False, log=lambda s: None)
    rows = fed.client_rows((args.client,))
    x = fed.inputs[rows]

    def all_logits(label: str, exclude: tuple[int, ...]) -> torch.Tensor:
        # the models unlearn-eval trained and kept (any missing one is trained and kept)
        jobs = [(derive_seed(config.seed, label, i), exclude) for i in range(args.models)]
        states, _ = train_federations(
            base,
            jobs,
            progress=False,
            cache_dir=args.out / "models" / tensor_hash(fed.inputs)[:16],
        )
        return torch.stack([predict_logits(fed.model_from(s), x) for s in states])

    originals = all_logits("klom-original", ())
    measured = all_logits("klom-oracle", (args.client,)).mean(0) - originals.mean(0)
    predicted = -art.datamodel.B[args.client][torch.as_tensor(rows)]
    m, p = measured.flatten(), predicted.flatten()
    print(f"client {args.client}: {len(rows)} examples, datamodel lambda {art.datamodel.lam:.2f}")
    print(f"correlation of predicted and measured logit change: {np.corrcoef(m, p)[0, 1]:.3f}")
    print(
        f"norm: predicted {p.norm():.2f}, measured {m.norm():.2f}, ratio {p.norm() / m.norm():.3f}"
    )
    print(
        f"mean |measured change| {m.abs().mean():.3f}; the originals' seed-to-seed std "
        f"of a logit, averaged: {originals.std(0).mean():.3f}"
    )


if __name__ == "__main__":
    main()
