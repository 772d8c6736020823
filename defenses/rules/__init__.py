"""The math of each defense, free of Flower: torch (plus numpy/scipy/sklearn) only.

Every rule maps the sampled clients' flattened models ``(n, d)``, their example
counts ``(n,)`` and the global model ``(d,)`` to an :class:`AggregationResult`.
"""

from .base import AggregationResult, AggregationRule, ClientBatch, SeededRule
from .bulyan import BulyanRule
from .fedavg import FedAvgRule
from .flame import FLAMERule
from .fltrust import FLTrustRule
from .foolsgold import FoolsGoldRule
from .krum import KrumRule
from .median import MedianRule
from .multi_krum import MultiKrumRule
from .multi_metrics import MultiMetricsRule
from .norm_clipping import NormClippingRule
from .rfa import RFARule
from .rlr import RLRRule
from .trimmed_mean import TrimmedMeanRule
from .weak_dp import WeakDPRule


def rule_class(name: str) -> type[AggregationRule] | None:
    """The rule class whose ``name`` is ``name`` (None if there is none)."""
    pending, seen = list(AggregationRule.__subclasses__()), set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if cls.name == name:
            return cls
        pending += cls.__subclasses__()
    return None


__all__ = [
    "AggregationResult",
    "AggregationRule",
    "BulyanRule",
    "ClientBatch",
    "FLAMERule",
    "FLTrustRule",
    "FedAvgRule",
    "FoolsGoldRule",
    "KrumRule",
    "MedianRule",
    "MultiKrumRule",
    "MultiMetricsRule",
    "NormClippingRule",
    "RFARule",
    "RLRRule",
    "SeededRule",
    "TrimmedMeanRule",
    "WeakDPRule",
]
