"""``neurotoxin``: a backdoor hidden in the coordinates benign clients rarely change.

Zhang et al. (2022, ICML, "Neurotoxin: Durable Backdoors in Federated Learning"): the
attacker estimates the benign update direction, masks the coordinates that benign
clients change MOST (the top ``mask_fraction`` by magnitude; 0.05 is the authors'
``gradmask_ratio = 0.95``, keeping the bottom 95%), and writes its backdoor only into
the others, where later benign rounds overwrite it least, so it lasts longer.

As implemented here:

- Benign-update estimate: the gradient of the mean cross-entropy over the attacker's
  own CLEAN partition (before poisoning) at the round's global model, model in eval
  mode (no dropout: the estimate is deterministic). One local SGD step moves each
  coordinate by -lr * gradient, so the coordinates of largest |gradient| are the ones
  honest training changes most.
- Mask: the ``round(mask_fraction * d)`` coordinates of largest |gradient| over the
  whole flat parameter vector (all layers together).
- Training: plain local SGD on the poisoned set; after every optimizer step the masked
  coordinates are reset to their global values (so momentum and weight decay cannot
  move them either), hence the sent model equals the global model bit for bit there.
- Poison: the pattern trigger (:mod:`attacks.triggers`) on ``poison_fraction`` of the
  attacker's examples, relabelled to the target; BA on triggered non-target test
  images. The pattern works on every data set, unlike ARDIS / Southwest edge cases.
- No boosting and no projection: the update is sent as trained.
- The attacker's training uses the round's lr and epochs by default; the authors' code
  gives it its own (``poison_lr`` 0.05, ``retrain_poison`` 10 epochs, constant lr):
  ``attack.poison_lr``, ``attack.poison_local_epochs`` (:mod:`attacks.backdoor`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from attacks.triggers import PatternTriggerAttack
from fedsec_core.params import param
from fedsec_core.training import assign_flat_params, flatten_params, train


def mean_loss_gradient(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """Flat gradient of the mean cross-entropy over (x, y), model in eval mode."""
    model.to(device)
    model.eval()
    params = list(model.parameters())
    grad = torch.zeros(sum(p.numel() for p in params), device=device)
    n = y.shape[0]
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device, dtype=torch.long)
        loss = F.cross_entropy(model(xb), yb, reduction="sum") / n
        parts = torch.autograd.grad(loss, params, allow_unused=True)
        grad += torch.cat(
            [
                torch.zeros(p.numel(), device=device) if g is None else g.reshape(-1)
                for p, g in zip(params, parts, strict=True)
            ]
        )
    return grad


def top_fraction_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the ``round(fraction * len)`` entries of largest ``|scores|``."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    k = round(fraction * scores.numel())
    if k > 0:
        mask[torch.topk(scores.abs(), k, sorted=False).indices] = True
    return mask


@dataclass(kw_only=True, eq=False)
class Neurotoxin(PatternTriggerAttack):
    name = "neurotoxin"

    mask_fraction: float = param(0.05, lambda v: 0 <= v < 1, "in [0, 1)")
    #: the mask of the latest update (tests, logs)
    last_mask: torch.Tensor | None = field(default=None, init=False, repr=False)

    def train(self, model, x, y, global_flat, ctx, train_kwargs):
        device = ctx.device
        center = global_flat.to(device)
        clean_x, clean_y = ctx.examples
        mask = top_fraction_mask(
            mean_loss_gradient(model, clean_x, clean_y, device), self.mask_fraction
        )
        self.last_mask = mask

        def keep_masked_at_global(step: int) -> None:
            assign_flat_params(model, torch.where(mask, center, flatten_params(model)))

        kwargs = {**self.poison_train_kwargs(ctx, train_kwargs), "device": device}
        return train(model, x, y, **kwargs, after_step=keep_masked_at_global)
