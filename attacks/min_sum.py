"""``min-sum``: the aggregation-agnostic Min-Sum attack (Shejwalkar & Houmansadr, NDSS 2021).

As ``min-max`` (same ``attack.direction`` and ``attack.gamma``), but ``gamma`` is the
largest value whose sum of squared distances to the benign updates is at most the
largest such sum of a benign update: stealthier against rules that score by summed
distances (Krum, Multi-Krum). A colluding attack (``attacks.collusion``):
``attack.knowledge`` sets its view.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.crafted import min_sum
from attacks.min_max import MinMax


@dataclass(kw_only=True, eq=False)
class MinSum(MinMax):
    name = "min-sum"

    def craft(self, benign, num_clients, num_attackers):
        return min_sum(benign, self.direction, self.gamma)
