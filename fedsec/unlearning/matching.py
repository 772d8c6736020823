"""Fine-tuning a model towards targets: Datamodel Matching, Oracle Matching, baselines.

Georgiev et al. 2024 ("Attribute-to-Delete: Machine Unlearning via Datamodel Matching")
unlearn by fine-tuning the model so its logits match target logits (mean squared error
over all K logits) on a matching set. The paper's code runs Adam, lr 5e-4 decayed x0.95
per epoch, batch 512, for 5 epochs, made for matching sets of tens of thousands of
examples; on a client-sized set that is a few steps, so by default the loop here runs
until the loss on a held-out part of the set stops improving (:class:`MatchingConfig`).
The same loop, with cross-entropy on retained data or negated cross-entropy on forget
data, gives the fine-tune and gradient-ascent baselines. Pure torch.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedsec.unlearning.settings import MatchingConfig as MatchingConfig  # declared there

#: Epochs of gradient ascent when the settings say "until converged" (the paper code's).
GRADIENT_ASCENT_EPOCHS = 5

DEFAULT_SETTINGS = MatchingConfig()


@dataclass(frozen=True)
class MatchingReport:
    """How far a fine-tuning got: the loss before and after (on the held-out part of the
    set when converging, the epoch mean over the whole set with fixed epochs), the Adam
    steps taken, whether it stopped because the loss stopped improving (None for the
    fixed-epoch loop, which does not ask), and ``examples``: the example-gradients it
    computed (the rows of every batch it stepped on; the held-out checks add forward
    passes only, about 20% / ``check_every`` of a batch per step), the cost measure
    that does not depend on the machine or on what else runs on it."""

    start_loss: float
    end_loss: float
    steps: int
    converged: bool | None
    examples: int = 0

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {
            "start_loss": self.start_loss,
            "end_loss": self.end_loss,
            "steps": self.steps,
            "converged": self.converged,
            "examples": self.examples,
        }


def fine_tune(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    seed: int,
    settings: MatchingConfig = DEFAULT_SETTINGS,
    device="cpu",
) -> MatchingReport:
    """Adam on ``loss_fn(model(x_batch), targets_batch)``, as ``settings`` say.

    Batches follow permutations drawn from a generator seeded with ``seed`` (so does the
    held-out split); dropout draws from the global generator, seeded too inside
    ``fork_rng``. The model is left in eval mode.
    """
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if settings.epochs is None:
            report = _until_converged(model, opt, x, targets, loss_fn, gen, settings, device)
        else:
            report = _fixed_epochs(model, opt, x, targets, loss_fn, gen, settings, device)
    model.eval()
    return report


def _step(model, opt, x, targets, idx, loss_fn, device) -> float:
    """One Adam step on the rows ``idx``; returns the batch's loss."""
    loss = loss_fn(model(x[idx].to(device)), targets[idx].to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _fixed_epochs(model, opt, x, targets, loss_fn, gen, settings, device) -> MatchingReport:
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=settings.lr_decay)
    n = x.shape[0]
    history, steps = [], 0
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            total += _step(model, opt, x, targets, idx, loss_fn, device) * len(idx)
            steps += 1
        sched.step()
        history.append(total / n)
    return MatchingReport(history[0], history[-1], steps, None, settings.epochs * n)


def _until_converged(model, opt, x, targets, loss_fn, gen, settings, device) -> MatchingReport:
    n = x.shape[0]
    order = torch.randperm(n, generator=gen)
    n_hold = min(max(1, round(settings.holdout * n)), n - 1) if n > 1 else 0
    held, fit = order[:n_hold], order[n_hold:]
    if n_hold == 0:  # one example: it is both what is fitted and what is checked
        held = fit

    def held_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = loss_fn(model(x[held].to(device)), targets[held].to(device)).item()
        model.train()
        return value

    start = best = held_loss()
    best_state = copy.deepcopy(model.state_dict())
    steps, examples, stale, converged = 0, 0, 0, False
    while steps < settings.max_steps and not converged:
        shuffled = fit[torch.randperm(len(fit), generator=gen)]
        for begin in range(0, len(fit), settings.batch_size):
            idx = shuffled[begin : begin + settings.batch_size]
            _step(model, opt, x, targets, idx, loss_fn, device)
            steps += 1
            examples += len(idx)
            if steps % settings.check_every == 0:
                value = held_loss()
                if value < best * (1 - settings.min_delta):
                    best, best_state, stale = value, copy.deepcopy(model.state_dict()), 0
                else:
                    stale += 1
                    converged = stale >= settings.patience
            if converged or steps >= settings.max_steps:
                break
    model.load_state_dict(best_state)
    return MatchingReport(start, best, steps, converged, examples)


def match_logits(
    model: nn.Module,
    x: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    seed: int,
    settings: MatchingConfig = DEFAULT_SETTINGS,
    device="cpu",
) -> MatchingReport:
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
    settings: MatchingConfig = DEFAULT_SETTINGS,
    device="cpu",
) -> MatchingReport:
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
    settings: MatchingConfig = DEFAULT_SETTINGS,
    device="cpu",
) -> MatchingReport:
    """Baseline: ascend the cross-entropy of the forget data (losses reported negated).

    Its loss has no floor, so "until converged" would mean until ``max_steps``: unless
    ``settings.epochs`` is given it runs the paper code's 5 epochs."""
    if settings.epochs is None:
        settings = dataclasses.replace(settings, epochs=GRADIENT_ASCENT_EPOCHS)
    return fine_tune(
        model,
        x,
        y.long(),
        lambda out, t: -F.cross_entropy(out, t),
        seed=seed,
        settings=settings,
        device=device,
    )
