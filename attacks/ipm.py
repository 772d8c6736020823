"""``ipm``: inner-product manipulation (Xie, Koyejo & Gupta, UAI 2020).

Every attacker of the round sends ``-eps * mean`` of the benign updates it sees: with a
small ``eps`` (the paper's 0.1, against Krum) the update sits near the honest ones yet
pulls the aggregate's inner product with the true gradient down; with ``eps > n / m - 1``
it turns a mean negative (the paper's 100, against coordinate-wise rules). A colluding
attack (``attacks.collusion``): ``attack.knowledge`` sets its view.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.collusion import CollusionAttack
from attacks.crafted import ipm
from fedsec_core.params import param, positive


@dataclass(kw_only=True, eq=False)
class IPM(CollusionAttack):
    name = "ipm"

    eps: float = param(0.5, positive, "> 0 (the multiple of the benign mean, negated)")

    def craft(self, benign, num_clients, num_attackers):
        return ipm(benign, self.eps)
