"""``pixel-replacement``: the pixel-pattern backdoor with model replacement.

BadNets' trigger (Gu et al. 2017) in the federated form of Bagdasaryan et al. (2020,
"How to backdoor federated learning"): the attacker stamps the pattern trigger
(:mod:`attacks.triggers`) on ``poison_fraction`` of its own examples and relabels them
to the target, trains with plain local SGD, then boosts its update so that it replaces
the FedAvg average: ``w <- w0 + (N_round / N_attacker) (w - w0)``.
Backdoor accuracy: test images not of the target class, trigger stamped.
"""

from __future__ import annotations

from attacks.procedures import ModelReplacementMixin
from attacks.triggers import PatternTriggerAttack


class PixelReplacement(ModelReplacementMixin, PatternTriggerAttack):
    name = "pixel-replacement"
