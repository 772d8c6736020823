"""The round protocol: what the server loop and the clients say to each other, and what a
round leaves in the run directory.

One module holds every name both sides must agree on, so a producer and its consumer
cannot drift apart:

- the message keys: Flower's records of a train message and its reply (the names
  Flower's ``FedAvg`` uses by default), the identify query, the facts the server tells
  a round's attackers, what an attacker sends beside its update for the server loop's
  adversary stage, and the defense's verdicts as train metrics;
- :class:`AttackerFacts`: the facts the server tells each attacker of a round, as the
  train message's ConfigRecord entries;
- :class:`TrainingSpec`: how a client trains in a round (``fedsec_core.training.train``'s
  settings);
- :class:`RoundRecord`: one round as ``metrics.jsonl`` holds it, which the server loop
  writes and ``summary.json``, reports, the CLI and unlearning read;
- the format versions of ``metrics.jsonl`` and of checkpoints, and the one-line error
  (:class:`FormatError`) a reader gives a file written in a format it does not know.

A core module: the standard library, torch and the other core modules only (no Flower,
no plug-in), so attacks, defenses and the orchestration can all import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from fedsec_core.errors import FedsecError

# --------------------------------------------------------------------- message keys
#: RecordDict key of the model (an ArrayRecord) in a train message and its reply
#: (``FedAvg``'s ``arrayrecord_key``).
ARRAYS = "arrays"
#: RecordDict key of a train message's ConfigRecord (``FedAvg``'s ``configrecord_key``).
CONFIG = "config"
#: RecordDict key of a train reply's MetricRecord.
METRICS = "metrics"
#: ConfigRecord key of the round's number (``FedAvg.configure_train`` writes it).
SERVER_ROUND = "server-round"
#: MetricRecord key of a reply's FedAvg weight (``FedAvg``'s ``weighted_by_key``).
NUM_EXAMPLES = "num-examples"
#: MetricRecord key of a reply's training loss (aggregated into the round's ``train_loss``).
TRAIN_LOSS = "train_loss"
#: A client's partition id: the node config key Flower's simulation (and fedsec's
#: engines) give each node, the identify reply's key, and the MetricRecord key of a
#: train reply that the defense uses as the client's stable key.
PARTITION_ID = "partition-id"
#: The federation's size: node config key, and the identify reply's key.
NUM_PARTITIONS = "num-partitions"
#: The query every node answers with its partition id (message type ``query.identify``).
IDENTIFY = "identify"
#: RecordDict key of the identify reply's ConfigRecord ({PARTITION_ID, NUM_PARTITIONS}).
NODE = "node"

#: ConfigRecord keys of the facts the server tells an attacker (:class:`AttackerFacts`).
ATTACKER_INDEX = "attacker-index"
NUM_ATTACKERS = "num-attackers"
ROUND_EXAMPLES = "round-examples"
ROUND_CLIENTS = "round-clients"
#: The attackers' shared trigger (``a3fl``): in the train message's ConfigRecord, the
#: current one as a flat list of C*H*W floats (:attr:`AttackerFacts.trigger`); in the
#: reply, an ArrayRecord holding the attacker's optimised one under
#: :data:`TRIGGER_ARRAY`, which the adversary stage removes before the defense.
TRIGGER = "attack-trigger"
TRIGGER_ARRAY = "trigger"
#: RecordDict key of the benign model an attacker sends beside its update for the server
#: loop's adversary stage (``attacks.AttackReply``); the stage removes it.
BENIGN_STATE = "benign-state"
#: MetricRecord key of the scale an attacker that scales its own update sent
#: (``attack.evasion = "scaling"``, partial knowledge); the server logs it in the
#: round's ``evasion_scales`` and removes it before the defense.
EVASION_SCALE = "evasion-scale"

#: Batched clients (``fedsec.engines.batching``): the action of a batch message
#: (``train.batch``), its ConfigRecord naming the clients, the clients' partition ids in
#: it (ascending), and the names of each client's records in the batch's reply
#: (:func:`arrays_key`, :func:`metrics_key`).
BATCH_ACTION = "batch"
BATCH = "batch"
PARTITION_IDS = "partition-ids"


def arrays_key(partition_id: int) -> str:
    """The name of client ``partition_id``'s ArrayRecord in a batch reply."""
    return f"{ARRAYS}-{partition_id}"


