"""The math of each defense, free of Flower: torch (plus numpy/scipy/sklearn) only.

Every rule maps the sampled clients' flattened models ``(n, d)``, their example
counts ``(n,)`` and the global model ``(d,)`` to an :class:`AggregationResult`.
"""

from fedsec_core.registry import Registry

from .base import AggregationResult, AggregationRule, ClientBatch, SeededRule
from .bulyan import BulyanRule
from .centered_clipping import CenteredClippingRule
from .crfl import CRFLRule
from .deepsight import DeepSightRule, ModelProbe
from .dnc import DnCRule
from .fedavg import FedAvgRule
from .flame import FLAMERule
from .fldetector import FLDetectorRule
from .fltrust import FLTrustRule
from .foolsgold import FoolsGoldRule
from .krum import KrumRule
from .median import MedianRule
from .multi_krum import MultiKrumRule
from .multi_metrics import MultiMetricsRule
from .norm_clipping import NormClippingRule
from .rfa import RFARule
from .rlr import RLRRule
from .signguard import SignGuardRule
from .trimmed_mean import TrimmedMeanRule
from .weak_dp import WeakDPRule

#: ``defense.name`` -> rule class: the defenses' math, without the Flower strategies
#: (``defenses.DEFENSES`` holds those, and each strategy's ``rule_class`` is one of these).
RULES: Registry[type[AggregationRule]] = Registry(
    "defense.name",
    {
        cls.name: cls
        for cls in (
            BulyanRule,
            CenteredClippingRule,
            CRFLRule,
            DeepSightRule,
            DnCRule,
            FedAvgRule,
            FLAMERule,
            FLDetectorRule,
            FLTrustRule,
            FoolsGoldRule,
            KrumRule,
            MedianRule,
            MultiKrumRule,
            MultiMetricsRule,
            NormClippingRule,
            RFARule,
            RLRRule,
            SignGuardRule,
            TrimmedMeanRule,
            WeakDPRule,
        )
    },
)


def rule_class(name: str) -> type[AggregationRule] | None:
    """The rule class whose ``name`` is ``name`` (None if there is none)."""
    return RULES.get(name)


__all__ = [
    "AggregationResult",
    "AggregationRule",
    "BulyanRule",
    "CenteredClippingRule",
    "CRFLRule",
    "DeepSightRule",
    "DnCRule",
    "ClientBatch",
    "FLAMERule",
    "FLDetectorRule",
    "FLTrustRule",
    "FedAvgRule",
    "ModelProbe",
    "FoolsGoldRule",
    "KrumRule",
    "MedianRule",
    "MultiKrumRule",
    "MultiMetricsRule",
    "NormClippingRule",
    "RFARule",
    "RLRRule",
    "SignGuardRule",
    "SeededRule",
    "TrimmedMeanRule",
    "WeakDPRule",
]
