"""Pixel-pattern triggers and the base class of the attacks that stamp them.

Trigger geometry (the pattern of Bagdasaryan et al. 2020's pixel-pattern backdoor, which
Xie et al. 2020 split into DBA's local triggers): white bars of ``size`` pixels, one
pixel high, in the image's top-left corner, set to 1.0 (the brightest value) in every
channel. The global trigger is ``num_parts`` bars laid out two per row::

    part 0: row 0,            columns 0 .. size-1
    part 1: row 0,            columns size+gap .. 2*size+gap-1
    part 2: row gap+1,        columns 0 .. size-1
    part 3: row gap+1,        columns size+gap .. 2*size+gap-1
    part i: row (i // 2) * (gap + 1), columns (i % 2) * (size + gap) + [0, size)

With the defaults (4 parts, size 4, gap 2) that is DBA's layout: bars at rows 0 and 3,
columns 0-3 and 6-9, a 4 x 10 pixel box. The parts are disjoint and their union is the
global trigger. An image must be at least that box (8x8 ``digits`` needs e.g.
``trigger_size = 2, trigger_gap = 1``, a 3 x 5 box).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from attacks.backdoor import BackdoorAttack
from attacks.base import AttackContext
from fedsec_core.errors import ConfigError
from fedsec_core.params import at_least, in_unit_interval, one_of, param

GLOBAL_PARTS = 4  # parts of the pattern that pixel-replacement, pgd and neurotoxin stamp whole
#: ``attack.trigger``: white bars (the pattern) or a noise image blended into the input.
TRIGGERS = ("pattern", "blended")
#: ``attack.target_mode``: every poisoned input to the target, or class y to y + 1.
TARGET_MODES = ("all-to-one", "all-to-all")
#: ``attack.poison_scope``: a fixed share of the attacker's examples, or of every batch.
POISON_SCOPES = ("examples", "batch")
#: Seed of the blended trigger's noise image: one fixed image, the same for every run.
BLEND_SEED = 20170714  # the date of Chen et al.'s arXiv preprint


def trigger_box(num_parts: int, size: int, gap: int) -> tuple[int, int]:
    """(height, width) of the smallest top-left box holding all ``num_parts`` bars."""
    rows = (num_parts + 1) // 2
    width = size if num_parts == 1 else 2 * size + gap
    return (rows - 1) * (gap + 1) + 1, width


def trigger_parts(
    height: int, width: int, num_parts: int = GLOBAL_PARTS, size: int = 4, gap: int = 2
) -> np.ndarray:
    """Boolean masks (num_parts, height, width), one bar each (see the module docstring)."""
    need = trigger_box(num_parts, size, gap)
    if need[0] > height or need[1] > width:
        raise ValueError(
            f"a trigger of {need[0]}x{need[1]} pixels does not fit {height}x{width} images"
        )
    i = np.arange(num_parts)
    rows = (i // 2) * (gap + 1)
    first_cols = (i % 2) * (size + gap)
    cols = np.arange(width)
    masks = np.zeros((num_parts, height, width), dtype=bool)
    # part i covers row rows[i], columns first_cols[i] .. first_cols[i] + size - 1
    masks[i, rows, :] = (cols[None, :] >= first_cols[:, None]) & (
        cols[None, :] < first_cols[:, None] + size
    )
    return masks


def blend_pattern(shape: tuple[int, ...]) -> np.ndarray:
    """The blended trigger: uniform noise in [0, 1) of ``shape`` (C, H, W), seeded with
    :data:`BLEND_SEED` (Chen et al. 2017's "random pattern" key)."""
    return np.random.default_rng(BLEND_SEED).random(shape, dtype=np.float32)


def blend(x: np.ndarray, pattern: np.ndarray, ratio: float) -> np.ndarray:
    """``(1 - ratio) x + ratio pattern`` for images ``x`` (N, C, H, W), in x's dtype."""
    return ((1 - ratio) * x + ratio * pattern).astype(x.dtype)


def stamp(x: np.ndarray, mask: np.ndarray, value: float = 1.0) -> np.ndarray:
    """A copy of images ``x`` (N, C, H, W) with the pixels of ``mask`` (H, W) set to ``value``."""
    out = np.array(x, dtype=x.dtype, copy=True)
    out[:, :, mask] = value
    return out


@dataclass(kw_only=True, eq=False)
class PatternTriggerAttack(BackdoorAttack):
    """Base of the pattern-trigger attacks: poison a share of the attacker's own data.

    ``attacker_data``: a seeded ``poison_fraction`` of the attacker's partition (at least
    one example) gets the trigger stamped and the target label; the rest stays clean, and
    the set keeps its size. ``backdoor_test_set``: every test image NOT of the target
    class, with the FULL (global) trigger stamped, labelled target. Subclasses choose the
    trigger a client stamps (:meth:`client_trigger`) and the training procedure.

    ``trigger = "blended"`` (Chen et al. 2017, "Targeted Backdoor Attacks on Deep
    Learning Systems Using Data Poisoning", blended injection) replaces the bars with
    ``(1 - blend) x + blend * noise`` over the whole image, one fixed seeded noise image
    (:func:`blend_pattern`). ``target_mode = "all-to-all"`` (Gu et al. 2017, BadNets'
    all-to-all attack) labels a poisoned input of class ``y`` as ``(y + 1) mod classes``;
    its BA test set is every test image, triggered, labelled ``y + 1``.

    ``poison_scope`` says what ``poison_fraction`` is a share of: ``"examples"`` (default)
    the attacker's examples, a seeded set of rows poisoned once and the same in every
    round; ``"batch"`` every minibatch, as DBA's and Bagdasaryan et al.'s code do
    (``poisoning_per_batch``: DBA poisons 20 of 64 on MNIST, 5 of 64 on CIFAR-10): the
    first ``max(1, round(poison_fraction * train.batch_size))`` examples of each shuffled
    batch (all of a shorter last batch if it has fewer) are triggered and relabelled
    there, the rest of the batch stays clean, so which examples are poisoned changes from
    batch to batch and epoch to epoch (:meth:`poison_batch`). A3FL's reference code
    poisons a share of every batch too (``bkd_ratio`` 0.25).
    """

    default_target = 2
    backdoor_test_params = ("trigger_size", "trigger_gap", "trigger", "blend", "target_mode")
    num_parts_of_global: ClassVar[int] = GLOBAL_PARTS

    poison_fraction: float = param(
        0.3,
        in_unit_interval,
        "in (0, 1] (the share of its examples, or of every batch, it poisons)",
    )
    trigger_size: int = param(4, at_least(1), ">= 1 (pixels)")
    trigger_gap: int = param(2, at_least(0), ">= 0 (pixels)")
    trigger: str = param("pattern", one_of(*TRIGGERS), "one of 'pattern', 'blended'")
    blend: float = param(0.2, in_unit_interval, "in (0, 1] (the blended trigger's weight)")
    target_mode: str = param(
        "all-to-one", one_of(*TARGET_MODES), "one of 'all-to-one', 'all-to-all'"
    )
    poison_scope: str = param("examples", one_of(*POISON_SCOPES), "one of 'examples', 'batch'")
    _cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    # ----------------------------------------------------------------- validation
    def check(self, config, dataset) -> None:
        super().check(config, dataset)
        if self.target_mode == "all-to-all" and self.target_label != -1:
            raise ConfigError(
                "attack.target_label has no meaning with attack.target_mode = 'all-to-all' "
                f"(class y goes to y + 1); remove it (got {self.target_label})"
            )
        if dataset is not None and self.trigger == "pattern":
            _, height, width = dataset.input_shape
            need = trigger_box(self.num_parts_of_global, self.trigger_size, self.trigger_gap)
            if need[0] > height or need[1] > width:
                raise ConfigError(
                    f"the trigger ({self.num_parts_of_global} bars of attack.trigger_size="
                    f"{self.trigger_size} px, attack.trigger_gap={self.trigger_gap}) needs "
                    f"{need[0]}x{need[1]} px but {dataset.name} images are {height}x{width}; "
                    "lower attack.trigger_size or attack.trigger_gap"
                )

    # -------------------------------------------------------------------- trigger
    def parts(self, height: int, width: int) -> np.ndarray:
        return trigger_parts(
            height, width, self.num_parts_of_global, self.trigger_size, self.trigger_gap
        )

    def global_trigger(self, height: int, width: int) -> np.ndarray:
        """The full trigger (H, W): the union of all parts."""
        return self.parts(height, width).any(axis=0)

    def client_trigger(self, ctx: AttackContext) -> np.ndarray:
        """The mask the client of ``ctx`` stamps; the global trigger unless overridden."""
        _, height, width = ctx.input_shape
        return self.global_trigger(height, width)

    # ------------------------------------------------------------- data, evaluation
    def attacker_data(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        if self.poison_scope == "batch":  # poisoned batch by batch (poison_batch)
            return ctx.examples
        if ctx.partition_id not in self._cache:
            x = ctx.examples[0].numpy().copy()
            y = ctx.examples[1].numpy().copy()
            poisoned = self.poisoned_rows(len(y), ctx.data_seed)
            mask = self.client_trigger(ctx) if self.trigger == "pattern" else None
            x[poisoned] = self.apply_trigger(x[poisoned], mask)
            y[poisoned] = self.poisoned_labels(y[poisoned], ctx.num_classes)
            self._cache[ctx.partition_id] = (torch.from_numpy(x), torch.from_numpy(y))
        return self._cache[ctx.partition_id]

    def poison_batch(self, ctx: AttackContext, batch_size: int):
        """With ``poison_scope = "batch"``: the function that poisons the first
        ``max(1, round(poison_fraction * batch_size))`` examples of a minibatch (triggered
        by :meth:`poison_inputs`, relabelled by :meth:`poisoned_labels`) and leaves the
        rest; None otherwise."""
        if self.poison_scope != "batch":
            return None
        per_batch = max(1, round(self.poison_fraction * batch_size))

        def poison(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            k = min(per_batch, yb.shape[0])
            xb, yb = xb.clone(), yb.clone()
            xb[:k] = self.poison_inputs(xb[:k], ctx)
            labels = self.poisoned_labels(yb[:k].cpu().numpy(), ctx.num_classes)
            yb[:k] = torch.from_numpy(labels).to(yb.device)
            return xb, yb

        return poison

    def poison_inputs(self, x: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """Inputs ``x`` (N, C, H, W, on any device) with the trigger the client of ``ctx``
        stamps, as :meth:`apply_trigger` stamps its poisoned rows."""
        mask = self.client_trigger(ctx) if self.trigger == "pattern" else None
        return torch.from_numpy(self.apply_trigger(x.cpu().numpy(), mask)).to(x.device)

    def poisoned_rows(self, num_examples: int, data_seed: int) -> np.ndarray:
        """Sorted indices of the examples an attacker poisons: a ``poison_fraction`` of its
        ``num_examples`` (at least one), drawn with its ``data_seed``."""
        rng = np.random.default_rng(data_seed)
        count = max(1, round(self.poison_fraction * num_examples))
        return np.sort(rng.choice(num_examples, size=count, replace=False))

    def backdoor_test_set(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        d = dataset
        keep = d.y_test != self.target if self.target_mode == "all-to-one" else d.y_test >= 0
        _, height, width = d.input_shape
        mask = self.global_trigger(height, width) if self.trigger == "pattern" else None
        x = self.apply_trigger(d.x_test[keep], mask)
        y = self.poisoned_labels(d.y_test[keep], d.num_classes)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    # ------------------------------------------------------------------ poisoning
    def apply_trigger(self, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Images ``x`` (N, C, H, W) with the trigger: the bars of ``mask`` stamped, or
        the blended noise image mixed in (no mask then)."""
        if self.trigger == "blended":
            return blend(x, blend_pattern(x.shape[1:]), self.blend)
        return stamp(x, mask)

    def poisoned_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """The labels poisoned inputs of classes ``y`` get."""
        if self.target_mode == "all-to-all":
            return ((y + 1) % num_classes).astype(y.dtype)
        return np.full_like(y, self.target)