def metrics_key(partition_id: int) -> str:
    """The name of client ``partition_id``'s MetricRecord in a batch reply."""
    return f"{METRICS}-{partition_id}"


#: Train-metric keys of the defense's verdicts, which ``DefenseStrategy.aggregate_train``
#: adds for Flower's own round loop (``Strategy.start``).
DEFENSE_ACCEPTED = "defense-accepted"
DEFENSE_REJECTED = "defense-rejected"
DEFENSE_REFUSED = "defense-refused"
DEFENSE_SCORED = "defense-scored"
DEFENSE_SCORES = "defense-scores"
#: The clients with a weight ratio and, in the same order, their ratios (the report's
#: ``weight_ratios``: a coefficient over FedAvg's weight; absent where the rule's model
#: is no combination of the clients' models).
DEFENSE_WEIGHTED = "defense-weighted"
DEFENSE_WEIGHT_RATIOS = "defense-weight-ratios"


# ------------------------------------------------------------------ format versions
#: The key of a record's format version in metrics.jsonl and in a checkpoint.
FORMAT_KEY = "format_version"
#: The format ``metrics.jsonl`` is written in, and those this version of fedsec reads.
#: Version 1: one JSON object per round, :class:`RoundRecord`'s keys; records written
#: before the version was recorded have no :data:`FORMAT_KEY` and are version 1.
METRICS_FORMAT = 1
METRICS_FORMATS_READ = (1,)
#: The format of ``checkpoint.pt`` (``fedsec.checkpoint``), and those fedsec reads.
#: Version 1: round, model, strategy, adversary, config; a checkpoint without
#: :data:`FORMAT_KEY` is version 1.
CHECKPOINT_FORMAT = 1
CHECKPOINT_FORMATS_READ = (1,)


class FormatError(FedsecError):
    """A file written in a format this version of fedsec does not read (a newer fedsec
    wrote it). The CLI reports it in one line, exit code 2."""


def format_version(data: Mapping[str, Any], reads: tuple[int, ...], where: str) -> int:
    """The format version ``data`` records (1 when it records none); a
    :class:`FormatError` naming ``where`` (the file), the version found and the versions
    in ``reads`` when this version of fedsec does not read it."""
    found = data.get(FORMAT_KEY, 1)
    if isinstance(found, bool) or found not in reads:
        known = ", ".join(str(v) for v in reads)
        raise FormatError(
            f"{where} has format version {found!r}; this fedsec reads version {known} "
            "(a newer fedsec wrote it: read it with that version)"
        )
    return found


