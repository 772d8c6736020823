"""FLDetector (Zhang, Fang, Chen, Gong, Zhang; KDD 2022, arXiv 2207.09209).

"FLDetector: Defending Federated Learning Against Model Poisoning Attacks via Detecting
Malicious Clients".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base import AggregationResult, ClientBatch, SeededRule, combine, normalized, param

#: Reference data sets of the gap statistic (the authors' code: 10).
GAP_REFERENCES = 10
#: Largest number of clusters the gap statistic tries (the authors' code: 1..7).
GAP_MAX_CLUSTERS = 7


@dataclass(kw_only=True)
class FLDetectorRule(SeededRule):
    """Flag clients whose updates their own history does not predict.

    The server keeps the last ``window`` pairs of (global model change, aggregated update
    change) and approximates the Jacobian of the update with respect to the model by
    L-BFGS (:func:`lbfgs_product`, the compact form the authors' code uses). Each round,
    a client that has sent an update before is predicted to send
    ``u_old + H (w_0 - w_old)`` (``u_old`` its last update, ``w_old`` the global model it
    trained from then); its suspicion score is the distance between prediction and
    update, divided by the round's mean distance. A client's score is the mean of its last
    ``window`` scores. From round ``start_round`` on, the gap statistic (k-means on the
    min-max normalised scores against uniform reference sets, k = 1..7, exact in one
    dimension) decides whether
    the round's scores form more than one cluster; if so, k-means with k = 2 flags the
    cluster with the higher mean. A flagged client is rejected in this round and in every
    later one, as the paper removes detected clients. The rest are averaged (data-size
    weights).

    Adapted to federated rounds with client sampling (the paper's clients all send a
    gradient every round): updates ``w_i - w_0`` stand for gradients, a client is
    predicted from its own last participation, and scores are divided by the round's
    mean (not its sum) so that rounds of different sizes compare. The paper's
    underlying robust rule is the mean here.

    Parameters
    ----------
    window : int (default: 10)
        ``N``: L-BFGS pairs kept and scores averaged per client (the paper's 10).
    start_round : int (default: -1)
        First round (counted by this rule) in which it flags anyone; before, it only
        learns. -1: ``window + 1``, the first round whose prediction uses a full window of
        L-BFGS pairs (the authors' code waits 50 of its 500 iterations).
    seed : int (default: 0)
        Seeds the gap statistic's reference sets.

    Cost: the round's ``(n, d)`` updates, a product of ``(d, 2 window)`` by ``(d, n)``
    for the predictions, k-means on ``n`` numbers. State: the last ``window`` pairs, the
    last update of every client seen and the global models they started from (a
    checkpoint holds them all). Scores: the window-mean suspicion scores (NaN before a
    client has one). Needs ``client_ids``.
    """

    name = "fldetector"
    window: int = param(10, lambda v: v >= 1, "an int >= 1")
    start_round: int = param(-1, lambda v: v == -1 or v >= 1, "an int >= 1, or -1")
    _round: int = field(default=0, init=False, repr=False)
    _pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=list, init=False, repr=False
    )
    _previous: tuple[torch.Tensor, torch.Tensor] | None = field(
        default=None, init=False, repr=False
    )  # (global model, aggregated update) of the last round
    _models: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _last: dict[int, tuple[int, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )  # client -> (round it last trained in, its update then)
    _scores: dict[int, list[float]] = field(default_factory=dict, init=False, repr=False)
    _flagged: set[int] = field(default_factory=set, init=False, repr=False)

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        if batch.client_ids is None:
            raise ValueError("FLDetector needs client_ids to keep per-client histories")
        self._round += 1
        w0, ids = batch.global_model, list(batch.client_ids)
        updates = batch.models - w0
        self._score(ids, updates, w0)
        window_means = torch.tensor(
            [np.mean(self._scores[c]) if self._scores.get(c) else math.nan for c in ids],
            dtype=torch.float64,
        )
        start = self.window + 1 if self.start_round == -1 else self.start_round
        if self._round >= start:
            self._flagged |= self._detect(ids, window_means)
        kept = torch.tensor([c not in self._flagged for c in ids], device=w0.device)
        coefficients = normalized(batch.weights, kept)
        model = combine(batch, coefficients) if kept.any() else None
        self._remember(ids, updates, w0, None if model is None else model - w0)
        note = "" if model is not None else "every client of the round is flagged"
        scores = window_means.to(w0.device)
        return AggregationResult(model, kept, scores, note, coefficients)

    # ----------------------------------------------------------------- the steps
    def _score(self, ids: list[int], updates: torch.Tensor, w0: torch.Tensor) -> None:
        """Append each returning client's normalised prediction error to its scores."""
        known = [i for i, c in enumerate(ids) if c in self._last and self._pairs]
        if len(known) < 2:  # a distance divided by the round's mean needs two
            return
        olds = torch.stack([self._last[ids[i]][1].to(w0) for i in known])
        moves = torch.stack([w0 - self._models[self._last[ids[i]][0]].to(w0) for i in known])
        predicted = olds + lbfgs_product(self._pairs, moves.T).T.to(w0.dtype)
        distance = torch.linalg.vector_norm(predicted - updates[known], dim=1).double()
        relative = distance / distance.mean().clamp_min(torch.finfo(torch.float64).tiny)
        for i, value in zip(known, relative.tolist(), strict=True):
            history = self._scores.setdefault(ids[i], [])
            history.append(value)
            del history[: -self.window]

    def _detect(self, ids: list[int], scores: torch.Tensor) -> set[int]:
        """The clients of the higher k-means cluster, if the gap statistic finds clusters."""
        scored = [i for i in range(len(ids)) if not math.isnan(scores[i])]
        if len(scored) < 3:
            return set()
        values = scores[scored].numpy()
        seed = int(torch.randint(2**31, (1,), generator=self._generator(torch.device("cpu"))))
        if gap_statistic_clusters(values, seed) <= 1:
            return set()
        labels, centers = kmeans_1d(values, 2)
        high = int(np.argmax(centers))
        return {ids[scored[j]] for j in np.flatnonzero(labels == high)}

    def _remember(self, ids, updates, w0, aggregate) -> None:
        """Keep this round's L-BFGS pair, each client's update and the model it left."""
        if aggregate is not None:
            if self._previous is not None:
                w_prev, g_prev = self._previous
                pair = ((w0 - w_prev.to(w0)).double(), (aggregate - g_prev.to(w0)).double())
                self._pairs = [*self._pairs, pair][-self.window :]
            self._previous = (w0.clone(), aggregate.clone())
        self._models[self._round] = w0.clone()
        for i, c in enumerate(ids):
            self._last[c] = (self._round, updates[i].clone())
        used = {r for r, _ in self._last.values()}
        self._models = {r: m for r, m in self._models.items() if r in used}

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "round": self._round,
            "pairs": [(s.clone(), y.clone()) for s, y in self._pairs],
            "previous": None
            if self._previous is None
            else tuple(t.clone() for t in self._previous),
            "models": {r: m.clone() for r, m in self._models.items()},
            "last": {c: (r, u.clone()) for c, (r, u) in self._last.items()},
            "scores": {c: list(v) for c, v in self._scores.items()},
            "flagged": sorted(self._flagged),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._round = int(state["round"])
        self._pairs = [(s.clone(), y.clone()) for s, y in state["pairs"]]
        previous = state["previous"]
        self._previous = None if previous is None else tuple(t.clone() for t in previous)
        self._models = {int(r): m.clone() for r, m in state["models"].items()}
        self._last = {int(c): (int(r), u.clone()) for c, (r, u) in state["last"].items()}
        self._scores = {int(c): [float(x) for x in v] for c, v in state["scores"].items()}
        self._flagged = {int(c) for c in state["flagged"]}


def lbfgs_product(pairs: list[tuple[torch.Tensor, torch.Tensor]], v: torch.Tensor) -> torch.Tensor:
    """``B v`` for the L-BFGS approximation ``B`` of the matrix that maps the pairs'
    ``s`` to their ``y`` (compact form, Byrd, Nocedal & Schnabel 1994, as the authors'
    code): with ``S``, ``Y`` the pairs as columns, ``SY = S^T Y = L + R`` (strictly lower
    and upper-with-diagonal parts), ``D = diag(SY)`` and ``sigma = y_k^T s_k / s_k^T
    s_k``, ``B v = sigma v - [sigma S, Y] M^+ [sigma S^T v; Y^T v]`` with
    ``M = [[sigma S^T S, L], [L^T, -D]]``. ``v`` is ``(d,)`` or ``(d, m)``; float64."""
    s = torch.stack([p[0] for p in pairs], dim=1).double()
    y = torch.stack([p[1] for p in pairs], dim=1).double()
    v = v.double()
    sy = s.T @ y
    lower = torch.tril(sy, diagonal=-1)
    sigma = (y[:, -1] @ s[:, -1]) / (s[:, -1] @ s[:, -1]).clamp_min(torch.finfo(torch.float64).tiny)
    middle = torch.cat(
        [
            torch.cat([sigma * (s.T @ s), lower], dim=1),
            torch.cat([lower.T, -torch.diag(torch.diagonal(sy))], dim=1),
        ],
        dim=0,
    )
    projected = torch.cat([sigma * (s.T @ v), y.T @ v], dim=0)
    return sigma * v - torch.cat([sigma * s, y], dim=1) @ (torch.linalg.pinv(middle) @ projected)


def gap_statistic_clusters(values: np.ndarray, seed: int) -> int:
    """How many clusters the gap statistic (Tibshirani, Walther & Hastie 2001) finds in
    the numbers ``values``, min-max normalised, against ``GAP_REFERENCES`` uniform
    reference sets drawn with ``seed``: the smallest k with ``gap(k) >= gap(k + 1) -
    s(k + 1)`` (1 when all values are equal). The clusterings are exact
    (:func:`kmeans_1d`; the authors' code runs scikit-learn's k-means)."""
    spread = values.max() - values.min()
    if not spread > 0:
        return 1
    x = (values - values.min()) / spread
    rng = np.random.default_rng(seed)
    ks = range(1, min(GAP_MAX_CLUSTERS, len(x) - 1) + 1)  # k = n clusters fit anything
    gaps, sds = [], []
    for k in ks:
        within = _within(x, k)
        references = np.array(
            [_within(rng.uniform(0, 1, len(x)), k) for _ in range(GAP_REFERENCES)]
        )
        logs = np.log(np.maximum(references, 1e-300))
        gaps.append(logs.mean() - np.log(max(within, 1e-300)))
        sds.append(math.sqrt(1 + 1 / GAP_REFERENCES) * logs.std())
    for i in range(len(gaps) - 1):
        if gaps[i] >= gaps[i + 1] - sds[i + 1]:
            return i + 1
    return len(gaps)


def _within(x: np.ndarray, k: int) -> float:
    labels, centers = kmeans_1d(x, k)
    return float(np.square(x - centers[labels]).sum())


def kmeans_1d(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Optimal k-means of the numbers ``x`` (labels, centres in increasing order): in one
    dimension the clusters are runs of the sorted values, and dynamic programming over
    the split points (Wang & Song 2011, Ckmeans.1d.dp) finds the least within-cluster
    sum of squares exactly, with no random start. ``k`` is cut to the distinct values."""
    order = np.argsort(x, kind="stable")
    v = x[order].astype(np.float64)
    n = len(v)
    k = max(1, min(k, len(np.unique(v))))
    s1 = np.concatenate([[0.0], np.cumsum(v)])
    s2 = np.concatenate([[0.0], np.cumsum(v * v)])
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    size = np.maximum(j - i, 1)
    # cost[i, j]: sum of squares of v[i:j] around its mean (inf unless i < j)
    cost = np.where(j > i, s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / size, np.inf)
    best = cost[0].copy()  # best[j]: one cluster over v[:j]
    splits = []
    for _ in range(1, k):
        total = best[:, None] + cost  # a last cluster v[i:j] after the best of v[:i]
        splits.append(np.argmin(total, axis=0))
        best = total.min(axis=0)
    cuts = [n]  # walk back from the end: where the last, then each earlier, cluster starts
    for split in reversed(splits):
        cuts.append(int(split[cuts[-1]]))
    edges = [0, *reversed(cuts[1:]), n]
    sorted_labels = np.zeros(n, dtype=int)
    centers = np.empty(len(edges) - 1)
    for label, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        sorted_labels[lo:hi] = label
        centers[label] = v[lo:hi].mean()
    labels = np.empty(n, dtype=int)
    labels[order] = sorted_labels
    return labels, centers
