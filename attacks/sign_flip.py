"""``sign-flip``: the honest update, negated and scaled (untargeted).

The client trains honestly on its own data (plain local SGD), then sends
``w0 - scale (w - w0)``: its update turned against the direction that helps.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.procedures import scale_update
from attacks.untargeted import UntargetedAttack
from fedsec_core.params import param, positive


@dataclass(kw_only=True, eq=False)
class SignFlip(UntargetedAttack):
    name = "sign-flip"

    scale: float = param(1.0, positive, "> 0")

    def transform_update(self, model, global_flat, ctx, stats) -> None:
        scale_update(model, global_flat, -self.scale)
