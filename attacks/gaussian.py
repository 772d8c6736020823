"""``gaussian``: the update is replaced by Gaussian noise (untargeted).

The client does not train: it sends ``w0 + n`` with ``n ~ N(0, sigma^2 I)`` over the
whole parameter vector, drawn from a ``torch.Generator`` seeded with the round's attack
seed (``ctx.seed``) on the training device. It claims its partition's size as
``num-examples``; its reported loss is that of the global model on its data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.untargeted import UntargetedAttack
from fedsec_core.params import param, positive
from fedsec_core.training import TrainStats, assign_flat_params, evaluate


def gaussian_noise(
    numel: int, sigma: float, seed: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``numel`` draws of N(0, sigma^2) from a generator seeded with ``seed`` on ``device``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return sigma * torch.randn(numel, generator=generator, device=device, dtype=dtype)


@dataclass(kw_only=True, eq=False)
class GaussianNoise(UntargetedAttack):
    name = "gaussian"

    sigma: float = param(1.0, positive, "> 0 (the noise's standard deviation)")

    def train(self, model, x, y, global_flat, ctx, train_kwargs):
        loss = evaluate(model, x, y, device=ctx.device).loss
        return TrainStats(loss=loss, num_examples=int(y.shape[0]), num_steps=0)

    def transform_update(self, model, global_flat, ctx, stats) -> None:
        w0 = global_flat.to(ctx.device)
        noise = gaussian_noise(w0.numel(), self.sigma, ctx.seed, ctx.device, w0.dtype)
        assign_flat_params(model, w0 + noise)
