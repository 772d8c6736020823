"""``edge-case-pgd-replacement``: edge-case PGD followed by model replacement.

Wang et al. (2020)'s strongest white-box variant: train as ``edge-case-pgd`` (the
edge-case data, PGD onto the L2 ball of radius ``eps`` around the global model), then
boost the update so that it replaces the FedAvg average,
``w <- w0 + (N_round / N_attacker) (w - w0)``, with N_round the examples of every client
sampled this round (``ctx.round_examples``, the attacker's set included) and N_attacker
the size of the attacker's set. The boosted update's norm is up to
``eps * N_round / N_attacker``.
"""

from __future__ import annotations

from attacks.edge_case_pgd import EdgeCasePGD
from attacks.procedures import ModelReplacementMixin


class EdgeCasePGDReplacement(ModelReplacementMixin, EdgeCasePGD):
    name = "edge-case-pgd-replacement"
