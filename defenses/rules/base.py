"""What every aggregation rule shares: its input, its result, parameter checks, helpers.

A rule is the math of one defense, free of Flower: it takes the sampled clients'
flattened models as one ``(n, d)`` float tensor and returns the new global model.
It runs on whatever device that tensor lives on. Column-blocked helpers keep the
extra memory a small fraction of the ``(n, d)`` matrix and sum in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from fedsec_core.hooks import FinalModel
from fedsec_core.params import check_parameters
from fedsec_core.params import non_negative as non_negative  # re-exported for the rule modules
from fedsec_core.params import param as param
from fedsec_core.params import positive as positive

#: Columns per block in the blocked helpers (a float32 block of 30 clients is 16 MB):
#: few enough blocks that a busy CPU costs few thread synchronisations.
BLOCK_COLUMNS = 1 << 17
#: Columns per chunk for sums that must be accurate to about 1e-9 (Multi-metrics):
#: float32 partial sums this short, added up in float64.
CHUNK_COLUMNS = 1 << 12


@dataclass
class ClientBatch:
    """One round's input to a rule.

    models: ``(n, d)`` floating tensor, one flattened local model per row.
    weights: ``(n,)`` example counts (data sizes), finite and >= 0.
    global_model: ``(d,)`` the global model the clients started from.
    client_ids: stable key per row (used by stateful rules); ``None`` if unknown.
    root_update: ``(d,)`` the server's own update on its root data (FLTrust only).
    """

    models: torch.Tensor
    weights: torch.Tensor
    global_model: torch.Tensor
    client_ids: list[int] | None = None
    root_update: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.models.shape[0]


@dataclass
class AggregationResult:
    """What a rule decided.

    model: the new global model ``(d,)``, or ``None`` to keep the previous one
        (``note`` says why).
    accepted: ``(n,)`` bool, the clients whose models went into ``model``.
    scores: ``(n,)`` the rule's per-client score (meaning documented per rule;
        NaN for rows that were not scored), or ``None`` for rules without one.
    note: why the round was skipped, empty otherwise.
    coefficients: ``(n,)`` float64, set by rules whose new model is
        ``w_0 + sum_i c_i (w_i - w_0)`` (plus noise, for the rules that add it): each
        client's ``c_i``, 0 for a client left out. ``None`` for rules that are no such
        combination (coordinate-wise rules, CRFL's clipped model). Set it beside the
        model, never recomputed: it is what says how heavy a kept client was
        (:meth:`DefenseStrategy.aggregate_round` logs ``c_i`` over FedAvg's
        ``n_i / sum n``).
    """

    model: torch.Tensor | None
    accepted: torch.Tensor
    scores: torch.Tensor | None = None
    note: str = ""
    coefficients: torch.Tensor | None = None


@dataclass(kw_only=True)
class AggregationRule:
    """Base of every rule: sklearn-style, the constructor only stores parameters.

    Subclasses are dataclasses whose fields are made with :func:`param`, set the config
    ``name``, and implement :meth:`_aggregate`. :meth:`validate` is the one place where
    parameters are checked; the strategy adapter calls it when it is built.
    """

    name: ClassVar[str] = ""
    #: Whether a higher score marks a more suspicious client (a distance or outlier
    #: score); False for rules whose score is a weight or a trust (higher = more benign).
    higher_score_is_suspicious: ClassVar[bool] = True
    #: Whether the rule can leave clients out of the aggregate (its ``accepted`` mask is
    #: not always all True); False for rules that weigh, trim or clip every client.
    #: Only for such rules is "the share of attack rounds in which it kept the attacker"
    #: a property of the defense (``fedsec.results.attacker_acceptance``).
    selects_clients: ClassVar[bool] = True

    # What the rule needs from the platform besides the round's models, and its step
    # after the last round (``fedsec_core.hooks``: the server asks, and knows no rule by name).
    #: Whether :meth:`aggregate` needs ``root_update``, the server's own update on a clean
    #: root set of :meth:`root_set_size` training examples each round (FLTrust).
    needs_root_update: ClassVar[bool] = False
    #: Whether the rule needs ``probe``, a :class:`~defenses.rules.ModelProbe` that runs
    #: flat models on inputs (DeepSight); ``defenses.build_rule(..., model_probe=...)``
    #: sets it.
    needs_model_probe: ClassVar[bool] = False

    def validate(self) -> None:
        """Raise ``ConfigError`` for a parameter of the wrong type or out of range."""
        check_parameters(self, lambda name: f"defense {self.name!r}: parameter {name!r}")

    def min_clients(self) -> int:
        """Fewest valid clients the rule needs; with fewer the round keeps the model."""
        return 1

    def round_problem(self, num_clients: int, num_attackers: int) -> str:
        """Why the rule cannot aggregate a round of ``num_clients`` valid clients,
        ``num_attackers`` of them malicious, in words naming the limit; "" if it can.

        Run configs are checked with it before any training (``fedsec run --check``).
        """
        if num_clients < self.min_clients():
            return (
                f"needs at least {self.min_clients()} valid clients a round "
                f"({self._min_clients_formula()}), but a round has {num_clients}"
            )
        return ""

    def round_caveat(self, num_clients: int, num_attackers: int) -> str:
        """What the rule assumes that such a round breaks (it still aggregates); "" if none."""
        return ""

    def selection_quota(self, num_clients: int) -> str:
        """How many clients the rule keeps per round by design, in words; "" when it
        judges each client on its own (then its rejections are evidence against the
        client, not a quota)."""
        return ""

    def _min_clients_formula(self) -> str:
        return "the rule's minimum"

    def root_set_size(self) -> int:
        """How many clean training examples the server holds for :attr:`needs_root_update`
        (0: the rule needs none)."""
        return 0

    #: Keys of what :meth:`after_training` returns that a run's ``summary.json`` carries
    #: as ``final_<key>`` (CRFL: its smoothed and certified accuracy).
    final_summary_keys: ClassVar[tuple[str, ...]] = ()

    def after_training(self, final: FinalModel) -> dict[str, Any]:
        """The rule's step after the last round: what it adds to the last round's record,
        computed from the final global model and the run's facts (``final``, a
        :class:`fedsec_core.hooks.FinalModel`); nothing by default. CRFL certifies the model
        here."""
        return {}

    def aggregate(
        self,
        models: torch.Tensor,
        weights: torch.Tensor,
        global_model: torch.Tensor,
        client_ids: Sequence[int] | None = None,
        root_update: torch.Tensor | None = None,
    ) -> AggregationResult:
        """Aggregate one round; see :class:`ClientBatch` for the inputs.

        Rows with NaN/Inf values or a negative or non-finite weight are never used.
        A result whose model is not finite (e.g. an overflow) keeps the previous model.
        """
        n = models.shape[0]
        if models.dim() != 2 or weights.shape != (n,) or global_model.shape != models.shape[1:]:
            raise ValueError("expected models (n, d), weights (n,) and global_model (d,)")
        usable = finite_rows(models) & torch.isfinite(weights) & (weights >= 0)
        rows = usable.nonzero().squeeze(1)
        ids = None if client_ids is None else [client_ids[i] for i in rows.tolist()]
        if rows.numel() < n:
            models, weights = models[rows], weights[rows]
        batch = ClientBatch(models, weights, global_model, ids, root_update)
        accepted = torch.zeros(n, dtype=torch.bool, device=global_model.device)
        if batch.n < self.min_clients():
            return AggregationResult(
                None,
                accepted,
                None,
                f"{self.name} needs at least {self.min_clients()} valid clients, got {batch.n}",
            )
        result = self._aggregate(batch)
        accepted[rows] = result.accepted
        scores = None
        if result.scores is not None:
            scores = torch.full((n,), math.nan, dtype=result.scores.dtype, device=accepted.device)
            scores[rows] = result.scores
        if result.model is not None and not bool(finite_rows(result.model[None])[0]):
            return AggregationResult(None, accepted.zero_(), scores, "aggregate is not finite")
        coefficients = None
        if result.coefficients is not None and result.model is not None:
            coefficients = torch.zeros(n, dtype=torch.float64, device=accepted.device)
            coefficients[rows] = result.coefficients.to(torch.float64)
        return AggregationResult(result.model, accepted, scores, result.note, coefficients)

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        """The rule itself, on finite rows only (``batch.n >= min_clients()``)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State carried from round to round (empty for stateless rules)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")


