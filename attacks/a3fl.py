"""``a3fl``: a trigger optimised against an adversarially unlearned copy of the global model.

Zhang, Jia, Chen, Lin and Wu (NeurIPS 2023, "A3FL: Adversarially Adaptive Backdoor
Attacks to Federated Learning"; reference code github.com/hfzhang31/A3FL,
``fl_utils/attacker.py`` and ``fl_utils/fler.py``, defaults in ``main/configs/config.yaml``).
A fixed trigger is learnt by the global model and then washed out by the benign rounds
that follow; A3FL instead adapts the trigger, every round it attacks, to the current
global model AND to a copy of it trained to forget the backdoor, so that the trigger
keeps working after the federation (or a defense) has partly unlearned it.

What the attacker does in a round (:meth:`A3FL.update`), as implemented here:

1. **Start** from the attackers' current trigger, which the attack's stage in the
   server loop (:meth:`A3FL.server_stage`, ``attacks.stages.TriggerStage``) holds
   between rounds and sends in the train message (``ctx.trigger``); before the first
   attack round it is the pixel pattern (:meth:`A3FL.initial_trigger`).
2. **Optimise the trigger** (:func:`optimise_trigger`) on the attacker's own clean
   examples, all of them and of every class, each stamped with the trigger and
   labelled as the target: ``trigger_epochs`` passes, one signed-gradient step per
   minibatch, ``t <- clip(t - trigger_lr * sign(grad_t L), 0, 1)`` on the mask, with
   ``L = CE(global(x_t), target) + adv_weight * CE(unlearned(x_t), target)``.
3. **The unlearned copy** (:func:`unlearned_copy`): the global model fine-tuned for
   ``adv_epochs`` passes (SGD, lr ``adv_lr``, momentum 0.9, weight decay 5e-4) on the
   attacker's examples, every one stamped with the current trigger and labelled with
   its TRUE class: the model as a federation that removes the backdoor would make it.
   It is made afresh from the global model with the current trigger before every
   ``adv_every``-th trigger pass except the first (the reference's
   ``iter % dm_adv_K == 0 and iter != 0``).
4. **Poison and train**: a seeded ``poison_fraction`` of its examples (the same rows in
   every round, as for every pattern-trigger attack) get the optimised trigger and the
   target label; plain local SGD with the round's settings, no boosting. The reply
   carries the optimised trigger (``AttackReply.trigger``), which the server's adversary
   stage takes out before the defense sees the round.

The server keeps the trigger of the round's attacker with the lowest partition id (the
replies come in partition order, so every engine keeps the same one), sends it to the
next round's attackers, measures backdoor accuracy with it (test images not of the
target class, that trigger stamped; :meth:`A3FL.backdoor_test_set` with the trigger) and
saves it in the checkpoint.

Choices taken from the reference code: the trigger as the values of a masked region,
applied as ``t * m + (1 - m) * x``; signed-gradient steps with ``trigger_lr = 0.01``
(``trigger_lr``), clamped to the valid input range; one step per minibatch of the
attacker's whole data set, labelled target; the adversarial copy fine-tuned on
triggered inputs with their true labels with SGD lr 0.01, momentum 0.9, weight decay
5e-4 for 5 epochs (``dm_adv_epochs``), re-made every pass but the first
(``dm_adv_K = 1``), one copy (``dm_adv_model_count = 1``), its loss weighted by 0.01
(``noise_loss_lambda``); the global model in eval mode during the search; the
malicious update sent as trained (``malicious_update_method = 'label'``, no scaling).

Where this differs from the reference code:

- **Trigger region and start.** The reference stamps a 5x5 square at pixel (2, 2) of
  32x32 CIFAR-10 images, starting from 0.5 (in normalised units) in every channel. Here
  the mask is the pattern trigger's bars (``trigger_size`` / ``trigger_gap``, the
  pixels ``pixel-replacement`` stamps; :mod:`attacks.triggers`) and the start is that
  pattern (1.0 on the bars): A3FL changes only the values of the pixel trigger's pixels,
  so it is compared with the pixel trigger on the same footprint, and
  ``trigger_epochs = 0`` is the plain pixel trigger trained the same way (the ablation).
- **Units and range.** The reference works on normalised CIFAR-10 inputs (std about
  0.2): its step 0.01 is about 0.002 in pixel units, its clamp [-2, 2] about the pixel
  range. fedsec's inputs are pixels in [0, 1]: ``trigger_lr`` is in pixel units and the
  trigger is clipped to [0, 1].
- **Fewer passes (CPU scale).** ``trigger_epochs = 10`` instead of 200
  (``trigger_outter_epochs``); with ``trigger_lr = 0.01`` a round can still move a pixel
  by up to 0.8 (per channel) over a client of 250 examples in batches of 32, and the
  trigger keeps moving across rounds since each round starts from the last one.
- **The copy's weight.** The reference multiplies ``noise_loss_lambda`` by the mean
  cosine similarity of the copy's and the global model's gradients over layers whose
  name holds ``conv`` (undefined for a model without conv layers, e.g. the MLP, where
  the reference divides 0 by 0; and computed there from gradients the trigger loss left
  on the global model). Here that factor is 1: ``adv_weight`` is the whole weight.
- **The copy's mode.** The reference computes the copy's loss in train mode (dropout and
  BatchNorm batch statistics active); here both models are in eval mode, so the search
  is deterministic.
- **Minibatches.** ``train.batch_size`` and a permutation seeded from the round's
  attack seed, for the search and the copy (the reference: batches of 64 from its
  shuffled loader).
- **Who optimises.** In the reference one trigger object is searched once per round by
  the round's first adversary and every adversary of the round poisons with it. Here
  every attacker of the round starts from the server's trigger and optimises on its own
  data (a client cannot see another's result within the round); the server keeps the
  lowest partition id's. With one attacker a round (the reference's
  ``num_adversaries = 1``) the two are the same.
- **Poisoned share.** The reference poisons the first 25% of every shuffled minibatch
  (``bkd_ratio``); here by default a fixed seeded ``poison_fraction`` (default 0.3) of
  the attacker's examples, as every pattern-trigger attack of fedsec;
  ``poison_scope = "batch"`` with ``poison_fraction = 0.25`` is the reference's. It
  trains ``train.local_epochs`` (the reference's attacker trains as many epochs as a
  benign client, too).
- **Backdoor accuracy** is measured on test images not of the target class (fedsec's
  convention for every attack), the reference's on every test image.

``trigger = 'blended'`` is a config error (A3FL optimises the pixels of a mask).
``target_mode = 'all-to-all'`` works: the search and the poison label class y as
``y + 1``; the copy unlearns towards the true class.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.nn import functional as F

from attacks.base import AttackContext, AttackReply
from attacks.triggers import PatternTriggerAttack
from fedsec_core.errors import ConfigError
from fedsec_core.params import at_least, non_negative, param, positive
from fedsec_core.seeding import derive_seed
from fedsec_core.training import train

#: The unlearned copy's SGD momentum and weight decay (the reference's ``get_adv_model``).
UNLEARN_MOMENTUM = 0.9
UNLEARN_WEIGHT_DECAY = 5e-4
#: Valid pixel values (every fedsec data set is scaled to [0, 1]).
PIXEL_RANGE = (0.0, 1.0)


def apply_trigger_values(
    x: torch.Tensor, trigger: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Images ``x`` (N, C, H, W) with the pixels of ``mask`` (H, W, bool) replaced by the
    trigger's values (``trigger``: (C, H, W)), i.e. ``t * m + (1 - m) * x``; the gradient
    flows to ``trigger``."""
    return torch.where(mask, trigger, x)


