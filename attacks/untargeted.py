"""Base class of the untargeted attacks (``gaussian``, ``sign-flip``).

They aim at the main task's accuracy, not at a target class: no ``target_label``, no
backdoor test set (the server records no backdoor accuracy for them).
"""

from __future__ import annotations

from attacks.base import Attack
from fedsec_core.errors import ConfigError


class UntargetedAttack(Attack):
    default_target = None

    @property
    def target(self) -> None:
        return None

    def check(self, config, dataset) -> None:
        if self.target_label != -1:
            raise ConfigError(
                f"attack {self.name!r} is untargeted; remove attack.target_label "
                f"(got {self.target_label})"
            )
