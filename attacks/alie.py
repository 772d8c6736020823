"""``alie``: "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019).

Every attacker of the round sends ``mean - z_max * std`` of the benign updates it sees,
per coordinate, with ``z_max = Phi^-1((n - s) / n)`` and ``s = floor(n / 2 + 1) - m`` for
``n`` clients and ``m`` attackers in the round: the largest shift that still leaves
enough benign clients farther from the mean for the attackers to sway a majority-based
rule. A colluding attack (``attacks.collusion``): ``attack.knowledge`` sets its view.

``z_formula = "paper"`` (default) is the paper's formula (its Algorithm 1);
``"benign-share"`` is ``Phi^-1((n - m - s) / (n - m))``, the share of the ``n - m``
benign clients, which other public implementations use (Karimireddy et al.'s bucketing
code, Blades); since ``s / (n - m) > s / n`` it always gives a smaller ``z_max`` (n = 10,
m = 2: 0 against 0.253), and it is defined while ``n - m - s > 0``. ``"fixed"`` uses
``attack.z`` whatever n and m: the authors' code takes z as a parameter (``-z``, default
1.5, in ``moranant/attacking_distributed_learning``), and Shejwalkar & Houmansadr's code
looks it up in a table by the number of attackers (0.72575 at 10 of 50).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attacks.collusion import CollusionAttack
from attacks.crafted import Z_FORMULAS, alie
from fedsec_core.errors import ConfigError
from fedsec_core.params import one_of, param


@dataclass(kw_only=True, eq=False)
class ALIE(CollusionAttack):
    name = "alie"
    min_view = 2

    z_formula: str = param("paper", one_of(*Z_FORMULAS), "one of 'paper', 'benign-share', 'fixed'")
    #: The shift in standard deviations with ``z_formula = "fixed"`` (-1: unset).
    z: float = param(-1.0, lambda v: v == -1 or v > 0, "a number > 0 (or -1: unset)")

    def craft(self, benign, num_clients, num_attackers):
        return alie(benign, num_clients, num_attackers, self.z_formula, self.z)

    def check(self, config, dataset) -> None:
        if (self.z_formula == "fixed") != (self.z != -1):
            raise ConfigError(
                "attack.z goes with attack.z_formula = 'fixed' and only with it; got "
                f"z_formula {self.z_formula!r}, z {self.z}"
            )
        super().check(config, dataset)

    def check_round(self, num_clients, num_attackers):
        if self.z_formula == "fixed":
            return ""
        s = math.floor(num_clients / 2 + 1) - num_attackers
        if s <= 0:
            return (
                f"{num_attackers} attackers of {num_clients} clients are a majority already; "
                "ALIE's z_max is defined for s = floor(n / 2 + 1) - m > 0"
            )
        if self.z_formula == "benign-share" and num_clients - num_attackers - s <= 0:
            return (
                f"with {num_attackers} attackers of {num_clients} clients the benign-share "
                f"z_max needs n - m - s > 0 (s = {s}); use attack.z_formula = 'paper' or a "
                "larger round"
            )
        return ""