def unlearned_copy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    trigger: torch.Tensor,
    mask: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.nn.Module:
    """A3FL's adversarial model: a copy of ``model`` fine-tuned to classify the inputs
    ``x``, every one stamped with ``trigger``, as their true labels ``y`` (SGD, momentum
    0.9, weight decay 5e-4), returned in eval mode; ``model`` is left as it was."""
    clone = copy.deepcopy(model)
    stamped = apply_trigger_values(x.to(device), trigger.to(device), mask.to(device))
    train(
        clone,
        stamped,
        y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=UNLEARN_MOMENTUM,
        weight_decay=UNLEARN_WEIGHT_DECAY,
        seed=seed,
        device=device,
    )
    clone.eval()
    return clone


def optimise_trigger(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    trigger: torch.Tensor,
    mask: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    adv_epochs: int,
    adv_every: int,
    adv_lr: float,
    adv_weight: float,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A3FL's trigger search: ``epochs`` passes over ``x`` (true labels ``y``, poisoned
    labels ``target``), one signed-gradient step on ``trigger`` per minibatch.

    Each step lowers ``CE(model(x_t), target) + adv_weight * CE(copy(x_t), target)``,
    ``x_t`` the batch with the trigger stamped on ``mask``; ``copy`` is
    :func:`unlearned_copy` of ``model`` with the current trigger, re-made before every
    pass ``e`` with ``e % adv_every == 0`` and ``e > 0`` (none before that, and none at
    all when ``adv_weight`` is 0). The trigger stays in [0, 1] and 0 outside the mask.
    Returns the new trigger (C, H, W) on the CPU; ``model``'s weights are not changed
    (it is left in eval mode on ``device``).
    """
    device = torch.device(device)
    model.to(device)
    model.eval()
    mask = mask.to(device)
    low, high = PIXEL_RANGE
    t = torch.where(mask, trigger.to(device, torch.float32), 0.0)
    x, target = x.to(device), target.to(device, torch.long)
    order_rng = torch.Generator().manual_seed(derive_seed(seed, "a3fl-trigger-order"))
    adversarial = None
    n = target.shape[0]
    for epoch in range(epochs):
        if adv_weight > 0 and epoch > 0 and epoch % adv_every == 0:
            adversarial = unlearned_copy(
                model,
                x,
                y,
                t,
                mask,
                epochs=adv_epochs,
                lr=adv_lr,
                batch_size=batch_size,
                seed=derive_seed(seed, "a3fl-unlearn", epoch),
                device=device,
            )
        order = torch.randperm(n, generator=order_rng).to(device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            t.requires_grad_(True)
            stamped = apply_trigger_values(x[index], t, mask)
            loss = F.cross_entropy(model(stamped), target[index])
            if adversarial is not None:
                loss = loss + adv_weight * F.cross_entropy(adversarial(stamped), target[index])
            (grad,) = torch.autograd.grad(loss, t)
            with torch.no_grad():
                t = torch.where(mask, (t - lr * grad.sign()).clamp(low, high), 0.0)
    return t.detach().cpu()


@dataclass(kw_only=True, eq=False)
class A3FL(PatternTriggerAttack):
    """A3FL (Zhang et al., NeurIPS 2023): the pattern trigger's pixel values, optimised
    every attack round against the global model and an unlearned copy of it (see the
    module docstring for the algorithm, its defaults and the differences from the
    reference code)."""

    name = "a3fl"

    trigger_epochs: int = param(
        10, at_least(0), ">= 0 (passes of the trigger search per attack round; 0: none)"
    )
    trigger_lr: float = param(0.01, positive, "> 0 (the trigger's signed step, in pixel units)")
    adv_epochs: int = param(5, at_least(1), ">= 1 (epochs that make the unlearned copy)")
    adv_every: int = param(1, at_least(1), ">= 1 (trigger passes between unlearned copies)")
    adv_lr: float = param(0.01, positive, "> 0 (the unlearned copy's SGD learning rate)")
    adv_weight: float = param(
        0.01, non_negative, ">= 0 (the unlearned copy's loss weight; 0: no copy)"
    )
    _rows: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def check(self, config, dataset) -> None:
        super().check(config, dataset)
        if self.trigger != "pattern":
            raise ConfigError(
                "a3fl optimises the pixels of the pattern trigger's bars; attack.trigger = "
                "'blended' is for pixel-replacement, pgd and neurotoxin"
            )

    def server_stage(self, resources):
        """The trigger stage (``attacks.stages.TriggerStage``): the attackers' trigger,
        held by the server loop between rounds, around the stage of the backdoor it is
        (the scaling stage with ``evasion = "scaling"`` and full knowledge)."""
        from attacks.stages import TriggerStage

        inner = super().server_stage(resources)
        return TriggerStage(self, resources.dataset, inner=inner)

    # -------------------------------------------------------------------- trigger
    def trigger_mask(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        """The pixels (H, W) the trigger sets: the pattern trigger's bars."""
        _, height, width = input_shape
        return torch.from_numpy(self.global_trigger(height, width))

    def initial_trigger(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        """The trigger (C, H, W) before the first attack round: the pixel pattern, 1.0 on
        the bars in every channel, 0 elsewhere (outside the mask it is never used)."""
        mask = self.trigger_mask(input_shape)
        return torch.zeros(input_shape, dtype=torch.float32).masked_fill(mask, 1.0)

    def valid_trigger(self, trigger: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
        """``trigger`` as a float32 (C, H, W) tensor in [0, 1], 0 outside the mask;
        ValueError if it has another shape or non-finite values."""
        if tuple(trigger.shape) != tuple(input_shape):
            raise ValueError(f"a trigger of shape {tuple(trigger.shape)}, not {input_shape}")
        if not torch.isfinite(trigger).all():
            raise ValueError("a trigger with NaN or Inf values")
        low, high = PIXEL_RANGE
        mask = self.trigger_mask(input_shape)
        return torch.where(mask, trigger.to(torch.float32).clamp(low, high), 0.0)

    def stamp_trigger(self, x: torch.Tensor, trigger: torch.Tensor) -> torch.Tensor:
        """Images ``x`` (N, C, H, W) with ``trigger``'s values on the mask."""
        return apply_trigger_values(x, trigger, self.trigger_mask(tuple(x.shape[1:])))

    def _trigger_of(self, ctx: AttackContext) -> torch.Tensor:
        return ctx.trigger if ctx.trigger is not None else self.initial_trigger(ctx.input_shape)

    # ------------------------------------------------------------- data, evaluation
    @classmethod
    def backdoor_key(cls, target_label: int, params) -> tuple | None:
        """The pattern trigger's key: a no-attack run (``none-trigger``) measures BA on the
        pixel pattern, A3FL's starting trigger, so it is A3FL's baseline too. The trigger
        A3FL ends with differs on the bars only; on an honest model it is as harmless as
        the pattern (0.6% against 0.3% on the pre-trained mnist5k cnn)."""
        return PatternTriggerAttack.backdoor_key(target_label, params)

    def attacker_data(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Its own examples with the round's trigger (``ctx.trigger``) stamped on the
        seeded ``poison_fraction`` of them (the same rows every round), relabelled; with
        ``poison_scope = "batch"`` its clean examples (:meth:`poison_inputs` stamps the
        round's trigger batch by batch)."""
        x, y = ctx.examples
        if self.poison_scope == "batch":
            return x, y
        if ctx.partition_id not in self._rows:
            self._rows[ctx.partition_id] = self.poisoned_rows(len(y), ctx.data_seed)
        rows = torch.from_numpy(self._rows[ctx.partition_id])
        x, y = x.clone(), y.clone()
        x[rows] = self.stamp_trigger(x[rows], self._trigger_of(ctx))
        y[rows] = torch.from_numpy(self.poisoned_labels(y[rows].numpy(), ctx.num_classes))
        return x, y

    def poison_inputs(self, x: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """Inputs ``x`` with the round's trigger (``ctx.trigger``) on the mask."""
        mask = self.trigger_mask(tuple(x.shape[1:])).to(x.device)
        return apply_trigger_values(x, self._trigger_of(ctx).to(x.device), mask)

    def backdoor_test_set(
        self, dataset, trigger: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Test images not of the target class (every test image with all-to-all) with
        ``trigger`` stamped (default: :meth:`initial_trigger`), labelled as poisoned. The
        server measures BA with the attackers' current trigger (its adversary stage)."""
        d = dataset
        keep = d.y_test != self.target if self.target_mode == "all-to-one" else d.y_test >= 0
        if trigger is None:
            trigger = self.initial_trigger(tuple(d.input_shape))
        x = self.stamp_trigger(torch.from_numpy(d.x_test[keep]), trigger)
        y = self.poisoned_labels(d.y_test[keep], d.num_classes)
        return x, torch.from_numpy(y.astype(np.int64))

    # ------------------------------------------------------------------- training
    def search_trigger(
        self, model: torch.nn.Module, ctx: AttackContext, train_kwargs
    ) -> torch.Tensor:
        """The round's trigger: :func:`optimise_trigger` from ``ctx``'s trigger on the
        attacker's clean examples, against ``model`` (the global model, left unchanged)."""
        start = self._trigger_of(ctx)
        if self.trigger_epochs == 0:
            return start.clone()
        x, y = ctx.examples
        target = torch.from_numpy(self.poisoned_labels(y.numpy(), ctx.num_classes))
        return optimise_trigger(
            model,
            x,
            y,
            target,
            start,
            self.trigger_mask(ctx.input_shape),
            epochs=self.trigger_epochs,
            lr=self.trigger_lr,
            adv_epochs=self.adv_epochs,
            adv_every=self.adv_every,
            adv_lr=self.adv_lr,
            adv_weight=self.adv_weight,
            batch_size=train_kwargs["batch_size"],
            seed=derive_seed(ctx.seed, "a3fl"),
            device=ctx.device,
        )

    def update(self, model, ctx, train_kwargs) -> AttackReply:
        """Search the round's trigger on the global model, then train on data poisoned
        with it (evasion, if any, wraps that training as for every backdoor); the reply
        carries the trigger for the server."""
        trigger = self.search_trigger(model, ctx, train_kwargs)
        reply = super().update(model, replace(ctx, trigger=trigger), train_kwargs)
        reply.trigger = trigger
        return reply
