"""``label-flip``: the attacker relabels its examples of ``source_label`` as the target.

Data poisoning only: plain local SGD on its own partition with every label
``source_label`` replaced by the target (default 7 -> 1); the update is sent as it is.
Backdoor accuracy: the share of the test examples of ``source_label`` that the global
model classifies as the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attacks.backdoor import BackdoorAttack
from attacks.base import num_classes
from fedsec_core.errors import ConfigError
from fedsec_core.params import at_least, param


@dataclass(kw_only=True, eq=False)
class LabelFlip(BackdoorAttack):
    name = "label-flip"
    backdoor_test_params = ("source_label",)
    default_target = 1

    source_label: int = param(7, at_least(0), "a class >= 0")
    _cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    def check(self, config, dataset) -> None:
        super().check(config, dataset)
        classes = num_classes(config, dataset)
        if not 0 <= self.source_label < classes:
            raise ConfigError(
                f"attack.source_label must be a class of {config.data.name} (0..{classes - 1}), "
                f"got {self.source_label}"
            )
        if self.source_label == self.target:
            raise ConfigError(
                f"attack.source_label and the target label are both {self.target}; they must differ"
            )

    def attacker_data(self, ctx):
        if ctx.partition_id not in self._cache:
            x, y = ctx.examples
            flipped = torch.where(y == self.source_label, torch.full_like(y, self.target), y)
            self._cache[ctx.partition_id] = (x, flipped)
        return self._cache[ctx.partition_id]

    def backdoor_test_set(self, dataset):
        d = dataset
        x = d.x_test[d.y_test == self.source_label]
        return torch.from_numpy(x.copy()), torch.full((len(x),), self.target, dtype=torch.int64)
