"""DeepSight (Rieger, Nguyen, Miettinen, Sadeghi; NDSS 2022, arXiv 2201.00763).

"DeepSight: Mitigating Backdoor Attacks in Federated Learning Through Deep Model
Inspection".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedsec_core.layout import ModelLayout

from .base import (
    AggregationResult,
    ClientBatch,
    SeededRule,
    combine,
    distances_to,
    normalized,
    param,
)
from .norm_clipping import clipping_factors

#: Inputs per forward pass of :meth:`ModelProbe.probabilities`.
PROBE_BATCH = 2000


class ModelProbe:
    """What DeepSight needs to see inside the models, given by the platform: it runs a
    flat model (the state view of ``fedsec_core.layout``: its floating-point state-dict
    entries in order, as the rules see them) on inputs, and finds its output layer.

    ``template`` is a model of the federation's architecture (its non-floating buffers
    are used as they are), ``input_shape`` one input's shape. The output layer is the last
    ``torch.nn.Linear`` of the model."""

    def __init__(self, template: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = template
        self.input_shape = tuple(input_shape)
        self.layout = ModelLayout.of_module(template)
        linear = [name for name, m in template.named_modules() if isinstance(m, torch.nn.Linear)]
        if not linear:
            raise ValueError("DeepSight needs a model whose output layer is a torch.nn.Linear")
        last = linear[-1]
        self.weight_slice = self.layout.span(f"{last}.weight")
        self.bias_slice = self.layout.span(f"{last}.bias")
        self.weight_shape = self.layout.entry(f"{last}.weight").shape

    @property
    def num_classes(self) -> int:
        return self.weight_shape[0]

    def output_layer(self, models: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, C, h)`` weights and ``(n, C)`` biases of each flat model's output layer."""
        weights = models[:, self.weight_slice].reshape(models.shape[0], *self.weight_shape)
        return weights, models[:, self.bias_slice]

    def probabilities(self, model: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Softmax outputs ``(N, C)`` of the flat ``model`` on ``inputs``."""
        self.layout.load_module(self.model, model)
        self.model.to(model.device).eval()
        with torch.no_grad():  # in batches, so that activations stay small
            return torch.cat(
                [
                    torch.softmax(self.model(chunk.to(model.device)), dim=1)
                    for chunk in inputs.split(PROBE_BATCH)
                ]
            )


@dataclass(kw_only=True)
class DeepSightRule(SeededRule):
    """Cluster the models on what their output layer and outputs show, drop the clusters
    that look trained on homogeneous (backdoor) data, clip the rest to the median norm.

    1. Per client, from its output layer's update (weights ``W``, biases ``b``): the
       normalised energy updates ``NEUP_k = e_k^2 / sum e^2`` with ``e_k = sum_j |dW_kj| +
       |db_k|``, and the threshold exceedings ``TE`` (NEUPs >= max NEUP / classes). A model
       with ``TE <= median(TE) / 2`` is labelled suspicious: few output neurons updated
       strongly means little label diversity in its training data.
    2. Three views clustered with HDBSCAN: the cosine distances of the output-layer bias
       updates (precomputed), the NEUPs, and for each of ``num_seeds`` seeds the DDifs
       (per class, the mean over ``num_samples`` uniform noise inputs of the client's
       softmax divided by the global model's). Each clustering becomes a 0/1 distance
       (0: same cluster); their mean (DDif views averaged first) is clustered again.
    3. A cluster whose share of suspicious models is at least ``tau`` is dropped; a
       model HDBSCAN leaves unclustered is kept unless it is suspicious.
    4. The kept updates are clipped to the median update norm (all clients') and
       averaged with data-size weights (the reference implementations: uniform).

    The model views need the platform: a :class:`ModelProbe` set as ``probe`` (the
    rule declares ``needs_model_probe``, and ``defenses.build_rule(...,
    model_probe=...)`` sets it; fedsec's server builds it from the task's model and data
    shape).

    Parameters
    ----------
    tau : float (default: 1/3)
        Share of suspicious models that drops a cluster (the paper's tau).
    num_seeds : int (default: 3)
        Noise input sets for the DDifs (the paper's 3).
    num_samples : int (default: 20000)
        Noise inputs per set (the paper's 20,000; each is run through every client's model
        and the global model, so on a CPU this is the rule's main cost).
    min_cluster_size : int (default: 2)
        HDBSCAN's smallest cluster (scikit-learn's default is 5, too many for rounds of 10
        clients; the reference code's ``hdbscan`` defaults to 5 as well).
    seed : int (default: 0)
        Seeds the noise inputs.

    Cost: ``(n + 1) * num_seeds * num_samples`` forward passes, O(n^2) for the bias
    cosines, HDBSCAN on n points. Scores: the threshold exceedings (fewer = more
    suspicious).
    """

    name = "deepsight"
    higher_score_is_suspicious = False
    needs_model_probe = True
    tau: float = param(1 / 3, lambda v: 0 < v <= 1, "in (0, 1]")
    num_seeds: int = param(3, lambda v: v >= 1, "an int >= 1")
    num_samples: int = param(20_000, lambda v: v >= 1, "an int >= 1")
    min_cluster_size: int = param(2, lambda v: v >= 2, "an int >= 2")
    probe: Any = field(default=None, init=False, repr=False, compare=False)

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        if self.probe is None:
            raise ValueError("DeepSight needs a ModelProbe (the platform sets rule.probe)")
        models, w0, n = batch.models, batch.global_model, batch.n
        # float64: a float32 update of an extreme (finite) model would overflow squared
        weights, biases = self.probe.output_layer(models.double() - w0.double())
        energy = weights.abs().sum(dim=2) + biases.abs()
        neups = (energy**2 / (energy**2).sum(dim=1, keepdim=True).clamp_min(1e-300)).double()
        exceedings = (neups >= neups.max(dim=1, keepdim=True).values / neups.shape[1]).sum(1)
        median = exceedings.double().quantile(0.5)  # numpy's median, as the reference code
        suspicious = (exceedings <= median / 2).cpu().numpy()

        unit = biases.double() / biases.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
        cosine = (1 - unit @ unit.T).clamp_min(0).cpu().numpy()
        views = [
            cluster_distances(self._hdbscan(cosine, precomputed=True)),
            cluster_distances(self._hdbscan(neups.cpu().numpy())),
            np.mean([cluster_distances(self._hdbscan(d)) for d in self._ddifs(models, w0)], axis=0),
        ]
        final = self._hdbscan(np.mean(views, axis=0), precomputed=True)
        kept = np.zeros(n, dtype=bool)
        for label in set(final.tolist()):
            members = final == label
            if label == -1:
                kept[members] = ~suspicious[members]
            else:
                kept[members] = suspicious[members].mean() < self.tau
        mask = torch.from_numpy(kept).to(models.device)
        scores = exceedings.double().to(models.device)
        if not mask.any():
            return AggregationResult(None, mask, scores, "every cluster looked suspicious")
        norms = distances_to(models, w0)
        bound = norms.quantile(0.5)
        coefficients = normalized(batch.weights, mask) * clipping_factors(norms, bound)
        return AggregationResult(
            combine(batch, coefficients), mask, scores, coefficients=coefficients
        )

    def _ddifs(self, models: torch.Tensor, w0: torch.Tensor) -> list[np.ndarray]:
        """Per seed, ``(n, C)``: the mean over noise inputs of each class's softmax ratio
        client / global."""
        out = []
        for _ in range(self.num_seeds):
            generator = self._generator(torch.device("cpu"))
            inputs = torch.rand((self.num_samples, *self.probe.input_shape), generator=generator)
            base = self.probe.probabilities(w0, inputs).double()
            ratios = [
                (self.probe.probabilities(row, inputs).double() / (base + 1e-30)).mean(dim=0)
                for row in models
            ]
            out.append(torch.stack(ratios).double().cpu().numpy())
        return out

    def _hdbscan(self, points: np.ndarray, precomputed: bool = False) -> np.ndarray:
        from sklearn.cluster import HDBSCAN

        if len(points) < self.min_cluster_size:
            return np.full(len(points), -1)
        metric = "precomputed" if precomputed else "euclidean"
        clusterer = HDBSCAN(min_cluster_size=self.min_cluster_size, metric=metric, copy=True)
        return clusterer.fit_predict(points)


def cluster_distances(labels: np.ndarray) -> np.ndarray:
    """``(n, n)``: 0 for two models in the same cluster, 1 otherwise (unclustered: 1)."""
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] != -1)
    return np.where(same, 0.0, 1.0)