@dataclass(kw_only=True)
class ByzantineRule(AggregationRule):
    """A rule built to tolerate ``f = num_malicious`` attackers a round, which needs
    ``clients_per_attacker * f + 3`` valid clients (Krum and Multi-Krum 2f + 3, Bulyan
    4f + 3)."""

    clients_per_attacker: ClassVar[int] = 2
    num_malicious: int = param(1, lambda v: v >= 0, "an int >= 0")

    def min_clients(self) -> int:
        return self.clients_per_attacker * self.num_malicious + 3

    def _min_clients_formula(self) -> str:
        return (
            f"{self.clients_per_attacker} * num_malicious + 3 with num_malicious = "
            f"{self.num_malicious}"
        )

    def round_caveat(self, num_clients: int, num_attackers: int) -> str:
        if num_attackers <= self.num_malicious:
            return ""
        return (
            f"{self.name} is set to tolerate num_malicious = {self.num_malicious} "
            f"attackers a round, but some rounds have {num_attackers}"
        )


@dataclass(kw_only=True)
class SeededRule(AggregationRule):
    """A rule that draws random numbers: round ``t`` of seed ``s`` uses its own stream.

    The stream of each call is derived from ``(seed, calls so far)``, so one seed
    reproduces a run on a given device, and the call count is the whole state.
    """

    seed: int = param(0, lambda v: v >= 0, "an int >= 0")
    _calls: int = field(default=0, init=False, repr=False, compare=False)

    def _generator(self, device: torch.device) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self._calls]).generate_state(2, np.uint32)
        self._calls += 1
        generator = torch.Generator(device=device)
        generator.manual_seed(int(state[0]) << 32 | int(state[1]))
        return generator

    def _standard_normal_like(self, model: torch.Tensor) -> torch.Tensor:
        """N(0, 1) draws shaped, typed and placed like ``model``, from this call's stream
        (the noise WeakDP, FLAME and CRFL add to their aggregate)."""
        return torch.randn(
            model.shape,
            generator=self._generator(model.device),
            dtype=model.dtype,
            device=model.device,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self._calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._calls = int(state["calls"])


# ----------------------------------------------------------------------------- helpers


def column_blocks(d: int) -> Iterator[slice]:
    """Slices of at most ``BLOCK_COLUMNS`` columns covering ``range(d)``."""
    return (slice(start, min(start + BLOCK_COLUMNS, d)) for start in range(0, d, BLOCK_COLUMNS))


#: dtypes numpy sorts as torch holds them (numpy has no bfloat16).
_NUMPY_SORTED = (torch.float32, torch.float64)


def sorted_columns(values: torch.Tensor) -> torch.Tensor:
    """``torch.sort(values, dim=0).values``: each column of a ``(n, k)`` block ascending.

    On the CPU it is numpy's sort, as a new C-contiguous tensor: numpy sorts floats with
    SIMD kernels, torch sorts along dim 0 one short column at a time; the median and the
    trimmed mean of 100 x 407,050 float32 run about 9x faster on one thread
    (``benchmarks/coordinate_rules.py``, its output in benchmarks/README.md). A sort's
    output is a function of the values, so the two agree bit for bit (-0.0 and +0.0
    compare equal and may come out in either order; NaN goes last in both). Elsewhere
    (a GPU, bfloat16, a tensor that needs its graph) it is ``torch.sort``.
    """
    if values.device.type != "cpu" or values.dtype not in _NUMPY_SORTED or values.requires_grad:
        return torch.sort(values, dim=0).values
    return torch.from_numpy(np.sort(values.numpy(), axis=0))


def finite_rows(models: torch.Tensor) -> torch.Tensor:
    """Bool ``(n,)``: rows without NaN/Inf.

    Row sums are finite for such rows unless they overflow, so one pass of sums
    settles the common case; otherwise the entries are checked column block by block
    (``isfinite`` on the whole matrix would allocate more than the matrix itself).
    """
    (sums,) = blockwise_sums(lambda block: (block.sum(dim=1),), models)
    if bool(torch.isfinite(sums).all()):
        return torch.ones(models.shape[0], dtype=torch.bool, device=models.device)
    finite = torch.ones(models.shape[0], dtype=torch.bool, device=models.device)
    for cols in column_blocks(models.shape[1]):
        finite &= torch.isfinite(models[:, cols]).all(dim=1)
    return finite


def blockwise_sums(
    kernel: Callable[..., tuple[torch.Tensor, ...]],
    models: torch.Tensor,
    *vectors: torch.Tensor,
    wide: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Sum ``kernel(models[:, cols], *(v[cols] for v in vectors))`` over column blocks.

    Each block is computed in the models' dtype (in float64 if ``wide``) and the blocks
    are summed in float64. If a float32 sum overflows (absurd client values), it is
    redone in float64 blocks.
    """
    for dtype in (torch.float64 if wide else models.dtype, torch.float64):
        totals: list[torch.Tensor] = []
        for cols in column_blocks(models.shape[1]):
            parts = kernel(models[:, cols].to(dtype), *(v[cols].to(dtype) for v in vectors))
            parts64 = [part.to(torch.float64) for part in parts]
            totals = [t + p for t, p in zip(totals, parts64, strict=True)] if totals else parts64
        flat = torch.cat([t.reshape(-1) for t in totals])
        if dtype == torch.float64 or bool(torch.isfinite(flat).all()):
            break
    return tuple(totals)


def chunks(block: torch.Tensor, *vectors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """``block`` ``(n, b)`` and ``vectors`` ``(b,)`` cut into chunks of ``CHUNK_COLUMNS``.

    Yields views ``(n, m, C)`` and ``(m, C)`` of the whole chunks, then ``(n, 1, r)``
    and ``(1, r)`` of the remaining ``r`` columns, so a reduction over the last axis
    sums at most ``C`` terms.
    """
    n, b = block.shape
    whole = b // CHUNK_COLUMNS * CHUNK_COLUMNS
    if whole:
        yield (
            block[:, :whole].reshape(n, -1, CHUNK_COLUMNS),
            *(v[:whole].reshape(-1, CHUNK_COLUMNS) for v in vectors),
        )
    if whole < b:
        yield block[:, whole:].reshape(n, 1, -1), *(v[whole:].reshape(1, -1) for v in vectors)


def distances_to(models: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``||w_i - point||_2`` per row, float64."""
    (squares,) = blockwise_sums(
        lambda block, at: (torch.linalg.vector_norm(block - at, dim=1) ** 2,), models, point
    )
    return squares.sqrt()


def gram(models: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix ``(n, n)`` of ``models - center`` (or of ``models``), in float64."""
    if center is None:
        return blockwise_sums(lambda block: (block @ block.T,), models)[0]

    def kernel(block: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor]:
        shifted = block - start
        return (shifted @ shifted.T,)

    return blockwise_sums(kernel, models, center)[0]


def squared_distances(models: torch.Tensor) -> torch.Tensor:
    """Pairwise squared L2 distances ``(n, n)`` in float64, via a Gram matrix.

    Each column block is shifted by its coordinate-wise median over the clients
    (distances do not change) and multiplied out in float64. The Gram identity
    ``|a|^2 + |b|^2 - 2 a.b`` loses the digits that the shifted rows share, so the shift
    must leave every honest row small: the median does even when one row is a boosted
    outlier. Shifting by one row (``models[0]``, as fedsec did before) cancels
    catastrophically in float32 when that row is the outlier (Krum's pick then differed
    from the exact one on most seeds of ``tests/test_defenses_rules.py``'s far-row case).
    """

    def kernel(block: torch.Tensor) -> tuple[torch.Tensor]:
        shifted = block - block.median(dim=0).values
        return (shifted @ shifted.T,)

    products = blockwise_sums(kernel, models, wide=True)[0]
    sq = products.diagonal()
    return (sq[:, None] + sq[None, :] - 2 * products).clamp_min(0)


def cosine_from_gram(products: torch.Tensor) -> torch.Tensor:
    """Cosine similarities from a Gram matrix; 0 where a vector is zero."""
    norms = products.diagonal().clamp_min(0).sqrt()
    denominator = (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(products.dtype).tiny)
    return (products / denominator).clamp(-1, 1)


def normalized(weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weights (float64) restricted to ``mask`` and scaled to sum to 1.

    Uniform over the mask if its weights sum to 0.
    """
    inside = torch.ones_like(weights, dtype=torch.float64) if mask is None else mask.double()
    weights = weights.to(torch.float64) * inside
    total = weights.sum()
    uniform = inside / inside.sum().clamp_min(1)
    tiny = torch.finfo(torch.float64).tiny
    return torch.where(total > 0, weights / total.clamp_min(tiny), uniform)


def combine(batch: ClientBatch, coefficients: torch.Tensor) -> torch.Tensor:
    """``w_0 + sum_i c_i (w_i - w_0)`` without forming the updates."""
    coefficients = coefficients.to(torch.float64)
    rest = (1 - coefficients.sum()).to(batch.models.dtype)
    return (coefficients.to(batch.models.dtype) @ batch.models).addcmul_(batch.global_model, rest)


def keep_mask(n: int, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A bool ``(n,)`` mask that is True at ``rows``."""
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[rows] = True
    return mask


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` lowest scores; ties go to the lower index."""
    return torch.argsort(scores, stable=True)[:k]
