"""``min-max``: the aggregation-agnostic Min-Max attack (Shejwalkar & Houmansadr, NDSS 2021).

Every attacker of the round sends ``mean + gamma * p`` of the benign updates it sees,
``p`` the perturbation direction (``attack.direction``: ``unit`` = -mean / ||mean||,
``std`` = -std per coordinate, ``sign`` = -sign(mean)) and ``gamma`` the largest value,
by the paper's halving search from ``attack.gamma``, whose largest distance to a benign
update is at most the largest distance between two benign updates. A colluding attack
(``attacks.collusion``): ``attack.knowledge`` sets its view.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.collusion import CollusionAttack
from attacks.crafted import DIRECTIONS, min_max
from fedsec_core.params import one_of, param, positive


@dataclass(kw_only=True, eq=False)
class MinMax(CollusionAttack):
    name = "min-max"
    min_view = 2

    direction: str = param("std", one_of(*DIRECTIONS), "one of 'unit', 'std', 'sign'")
    gamma: float = param(10.0, positive, "> 0 (the halving search's first gamma)")

    def craft(self, benign, num_clients, num_attackers):
        return min_max(benign, self.direction, self.gamma)
