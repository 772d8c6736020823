"""``alie``: "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019).

Every attacker of the round sends ``mean - z_max * std`` of the benign updates it sees,
per coordinate, with ``z_max = Phi^-1((n - s) / n)`` and ``s = floor(n / 2 + 1) - m`` for
``n`` clients and ``m`` attackers in the round: the largest shift that still leaves
enough benign clients farther from the mean for the attackers to sway a majority-based
rule. A colluding attack (``attacks.collusion``): ``attack.knowledge`` sets its view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attacks.collusion import CollusionAttack
from attacks.crafted import alie


@dataclass(kw_only=True, eq=False)
class ALIE(CollusionAttack):
    name = "alie"
    min_view = 2

    def craft(self, benign, num_clients, num_attackers):
        return alie(benign, num_clients, num_attackers)

    def check_round(self, num_clients, num_attackers):
        if math.floor(num_clients / 2 + 1) - num_attackers <= 0:
            return (
                f"{num_attackers} attackers of {num_clients} clients are a majority already; "
                "ALIE's z_max is defined for s = floor(n / 2 + 1) - m > 0"
            )
        return ""
