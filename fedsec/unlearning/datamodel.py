"""Linear datamodels fitted by ridge regression (Georgiev et al. 2024, "Attribute-to-
Delete: Machine Unlearning via Datamodel Matching", Sec. 3; Ilyas et al. 2022).

A datamodel predicts a model's K logits on input x from which units S' it was trained on:

    f(x; S') ~ b(x) + sum_{i in S'} B[i, x, :]

B and b are estimated from M models trained on random subsets (masks) of the U units by
one ridge regression for all inputs and all K logits at once: with the masks X (M, U)
and the stacked outputs Y (M, N*K), both centred (the intercept b is not penalised),

    B = (Xc^T Xc + lambda I)^-1 Xc^T Yc,        b = mean(Y) - mean(X) B.

lambda: with at least twice as many models as units (M >= 2U: client-level datamodels,
tens of clients and ~100 models) the fit is plain least squares, lambda = 0. Otherwise
lambda is chosen on held-out models (the last ``val_fraction`` of a seeded permutation of
the M models) from a grid scaled to the mean eigenvalue of Xc^T Xc; the final fit uses all
M models with that lambda. One eigendecomposition of the U x U Gram matrix serves the
whole grid.

Why no penalty when the masks determine B: DMM uses B as an *effect*, the expected change
of the logits when units are removed, and least squares estimates it without bias. A
lambda chosen by held-out MSE is the best predictor of one model's noisy logits, and
those are mostly outputs that no single unit moves, so it shrinks every effect, the
large ones included, by about mean_eig / (mean_eig + lambda). On the mnist5k unlearning
setting (20 clients, seed-to-seed logit noise larger than one client's effect) it chose
lambda = 2.5 times the mean eigenvalue, and the forgotten client's predicted effect was
28% of the measured one (least squares: 110%); on digits, where the noise is smaller,
94% against 103% (experiments/unlearning/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_LAMBDA_GRID = tuple(float(v) for v in np.logspace(-5, 2, 15))  # x mean eigenvalue


@dataclass(frozen=True)
class Datamodel:
    """Fitted datamodel: ``B`` (U, N, K), intercept ``b`` (N, K), the ridge ``lam``.

    ``val_mse``: held-out mean squared error of the logits at the chosen lambda (NaN
    when lambda was given rather than chosen).
    """

    B: torch.Tensor
    b: torch.Tensor
    lam: float
    val_mse: float = float("nan")

    @property
    def num_units(self) -> int:
        return self.B.shape[0]

    def predict(self, mask: torch.Tensor) -> torch.Tensor:
        """Predicted logits (N, K) of a model trained on the units where ``mask`` is true."""
        return self.b + torch.einsum("u,unk->nk", mask.to(self.B.dtype), self.B)

    def forget_effect(self, forget: list[int] | tuple[int, ...], rows=None) -> torch.Tensor:
        """sum_{i in F} B[i, x, :] over the forget units, on inputs ``rows`` (default all)."""
        B = self.B[list(forget)]
        if rows is not None:
            B = B[:, rows]
        return B.sum(0)

    def influence(self) -> torch.Tensor:
        """Per unit, the mean |B[i, x, k]| over inputs and logits: how much it moves outputs."""
        return self.B.abs().mean(dim=(1, 2))


def predicted_oracle(logits: torch.Tensor, datamodel: Datamodel, forget, rows=None) -> torch.Tensor:
    """DMM's target: f_hat(x) = f(x; theta) - sum_{i in F} B[i, x, :].

    Anchored on the logits of the model being unlearned (``logits`` on inputs ``rows``),
    so only the datamodel's prediction of the *difference* is used.
    """
    return logits - datamodel.forget_effect(forget, rows).to(logits.dtype)


def fit_datamodel(
    masks: torch.Tensor,
    outputs: torch.Tensor,
    *,
    lam: float | None = None,
    lambda_grid: tuple[float, ...] = DEFAULT_LAMBDA_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    least_squares: bool | None = None,
) -> Datamodel:
    """Ridge datamodel of ``outputs`` (M, N, K) on ``masks`` (M, U), vectorised in torch.

    ``lam`` given: fit with it. Otherwise lambda = 0 (least squares) when M >= 2U, else
    chosen from ``lambda_grid`` (multiples of the mean eigenvalue of the centred Gram
    matrix) by held-out MSE; then the fit on all models. ``val_mse`` is the held-out MSE
    at the lambda used, whenever lambda was not given. ``least_squares`` True or False
    forces the choice that M >= 2U makes by default (to compare the two fits).
    """
    if masks.dim() != 2 or outputs.dim() != 3 or masks.shape[0] != outputs.shape[0]:
        raise ValueError(
            f"need masks (M, U) and outputs (M, N, K), got {tuple(masks.shape)} "
            f"and {tuple(outputs.shape)}"
        )
    m, u = masks.shape
    _, n, k = outputs.shape
    X = masks.to(torch.float64)
    Y = outputs.reshape(m, n * k).to(torch.float64)
    val_mse = float("nan")
    if lam is None:
        n_val = max(1, round(val_fraction * m))
        if m - n_val < 2:
            raise ValueError(f"need at least 3 models to choose lambda, got {m}")
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(m))
        tr, va = perm[: m - n_val], perm[m - n_val :]
        scale, solve = _ridge_solver(X[tr], Y[tr])
        best = None
        if least_squares is None:
            least_squares = m >= 2 * u
        for factor in (0.0,) if least_squares else lambda_grid:
            B, b = solve(factor * scale)
            mse = ((b + X[va] @ B - Y[va]) ** 2).mean().item()
            if best is None or mse < best[1]:
                best = (factor * scale, mse)
        lam, val_mse = best
    _, solve = _ridge_solver(X, Y)
    B, b = solve(float(lam))
    return Datamodel(
        B=B.reshape(u, n, k).float(), b=b.reshape(n, k).float(), lam=float(lam), val_mse=val_mse
    )


def _ridge_solver(X: torch.Tensor, Y: torch.Tensor):
    """(mean eigenvalue, lam -> (B, b)) for centred ridge regression of Y on X."""
    x_mean, y_mean = X.mean(0), Y.mean(0)
    Xc, Yc = X - x_mean, Y - y_mean
    evals, evecs = torch.linalg.eigh(Xc.T @ Xc)
    evals = evals.clamp_min(0)
    proj = evecs.T @ (Xc.T @ Yc)  # (U, D)
    scale = max(evals.mean().item(), 1e-12)
    # Directions the masks do not vary in (a unit in every model) get no coefficient:
    # at lambda = 0 that is the minimum-norm least-squares fit, not a division by ~0.
    tol = 1e-9 * max(evals.max().item(), 1e-12)

    def solve(lam: float):
        denom = evals + lam
        keep = (denom > tol)[:, None]
        B = evecs @ torch.where(keep, proj / torch.where(keep, denom[:, None], 1.0), 0.0)
        return B, y_mean - x_mean @ B

    return scale, solve
