"""``sign-flip``: the honest update, negated and scaled (untargeted).

The client trains honestly on its own data (plain local SGD), then sends
``w0 - scale (w - w0)``: its update turned against the direction that helps.
"""

from __future__ import annotations

from attacks.procedures import scale_update
from attacks.untargeted import UntargetedAttack
from fedsec.errors import ConfigError


class SignFlip(UntargetedAttack):
    name = "sign-flip"
    params = {"scale": 1.0}

    def check(self, config, dataset) -> None:
        super().check(config, dataset)
        if not self.scale > 0:
            raise ConfigError(f"attack.scale must be > 0, got {self.scale}")

    def transform_update(self, model, global_flat, ctx, stats) -> None:
        scale_update(model, global_flat, -self.scale)
