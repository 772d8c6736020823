"""Why the reference Multi-metrics keeps a Gaussian-noise update: a synthetic round.

The matrix's reference variant ends at chance against 2 noise attackers of 10 on every
seed (README). This builds rounds like it (8 honest updates close to each other, 2 noise
updates far from everyone), scores them with the rule's own functions and prints, per
round: the 3 clients kept (the lowest scores; clients 0 and 1 are the noise), the
eigenvalues of the features' correlation matrix, the share of each score that comes from
the directions of (almost) no variance, and where the noise clients rank when the
quadratic form is centred (a Mahalanobis distance to the features' mean).

    python experiments/robustness/reference_noise.py
"""

from __future__ import annotations

import torch

from defenses.rules.multi_metrics import reference_features, whitened_square_norms

D, HONEST, NOISE, KEEP = 20_000, 8, 2, 3


def round_models(seed: int) -> torch.Tensor:
    """(10, D) models: the noise clients first (sigma 1 around the global model), then
    honest ones (a shared step plus client spread, both about 1/100 of it)."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(D, generator=g, dtype=torch.float64)
    step = 0.01 * torch.randn(D, generator=g, dtype=torch.float64)
    spread = 0.02 * torch.rand(HONEST, 1, generator=g, dtype=torch.float64)
    honest = w0 + step + spread * torch.randn(HONEST, D, generator=g, dtype=torch.float64)
    noise = w0 + torch.randn(NOISE, D, generator=g, dtype=torch.float64)
    return torch.cat([noise, honest])


def main() -> None:
    print(
        "seed | kept (lowest 3) | correlation eigenvalues | score share off the top eigenvector "
        "(noise; honest mean) | centred rank of the noise (1 = most suspicious)"
    )
    for seed in range(10):
        t = reference_features(round_models(seed))
        kept = whitened_square_norms(t).argsort()[:KEEP].tolist()
        n = t.shape[0]
        centred = t - t.mean(dim=0)
        std = (centred.square().sum(dim=0) / (n - 1)).sqrt()
        eigenvalues, vectors = torch.linalg.eigh((centred / std).T @ (centred / std) / (n - 1))
        parts = ((t / std) @ vectors).square() / eigenvalues  # score = parts.sum(1)
        off_top = parts[:, :-1].sum(dim=1) / parts.sum(dim=1)
        mahalanobis = whitened_square_norms(centred)  # the same form, centred
        rank = (-mahalanobis).argsort().argsort()[:NOISE] + 1
        print(
            f"{seed} | {kept} | {', '.join(f'{v:.1e}' for v in eigenvalues.tolist())} | "
            f"{off_top[0]:.3f}, {off_top[1]:.3f}; {off_top[NOISE:].mean():.3f} | {rank.tolist()}"
        )


if __name__ == "__main__":
    main()
