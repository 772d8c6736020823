"""``min-sum``: the aggregation-agnostic Min-Sum attack (Shejwalkar & Houmansadr, NDSS 2021).

As ``min-max`` (same ``attack.direction`` and ``attack.gamma``), but ``gamma`` is the
largest value whose sum of squared distances to the benign updates is at most the
largest such sum of a benign update: stealthier against rules that score by summed
distances (Krum, Multi-Krum). A colluding attack (``attacks.collusion``):
``attack.knowledge`` sets its view.

``bound = "max"`` (default) is the paper's text (the maximum over the benign updates of
their sum of squared distances to the others); the authors' code
(``our_attack_dist``, NDSS'21 release) bounds by the MINIMUM of those sums,
``bound = "min"``, which gives a smaller gamma.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.crafted import SUM_BOUNDS, min_sum
from attacks.min_max import MinMax
from fedsec_core.params import one_of, param


@dataclass(kw_only=True, eq=False)
class MinSum(MinMax):
    name = "min-sum"

    bound: str = param("max", one_of(*SUM_BOUNDS), "one of 'max', 'min' (the benign sums' bound)")

    def craft(self, benign, num_clients, num_attackers):
        return min_sum(benign, self.direction, self.gamma, bound=self.bound)
