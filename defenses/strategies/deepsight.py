"""DeepSight (Rieger et al., NDSS 2022) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import DeepSightRule, ModelProbe


class DeepSight(DefenseStrategy):
    """Cluster the models on their output layer and outputs, drop suspicious clusters,
    clip the rest to the median norm.

    Parameters
    ----------
    tau : float (default: 1/3)
    num_seeds : int (default: 3)
    num_samples : int (default: 20000)
    min_cluster_size : int (default: 2)
    seed : int (default: 0)
        See :class:`~defenses.rules.DeepSightRule`.
    model_probe : ModelProbe (default: None)
        Runs flat models on inputs and finds their output layer
        (:class:`~defenses.rules.deepsight.ModelProbe`); the platform supplies it
        (``defenses.build_defense(..., model_probe=...)``); without it the first
        aggregation raises.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = DeepSightRule

    def __init__(
        self,
        tau: float = 1 / 3,
        num_seeds: int = 3,
        num_samples: int = 20_000,
        min_cluster_size: int = 2,
        seed: int = 0,
        model_probe: ModelProbe | None = None,
        **strategy_kwargs: Any,
    ) -> None:
        rule = DeepSightRule(
            tau=tau,
            num_seeds=num_seeds,
            num_samples=num_samples,
            min_cluster_size=min_cluster_size,
            seed=seed,
        )
        rule.probe = model_probe
        super().__init__(rule, **strategy_kwargs)
