"""Fine-tuning a model towards targets: Datamodel Matching, Oracle Matching, baselines.

Georgiev et al. 2024 ("Attribute-to-Delete: Machine Unlearning via Datamodel Matching")
unlearn by fine-tuning the model so its logits match target logits (mean squared error
over all K logits) on a matching set; the defaults are those of the paper's code: Adam,
lr 5e-4 decayed x0.95 per epoch, batch 512, 5 epochs. The same loop, with cross-entropy
on retained data or negated cross-entropy on forget data, gives the fine-tune and
gradient-ascent baselines. Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class MatchingConfig:
    """Hyper-parameters of the fine-tuning loop (the paper's code's defaults)."""

    epochs: int = 5
    lr: float = 5e-4
    lr_decay: float = 0.95  # per epoch
    batch_size: int = 512


def fine_tune(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    seed: int,
    settings: MatchingConfig = MatchingConfig(),
    device="cpu",
) -> list[float]:
    """Adam on ``loss_fn(model(x_batch), targets_batch)``; returns each epoch's mean loss.

    Batches follow a permutation drawn per epoch from a generator seeded with ``seed``;
    dropout draws from the global generator, seeded too inside ``fork_rng``.
    """
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=settings.lr_decay)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(settings.epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, settings.batch_size):
                idx = order[start : start + settings.batch_size]
                loss = loss_fn(model(x[idx].to(device)), targets[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            history.append(total / n)
    model.eval()
    return history


def match_logits(
    model: nn.Module,
    x: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    seed: int,
    settings: MatchingConfig = MatchingConfig(),
    device="cpu",
) -> list[float]:
    """DMM / OM: fine-tune ``model`` so its logits on ``x`` match ``target_logits`` (MSE)."""
    return fine_tune(
        model, x, target_logits.float(), F.mse_loss, seed=seed, settings=settings, device=device
    )


def finetune_retain(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    settings: MatchingConfig = MatchingConfig(),
    device="cpu",
) -> list[float]:
    """Baseline: keep training on retained data (cross-entropy)."""
    return fine_tune(
        model, x, y.long(), F.cross_entropy, seed=seed, settings=settings, device=device
    )


def gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    settings: MatchingConfig = MatchingConfig(),
    device="cpu",
) -> list[float]:
    """Baseline: ascend the cross-entropy of the forget data (losses returned negated)."""
    return fine_tune(
        model,
        x,
        y.long(),
        lambda out, t: -F.cross_entropy(out, t),
        seed=seed,
        settings=settings,
        device=device,
    )