# ------------------------------------------------------------------ attacker facts
@dataclass(frozen=True)
class AttackerFacts:
    """What the server tells one attacker of a round, in its train message's ConfigRecord
    (the server is the simulation's adversary controller: no client recomputes its
    sampling). ``attacks.AttackContext`` takes them as they are.

    attacker_index: its position in the attacker pool (e.g. which DBA trigger part it
    stamps); num_attackers: the pool's size; round_examples: N_round, the examples every
    sampled client trains on, each attacker's poisoned set counted at its size;
    round_clients: the round's size; trigger: the attackers' shared trigger as a flat
    list of C*H*W floats, when the server loop's adversary stage holds one (``a3fl``),
    else None; extra: every other entry, as the ConfigRecord holds it: the facts an
    attack's server stage adds (``fedsec_core.hooks.ServerStage.facts``, which works on the
    ConfigRecord entries, :meth:`to_config`) and, read on the client, the strategy's own
    (``server-round``). The attack reads them all as ``AttackContext.facts``.
    """

    attacker_index: int
    num_attackers: int
    round_examples: int
    round_clients: int
    trigger: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        """The ConfigRecord entries of the facts (the trigger only when there is one)."""
        out: dict[str, Any] = {
            ATTACKER_INDEX: self.attacker_index,
            NUM_ATTACKERS: self.num_attackers,
            ROUND_EXAMPLES: self.round_examples,
            ROUND_CLIENTS: self.round_clients,
        }
        if self.trigger is not None:
            out[TRIGGER] = list(self.trigger)
        out.update(self.extra)
        return out

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> AttackerFacts:
        """The facts in a train message's ConfigRecord (:meth:`to_config`'s entries)."""
        known = (ATTACKER_INDEX, NUM_ATTACKERS, ROUND_EXAMPLES, ROUND_CLIENTS, TRIGGER)
        return cls(
            attacker_index=int(record[ATTACKER_INDEX]),
            num_attackers=int(record[NUM_ATTACKERS]),
            round_examples=int(record[ROUND_EXAMPLES]),
            round_clients=int(record[ROUND_CLIENTS]),
            trigger=[float(v) for v in record[TRIGGER]] if TRIGGER in record else None,
            extra={k: v for k, v in record.items() if k not in known},
        )

    @staticmethod
    def told(record: Mapping[str, Any]) -> bool:
        """Whether a train message's ConfigRecord tells its client it attacks this round."""
        return ATTACKER_INDEX in record


# ------------------------------------------------------------------- training spec
@dataclass(frozen=True)
class TrainingSpec:
    """How one client trains in one round: ``fedsec_core.training.train``'s settings
    (``FederatedTask.training_spec`` derives them from the config, the round and the
    client). ``to_dict()`` is ``train``'s keyword arguments."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    seed: int
    device: torch.device
    max_steps: int = 0  # 0: every epoch in full (``train.max_steps``)

    def to_dict(self) -> dict[str, Any]:
        """The keyword arguments of ``fedsec_core.training.train``, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSpec:
        """A spec from :meth:`to_dict`'s keys (``device`` a torch device or its name)."""
        return cls(
            epochs=int(data["epochs"]),
            batch_size=int(data["batch_size"]),
            lr=float(data["lr"]),
            momentum=float(data["momentum"]),
            weight_decay=float(data["weight_decay"]),
            seed=int(data["seed"]),
            device=torch.device(data["device"]),
            max_steps=int(data.get("max_steps", 0)),
        )


