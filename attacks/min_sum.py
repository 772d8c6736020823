"""``min-sum``: the aggregation-agnostic Min-Sum attack (Shejwalkar & Houmansadr, NDSS 2021).

As ``min-max`` (same ``attack.direction`` and ``attack.gamma``), but ``gamma`` is the
largest value whose sum of squared distances to the benign updates is at most the
largest such sum of a benign update: stealthier against rules that score by summed
distances (Krum, Multi-Krum). A colluding attack (``attacks.collusion``):
``attack.knowledge`` sets its view.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.collusion import CollusionAttack
from attacks.crafted import DIRECTIONS, min_sum
from fedsec.params import one_of, param, positive


@dataclass(kw_only=True, eq=False)
class MinSum(CollusionAttack):
    name = "min-sum"
    min_view = 2

    direction: str = param("std", one_of(*DIRECTIONS), "one of 'unit', 'std', 'sign'")
    gamma: float = param(10.0, positive, "> 0 (the halving search's first gamma)")

    def craft(self, benign, num_clients, num_attackers):
        return min_sum(benign, self.direction, self.gamma)
