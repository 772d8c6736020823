"""``edge-case-pgd``: the edge-case backdoor trained with projected gradient descent.

Wang et al. (2020)'s PGD attack: the data of ``edge-case`` (edge-case inputs relabelled
to the target plus clean examples of the attacker's partition), local SGD, and every
``project_every`` optimizer steps (default 10) and after the last one the WHOLE
parameter vector is projected onto the L2 ball of radius ``eps`` around the round's
global model (``eps * eps_decay ** (round - 1)``; ``eps_decay`` defaults to 1, a fixed
radius). The update is sent as it is: it stays within ``eps`` of the global model, so
norm-based defenses see nothing unusual. Paper radii: 1 for EMNIST, 2 for CIFAR-10.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.edge_case import EdgeCase
from attacks.procedures import ProjectedGradientMixin


@dataclass(kw_only=True, eq=False)
class EdgeCasePGD(ProjectedGradientMixin, EdgeCase):
    name = "edge-case-pgd"