# -------------------------------------------------------------------- round record
class _Absent:
    """The value of a :class:`RoundRecord` field that is not in the record (where None,
    written as JSON null, is a value the record can hold)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "ABSENT"


#: See :class:`_Absent`: ``RoundRecord.train_loss`` of a record without the key.
ABSENT: Any = _Absent()

#: Tables keyed by client (partition id): ints in a :class:`RoundRecord`, the strings
#: JSON needs in metrics.jsonl.
_CLIENT_TABLES = (
    "failed_reasons",
    "evasion_scales",
    "scores",
    "weight_ratios",
    "invalid_clients",
)


@dataclass
class RoundRecord:
    """One round of a run: a line of ``metrics.jsonl`` (:meth:`to_dict` / :meth:`from_dict`).

    The fields in the order the line holds them; a field left at its default (None,
    ``{}``, :data:`ABSENT` for ``train_loss``) is not in the line, any other value is,
    an empty list included. The README's run-directory table says what each means.

    - ``round``; central evaluation: ``main_accuracy``, ``test_loss``,
      ``backdoor_accuracy`` (with an attack that has a backdoor test set);
    - the round's clients: ``clients`` (sampled), ``failed_clients``,
      ``failed_reasons`` ({client: error reason});
    - what the adversary stage did: ``crafted_clients``, ``evasion_scales``
      ({attacker: scale}), ``collusion_note``, and ``stage_log``, the entries the stage
      adds (``a3fl``'s ``trigger_from``). Scales the attackers reported themselves
      (partial knowledge) were logged before the stage ran, so ``evasion_scales``
      precedes ``crafted_clients`` when the stage crafted no reply, follows it otherwise;
    - the aggregation: ``train_loss`` (None: no reply had one), ``skipped`` (too few
      replies), ``accepted_clients``, ``rejected_clients``, ``scores`` ({client:
      score}), ``weight_ratios`` ({client: its coefficient in the new model over
      FedAvg's ``n_i / sum n``}, for rules whose model is such a combination),
      ``invalid_clients`` ({client: why refused}), ``kept_previous_model`` and
      ``kept_previous_reason``;
    - the ground truth: ``malicious_clients`` and the detection counts;
    - ``final``: what a post-training step adds to the last round (``crfl``'s
      ``smoothed_accuracy``, ``certified_accuracy``, ``certification``);
    - ``time_s``: wall time since the run started.

    Tables keyed by client hold int keys here and string keys in JSON. A key this
    version of fedsec does not know (a record of an older one) is kept: in
    ``stage_log`` when it comes before ``train_loss``, else in ``final``.
    """

    round: int
    main_accuracy: float | None = None
    test_loss: float | None = None
    backdoor_accuracy: float | None = None
    clients: list[int] | None = None
    failed_clients: list[int] | None = None
    failed_reasons: dict[int, str] | None = None
    crafted_clients: list[int] | None = None
    evasion_scales: dict[int, float] | None = None
    collusion_note: str | None = None
    stage_log: dict[str, Any] = field(default_factory=dict)
    train_loss: float | None = ABSENT
    skipped: bool | None = None
    accepted_clients: list[int] | None = None
    rejected_clients: list[int] | None = None
    scores: dict[int, float] | None = None
    weight_ratios: dict[int, float] | None = None
    invalid_clients: dict[int, str] | None = None
    kept_previous_model: bool | None = None
    kept_previous_reason: str | None = None
    malicious_clients: list[int] | None = None
    true_positives: int | None = None
    false_positives: int | None = None
    false_negatives: int | None = None
    true_negatives: int | None = None
    final: dict[str, Any] = field(default_factory=dict)
    time_s: float | None = None

    def to_dict(self, version: bool = True) -> dict[str, Any]:
        """The record as its ``metrics.jsonl`` line holds it, ending with the format
        version (:data:`METRICS_FORMAT`) unless ``version`` is False."""
        out: dict[str, Any] = {}
        scales_first = not self.crafted_clients  # the attackers' own scales (see above)
        for f in fields(self):
            name = f.name
            if name == "crafted_clients" and scales_first:
                self._put(out, "evasion_scales")
            if name == "evasion_scales" and scales_first:
                continue
            if name in ("stage_log", "final"):
                out.update(getattr(self, name))
                continue
            self._put(out, name)
        if version:
            out[FORMAT_KEY] = METRICS_FORMAT
        return out

    def _put(self, out: dict[str, Any], name: str) -> None:
        value = getattr(self, name)
        if value is None or value is ABSENT:
            if name == "train_loss" and value is None:
                out[name] = None  # logged: the round had no loss
            return
        if name in _CLIENT_TABLES:
            value = {str(k): v for k, v in value.items()}
        out[name] = value

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "a round record") -> RoundRecord:
        """The record of a ``metrics.jsonl`` line (its JSON object); a
        :class:`FormatError` naming ``where`` when its format version is not one this
        fedsec reads (:data:`METRICS_FORMATS_READ`; no version: 1), or when it has no
        ``round``."""
        format_version(data, METRICS_FORMATS_READ, where)
        if "round" not in data:
            raise FormatError(f"{where} is not a round record: it has no 'round'")
        order = [f.name for f in fields(cls)]
        training = order.index("train_loss")
        known = {name: i for i, name in enumerate(order) if name not in ("stage_log", "final")}
        values: dict[str, Any] = {"stage_log": {}, "final": {}}
        after_training = False
        for key, value in data.items():
            if key == FORMAT_KEY:
                continue
            if key in known:
                if key in _CLIENT_TABLES and value is not None:
                    value = {int(k): v for k, v in value.items()}
                values[key] = value
                after_training = after_training or known[key] >= training
            else:
                values["final" if after_training else "stage_log"][key] = value
        return cls(**values)
