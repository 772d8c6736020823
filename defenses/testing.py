"""Synthetic aggregation rounds, to check and time the rules without Flower or a model.

A seeded round of float32 models with one outlier (:func:`make_round`) and the model
probe such a round gives DeepSight (:class:`BiasProbe`): what the GPU checks
(tests/test_gpu.py), the rules' property tests and the GPU timing script
(benchmarks/gpu_timing.py) share, here rather than in benchmarks/ so that no test imports
a benchmark. Torch only, no Flower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

OUTLIER = 3  # the client whose update is sign-flipped, scaled and noisier


@dataclass
class Round:
    """One round's input to a rule, movable between devices."""

    models: torch.Tensor
    weights: torch.Tensor
    global_model: torch.Tensor
    root_update: torch.Tensor
    client_ids: list[int]

    def to(self, device: torch.device) -> Round:
        return Round(
            self.models.to(device),
            self.weights.to(device),
            self.global_model.to(device),
            self.root_update.to(device),
            self.client_ids,
        )

    def call(self, rule):
        """``rule.aggregate`` of this round."""
        return rule.aggregate(
            self.models,
            self.weights,
            self.global_model,
            client_ids=self.client_ids,
            root_update=self.root_update,
        )


def make_round(n: int, d: int, seed: int) -> Round:
    """Float32 models ``w_0 + s + N(0, sigma_i^2)`` (global w_0 ~ N(0, 0.05), shared
    update s ~ N(0, 0.005), sigma_i = 0.002 (1 + 0.15 i), so that the clients' distances
    and scores are well apart and no selection hinges on a near-tie that rounding could
    flip); client OUTLIER is ``w_0 - 4 s + N(0, 0.02)``. Row by row, so no temporary
    outgrows one row."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.empty(d).normal_(0, 0.05, generator=gen)
    shared = torch.empty(d).normal_(0, 0.005, generator=gen)
    models = torch.empty(n, d)
    for i in range(n):
        if i == OUTLIER:
            models[i].normal_(0, 0.02, generator=gen).add_(shared, alpha=-4).add_(base)
        else:
            models[i].normal_(0, 0.002 * (1 + 0.15 * i), generator=gen).add_(shared).add_(base)
    weights = torch.randint(100, 600, (n,), generator=gen).double()
    root = torch.empty(d).normal_(0, 0.002, generator=gen).add_(shared)
    return Round(models, weights, base, root, list(range(100, 100 + n)))


class BiasProbe:
    """A DeepSight ``ModelProbe`` for rounds without a model behind them (synthetic and
    hand-made rounds): the whole flat vector is the output layer's bias of a model with
    no hidden units, so its softmax is that of the vector itself, whatever the input."""

    input_shape = (1,)

    def output_layer(self, models: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return models.new_zeros((*models.shape, 0)), models

    def probabilities(self, model: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model.double(), dim=0).expand(len(inputs), -1)
