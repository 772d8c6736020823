"""The one adapter from an aggregation rule to a Flower strategy.

:class:`DefenseStrategy` is Flower's ``FedAvg`` with its ``aggregate_train`` replaced:
it checks every reply on its own, stacks the good ones into an ``(n, d)`` tensor,
runs the rule, turns the new model back into an ``ArrayRecord`` and reports verdicts.
:class:`RecordLayout` is the ``ArrayRecord`` side of the one model layout
(``fedsec_core.layout``), which needs no Flower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsec_core.errors import ConfigError
from fedsec_core.layout import ModelLayout
from fedsec_core.protocol import (
    DEFENSE_ACCEPTED,
    DEFENSE_REFUSED,
    DEFENSE_REJECTED,
    DEFENSE_SCORED,
    DEFENSE_SCORES,
    DEFENSE_WEIGHT_RATIOS,
    DEFENSE_WEIGHTED,
    PARTITION_ID,
)

from .rules import AggregationRule
from .rules.base import normalized

#: MetricRecord key whose value, when present, is the client's stable key.
CLIENT_KEY_METRIC = PARTITION_ID

#: ``(server_round, global_arrays) -> the server's model after training on root data``.
RootUpdateFn = Callable[[int, ArrayRecord], ArrayRecord]


@dataclass
class RoundReport:
    """What one round's aggregation returns: the new model, the train metrics and the
    defense's verdicts, keyed by client key.

    A client key is the reply's MetricRecord ``partition-id`` when present, else the
    sender's node id.

    round: the server round.
    arrays: the new global model; None when no new model came out of the round.
    metrics: the accepted replies' train metrics, aggregated (None if they disagree).
    accepted: clients whose model went into the new global model (sorted).
    rejected: valid replies the defense left out (sorted).
    invalid: replies refused before the defense saw them, with the reason.
    scores: the defense's score per scored client (empty if it has none).
    weight_ratios: per valid client, its coefficient in the new model over the weight
        FedAvg would give it (``n_i / sum n`` over the valid replies): 1 everywhere
        for FedAvg, 0 for a client left out, ``n / m`` for a client among ``m`` equal
        ones kept of ``n``; how much heavier a kept attacker is than under FedAvg.
        Empty when the rule's model is no combination of the clients' models (see
        :class:`~defenses.rules.AggregationResult`'s ``coefficients``).
    kept_previous: True when no new model came out of the round.
    note: why the previous model was kept, empty otherwise.
    """

    round: int
    arrays: ArrayRecord | None = None
    metrics: MetricRecord | None = None
    accepted: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    invalid: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    weight_ratios: dict[int, float] = field(default_factory=dict)
    kept_previous: bool = False
    note: str = ""

    def verdict_metrics(self) -> dict[str, list[int] | list[float]]:
        """The verdicts as MetricRecord values (lists of ints and floats; refusal
        reasons are text, so only the refused keys): what ``aggregate_train`` adds to
        the train metrics for Flower's own round loop (``Strategy.start``)."""
        scored = sorted(self.scores)
        weighted = sorted(self.weight_ratios)
        return {
            DEFENSE_ACCEPTED: list(self.accepted),
            DEFENSE_REJECTED: list(self.rejected),
            DEFENSE_REFUSED: sorted(self.invalid),
            DEFENSE_SCORED: scored,
            DEFENSE_SCORES: [float(self.scores[k]) for k in scored],
            DEFENSE_WEIGHTED: weighted,
            DEFENSE_WEIGHT_RATIOS: [float(self.weight_ratios[k]) for k in weighted],
        }


@dataclass
class _Reply:
    key: int
    content: RecordDict
    num_examples: float


class DefenseStrategy(FedAvg):
    """Run an :class:`~defenses.rules.AggregationRule` as a Flower ``FedAvg`` strategy.

    Parameters
    ----------
    rule : AggregationRule
        The defense's math; validated here, so a bad parameter raises ``ConfigError``
        before any round runs.
    device : str (default: "cpu")
        Torch device the aggregation runs on ("cpu", "cuda", "cuda:1", ...).
    **fedavg_kwargs
        Any parameter of Flower's ``FedAvg`` (``fraction_train``, ``min_train_nodes``,
        ``weighted_by_key``, ``train_metrics_aggr_fn``, ...).

    Each round, ``configure_train`` remembers the global ``ArrayRecord`` it sends. In
    ``aggregate_round`` a reply is refused (logged, listed in the report's ``invalid``)
    if it carries an error, lacks exactly one ArrayRecord or one MetricRecord with a
    finite ``weighted_by_key`` value > 0, has other array keys, shapes or dtypes than
    the global model, holds NaN/Inf, or shares its client key with another reply.
    Flower's own all-or-nothing consistency check is not used. The rest go to the
    rule; if none is left, or the rule keeps the model, the report's ``arrays`` is None
    (``aggregate_train`` returns no model) and the previous global model stays.

    The rule sees the floating-point arrays only, flattened in the global record's key
    order (the state view of ``fedsec_core.layout``: parameters and floating buffers alike,
    through :class:`RecordLayout`), as float32 (float64 if any array is float64); the
    new model is cast back
    to each array's dtype. Other arrays (integer buffers such as BatchNorm's
    ``num_batches_tracked``) are copied from the global model, so clients cannot
    change them. Train metrics are aggregated by ``train_metrics_aggr_fn`` (FedAvg's
    weighted mean by default) over the accepted replies only.

    :meth:`aggregate_round` returns the round's :class:`RoundReport` (model, metrics,
    verdicts): fedsec's round loop calls it. Flower's ``aggregate_train`` hook returns
    its model and its metrics with the verdicts added (:meth:`RoundReport.verdict_metrics`),
    so Flower's own loop (``Strategy.start``) records them per round too.
    ``state_dict()`` / ``load_state_dict()`` checkpoint the rule's state (FoolsGold
    histories, noise stream positions).
    """

    #: The rule class a named defense wraps (the registry lists its parameters).
    rule_class: ClassVar[type[AggregationRule]] = AggregationRule

    def __init__(
        self,
        rule: AggregationRule,
        *,
        device: str = "cpu",
        root_update_fn: RootUpdateFn | None = None,
        **fedavg_kwargs: Any,
    ):
        rule.validate()
        if root_update_fn is not None and not rule.needs_root_update:
            raise TypeError(f"{rule.name} needs no root update: it takes no root_update_fn")
        super().__init__(**fedavg_kwargs)
        self.rule = rule
        self.device = _parse_device(device)
        self._global_arrays: ArrayRecord | None = None
        if rule.needs_root_update:
            #: ``(server_round, global_arrays) -> ArrayRecord``: the global model after
            #: the server trained it on its clean root set (``rule.root_set_size()``
            #: examples), for a rule that declares ``needs_root_update``.
            self.root_update_fn = root_update_fn

    @classmethod
    def from_rule(cls, rule: AggregationRule, **strategy_kwargs: Any) -> DefenseStrategy:
        """The strategy around a built ``rule`` (``defenses.build_rule``): what the
        class's constructor builds from its explicit parameters, without building the
        rule again (``defenses.build_defense``)."""
        strategy = cls.__new__(cls)
        DefenseStrategy.__init__(strategy, rule, **strategy_kwargs)
        return strategy

    def summary(self) -> None:
        """Log the defense, then FedAvg's settings."""
        log(INFO, "\t├──> Defense: %s on %s", self.rule, self.device)
        super().summary()

    def state_dict(self) -> dict[str, Any]:
        """The rule's state, for checkpoints."""
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rule's state from :meth:`state_dict`."""
        self.rule.load_state_dict(state)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model sent this round, then sample as ``FedAvg`` does;
        refuse to start a round of a rule that needs a root update without
        ``root_update_fn``."""
        if self.rule.needs_root_update and self.root_update_fn is None:
            raise RuntimeError(
                f"{type(self).__name__} needs root_update_fn(server_round, arrays) -> ArrayRecord"
            )
        self._global_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: :meth:`aggregate_round`'s model, and its train metrics with the
        verdicts added (``defense-accepted``, ``-rejected``, ``-refused``, ``-scored``,
        ``-scores``)."""
        report = self.aggregate_round(server_round, replies)
        return report.arrays, MetricRecord({**(report.metrics or {}), **report.verdict_metrics()})

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundReport:
        """Check each reply, run the rule on the valid ones; return the new model (None:
        keep the previous one), the accepted replies' train metrics and the verdicts."""
        if self._global_arrays is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        layout = RecordLayout(self._global_arrays)
        report = RoundReport(round=server_round)
        models, valid = self._load_valid(list(replies), layout, report)
        if not valid:
            return self._keep_previous(report, "no valid reply")

        keys = [reply.key for reply in valid]
        global_model = layout.flatten(self._global_arrays, self.device)
        examples = torch.tensor(
            [r.num_examples for r in valid], dtype=torch.float64, device=self.device
        )
        result = self.rule.aggregate(
            models,
            examples,
            global_model,
            keys,
            self._root_update(server_round, layout, global_model),
        )
        accepted = result.accepted.tolist()
        if result.coefficients is not None and result.model is not None:
            ratios = result.coefficients / normalized(examples).to(result.coefficients.device)
            report.weight_ratios = dict(zip(keys, ratios.tolist(), strict=True))
        report.accepted = sorted(k for k, ok in zip(keys, accepted, strict=True) if ok)
        report.rejected = sorted(k for k, ok in zip(keys, accepted, strict=True) if not ok)
        if result.scores is not None:
            scores = zip(keys, result.scores.tolist(), strict=True)
            report.scores = {k: s for k, s in scores if not math.isnan(s)}
        if result.model is None:
            return self._keep_previous(report, result.note)
        log(
            INFO,
            "aggregate_train: %s accepted %s, rejected %s",
            self.rule.name,
            report.accepted,
            report.rejected,
        )
        report.arrays = layout.unflatten(result.model, self._global_arrays)
        contents = [r.content for r, ok in zip(valid, accepted, strict=True) if ok]
        report.metrics = self._aggregate_metrics(contents)
        return report

    def _load_valid(
        self, replies: list[Message], layout: RecordLayout, report: RoundReport
    ) -> tuple[torch.Tensor, list[_Reply]]:
        """The valid replies and their models as rows of one tensor; refuse the rest."""
        log(INFO, "aggregate_train: received %d replies", len(replies))
        models = torch.empty(len(replies), layout.size, dtype=layout.dtype, device=self.device)
        loaded: list[_Reply] = []
        for message in replies:
            key = _client_key(message)
            reason = self._problem(message, layout) or layout.load(
                next(iter(message.content.array_records.values())), models[len(loaded)]
            )
            if reason:
                self._refuse(report, key, reason)
                continue
            weight = next(iter(message.content.metric_records.values()))[self.weighted_by_key]
            loaded.append(_Reply(key, message.content, float(weight)))
        rows = self._unique_rows(loaded, report)
        models = models[: len(rows)] if len(rows) == len(loaded) else models[rows]
        return models, [loaded[row] for row in rows]

    def _root_update(
        self, server_round: int, layout: RecordLayout, global_model: torch.Tensor
    ) -> torch.Tensor | None:
        """The server's own update this round, for a rule that needs one (FLTrust)."""
        if not self.rule.needs_root_update:
            return None
        trained = self.root_update_fn(server_round, self._global_arrays)
        return layout.flatten(trained, self.device) - global_model

    def _problem(self, message: Message, layout: RecordLayout) -> str:
        """Why a reply cannot be used, judged from its records' headers ("" if none)."""
        if message.has_error():
            return f"error reply: {message.error.reason}"
        if not message.has_content():
            return "reply has no content"
        content = message.content
        if len(content.array_records) != 1:
            return f"expected one ArrayRecord, found {len(content.array_records)}"
        if len(content.metric_records) != 1:
            return f"expected one MetricRecord, found {len(content.metric_records)}"
        weight = next(iter(content.metric_records.values())).get(self.weighted_by_key)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            return f"MetricRecord needs a finite {self.weighted_by_key!r} > 0, got {weight!r}"
        return layout.mismatch(next(iter(content.array_records.values())))

    def _unique_rows(self, loaded: list[_Reply], report: RoundReport) -> list[int]:
        """Rows of ``loaded`` whose client key no other reply claims; refuse the rest."""
        counts: dict[int, int] = {}
        for reply in loaded:
            counts[reply.key] = counts.get(reply.key, 0) + 1
        for key in sorted(k for k, c in counts.items() if c > 1):
            self._refuse(report, key, "several replies claim this client key")
        return [row for row, reply in enumerate(loaded) if counts[reply.key] == 1]

    def _aggregate_metrics(self, contents: list[RecordDict]) -> MetricRecord | None:
        """``train_metrics_aggr_fn`` over the accepted replies' metrics, the client key
        left out (an id averaged over clients means nothing); None if they disagree."""
        metrics_only = [
            RecordDict(
                {
                    name: MetricRecord({k: v for k, v in record.items() if k != CLIENT_KEY_METRIC})
                    for name, record in content.metric_records.items()
                }
            )
            for content in contents
        ]
        try:
            return self.train_metrics_aggr_fn(metrics_only, self.weighted_by_key)
        except (TypeError, ValueError) as error:
            log(WARNING, "aggregate_train: train metrics not aggregated: %s", error)
            return None

    def _refuse(self, report: RoundReport, key: int, reason: str) -> None:
        log(WARNING, "aggregate_train: refused reply of client %s: %s", key, reason)
        report.invalid[key] = reason

    def _keep_previous(self, report: RoundReport, note: str) -> RoundReport:
        report.kept_previous, report.note = True, note
        log(WARNING, "aggregate_train: kept the previous global model (%s)", note)
        return report


class RecordLayout:
    """The model layout (``fedsec_core.layout.ModelLayout``, its state view) of a Flower
    ``ArrayRecord``: where each floating-point array sits in the flat vector the rule
    sees, with the checks a client's reply needs before it is trusted.

    ``specs`` holds every array's header as the record states it (dtype name, shape);
    ``layout`` the core layout built from them (``size``, ``dtype``: the vector's)."""

    def __init__(self, record: ArrayRecord) -> None:
        self.specs = {key: (array.dtype, tuple(array.shape)) for key, array in record.items()}
        self.layout = ModelLayout((key, shape, dtype) for key, (dtype, shape) in self.specs.items())
        self.size = self.layout.size
        self.dtype = self.layout.dtype

    def mismatch(self, record: ArrayRecord) -> str:
        """How ``record``'s headers differ from the global model's keys, shapes, dtypes."""
        if set(record.keys()) != set(self.specs):
            missing = sorted(set(self.specs) - set(record.keys()))
            extra = sorted(set(record.keys()) - set(self.specs))
            return f"array keys differ from the global model (missing {missing}, extra {extra})"
        for key, array in record.items():
            if (array.dtype, tuple(array.shape)) != self.specs[key]:
                return (
                    f"array {key!r} is {array.dtype}{list(array.shape)}, expected "
                    f"{self.specs[key][0]}{list(self.specs[key][1])}"
                )
        return ""

    def load(self, record: ArrayRecord, row: torch.Tensor) -> str:
        """Copy the floating-point arrays of ``record`` into ``row``; say what is wrong.

        Checks on the host what the arrays really hold (their headers were checked by
        :meth:`mismatch`): bytes that do not decode, another dtype or shape, NaN/Inf.
        """
        for entry in self.layout.flat_entries:
            key = entry.key
            dtype, shape = self.specs[key]
            try:
                values = record[key].numpy()
            except (ValueError, TypeError, EOFError) as error:
                return f"array {key!r} cannot be decoded: {error}"
            if values.dtype != np.dtype(dtype) or values.shape != shape:
                return f"array {key!r} holds {values.dtype}{list(values.shape)}, not its header"
            if not np.isfinite(values).all():
                return f"array {key!r} has NaN or Inf values"
            row[entry.span] = torch.from_numpy(values.reshape(-1))
        return ""

    def flatten(self, record: ArrayRecord, device: torch.device) -> torch.Tensor:
        """The floating-point arrays of a server-side ``record`` as one vector."""
        vector = torch.empty(self.size, dtype=self.dtype, device=device)
        problem = self.mismatch(record) or self.load(record, vector)
        if problem:
            raise ValueError(f"server-side model does not fit the global model: {problem}")
        return vector

    def unflatten(self, vector: torch.Tensor, template: ArrayRecord) -> ArrayRecord:
        """An ArrayRecord like ``template`` whose floating-point arrays hold ``vector``."""
        self.layout.check_vector(vector)
        host = vector.to("cpu").numpy()
        out = ArrayRecord()
        for key, array in template.items():
            span = self.layout.entry(key).span
            if span is not None:
                dtype, shape = self.specs[key]
                values = host[span].reshape(shape).astype(dtype)
                out[key] = Array(np.ascontiguousarray(values))
            else:
                out[key] = Array(array.dtype, tuple(array.shape), array.stype, array.data)
        return out


def _client_key(message: Message) -> int:
    """The reply's ``partition-id`` metric if it has one, else its sender's node id."""
    if message.has_content():
        for metrics in message.content.metric_records.values():
            value = metrics.get(CLIENT_KEY_METRIC)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
    return message.metadata.src_node_id


def _parse_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}"
        ) from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} needs CUDA, which this machine does not have")
    return parsed
