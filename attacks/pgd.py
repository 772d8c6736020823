"""``pgd``: projected gradient descent on a pattern-trigger (non-tail) backdoor.

What it is exactly: the attacker's data are those of ``pixel-replacement`` (the pattern
trigger of :mod:`attacks.triggers` stamped on ``poison_fraction`` of its own examples,
relabelled to the target); its training is Wang et al. (2020)'s PGD: local SGD, with
the whole parameter vector projected onto the L2 ball of radius ``eps`` around the
round's global model every ``project_every`` optimizer steps and after the last one;
the update is sent as it is (no model replacement, no boosting). This is the "PGD"
column of Huang et al. (2023)'s table next to "EC-PGD" (``edge-case-pgd``), which
differs only in its data: the target inputs are ordinary images with a trigger instead
of tail inputs, so honest clients' data pull the other way and the backdoor fades.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.procedures import ProjectedGradientMixin
from attacks.triggers import PatternTriggerAttack


@dataclass(kw_only=True, eq=False)
class PatternPGD(ProjectedGradientMixin, PatternTriggerAttack):
    name = "pgd"
