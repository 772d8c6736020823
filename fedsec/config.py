"""Experiment configuration: one TOML file, typed sections, validated in one place.

An experiment file looks like::

    seed = 0
    [data]
    name = "mnist5k"
    partition = "dirichlet"
    alpha = 0.5
    num_clients = 20
    [model]
    name = "lenet"
    [train]
    rounds = 20
    clients_per_round = 10
    [engine]
    name = "inprocess"

Every key has a default (the dataclasses below), so a file names only what it changes.
A key's valid values are declared beside its default with ``fedsec_core.params.param`` and a
constraint of ``fedsec_core.schema`` (the pattern of the attacks' and rules' parameters), and
judged once, by :meth:`ExperimentConfig.validate`. ``[attack]`` and ``[defense]`` hold a
``name`` plus that method's own parameters, which the attack and defense registries
check. ``[log]`` turns on experiment trackers (fedsec/tracking.py); they change no
number of the run.

The same config travels to Flower apps as a flat run config (``"data.alpha": 0.5``):
:meth:`ExperimentConfig.to_flat` and :meth:`ExperimentConfig.from_flat` convert, so an
experiment file means the same thing on every engine.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec_core.errors import ConfigError
from fedsec_core.params import check_parameters, param, parameter_fields
from fedsec_core.schema import FINITE, InstanceOf, Interval, Options, typename
from fedsec_core.sgd import SGD

SCHEDULE_NAMES = ("fixed-frequency", "every-round", "random-pool")
DEVICE_NAMES = ("cpu", "cuda", "auto")
BATCH_CLIENTS = ("auto", "true", "false")
SERVER_OPTIMIZERS = ("sgd", "adam")  # fedsec/server/optimizer.py

MAX_LR = 10.0
"""The largest client learning rate: SGD at a larger one diverges on every model here."""
_LOG_MAX_LR = math.log(MAX_LR)

COUNT = Interval(int, 1, None, closed="left")  # >= 1
NON_NEGATIVE_INT = Interval(int, 0, None, closed="left")  # >= 0
POSITIVE = Interval(float, 0, None)  # > 0, finite
NON_NEGATIVE = Interval(float, 0, None, closed="left")  # >= 0, finite


# The registries import this module, so their names are read when a value is checked.
def _dataset_names() -> tuple[str, ...]:
    from fedsec_core.data import dataset_names

    return tuple(dataset_names())


def _partition_schemes() -> tuple[str, ...]:
    from fedsec.partition import PARTITION_SCHEMES

    return PARTITION_SCHEMES


def _model_names() -> tuple[str, ...]:
    from fedsec.models import MODELS

    return tuple(MODELS.names())


def _engine_names() -> tuple[str, ...]:
    from fedsec.engines import ENGINES

    return tuple(ENGINES.names())


def _wandb_modes() -> tuple[str, ...]:
    from fedsec.tracking import WANDB_MODES

    return WANDB_MODES


@dataclass
class DataConfig:
    """Which data set, and how its training split is divided among clients."""

    name: str = param("mnist5k", Options(_dataset_names))
    dir: str = ""  # "" = the data set's default location (if it reads files)
    partition: str = param("dirichlet", Options(_partition_schemes))
    # Dirichlet concentration: the non-IID degree (lower = more skew)
    alpha: float = param(0.5, POSITIVE)
    classes_per_client: int = param(2, COUNT)  # for partition = "pathological"
    num_clients: int = param(20, COUNT)
    min_partition_size: int = param(10, COUNT)
    # Seed of the federation itself: the partition, the attacker pool and the attack's
    # edits of the data set. -1 = the experiment seed. Fixing it while varying ``seed``
    # trains many models on the same clients (datamodels, KLoM; see fedsec/unlearning).
    partition_seed: int = param(-1, Interval(int, -1, None, closed="left"))


@dataclass
class ModelConfig:
    name: str = param("lenet", Options(_model_names))


@dataclass
class TrainConfig:
    """Federated and local training (the papers' SGD setup by default)."""

    rounds: int = param(20, COUNT)
    clients_per_round: int = param(10, COUNT)
    local_epochs: int = param(2, SGD["epochs"])
    batch_size: int = param(32, SGD["batch_size"])
    # 0: a client trains every local epoch in full; k >= 1: it stops after k minibatch
    # steps (FedSGD: local_epochs = 1, max_steps = 1 sends one minibatch's step)
    max_steps: int = param(0, SGD["max_steps"])
    lr: float = param(0.05, SGD["lr"] & Interval(float, None, MAX_LR, closed="right"))
    # client lr in round r is lr * lr_decay ** (r - 1)
    lr_decay: float = param(0.998, POSITIVE)
    momentum: float = param(0.9, SGD["momentum"])
    weight_decay: float = param(1e-4, SGD["weight_decay"])
    # > 0: start from a model trained centrally for E epochs
    pretrain_epochs: int = param(0, NON_NEGATIVE_INT)
    pretrain_cache: str = ""  # "" = ~/.cache/fedsec/pretrained (or $FEDSEC_CACHE)
    # fewer valid replies than this: the round keeps the old model
    min_replies: int = param(1, COUNT)
    # The server's step on the round's aggregate (fedsec/server/optimizer.py). "sgd",
    # FedAvgM: v <- server_momentum * v + (aggregate - w); w <- w + server_lr * v; the
    # defaults (1, 0) make the new model the aggregate itself. "adam": Adam at lr
    # server_lr on (w - aggregate), as the NDSS'21 authors' FedSGD server (their lr
    # 0.001); server_momentum must stay 0 (Adam's betas are fixed at 0.9, 0.999).
    server_optimizer: str = param("sgd", Options(SERVER_OPTIMIZERS))
    server_lr: float = param(1.0, POSITIVE)
    server_momentum: float = param(0.0, Interval(float, 0, 1, closed="left"))
    # Comma-separated partition ids that never train (e.g. "3,7"): the federation
    # without them, as retraining for unlearning needs. Rounds sample from the remaining
    # clients; when clients_per_round exceeds their number, every remaining client trains.
    # A string, not a list, because Flower run configs hold scalars only.
    exclude_clients: str = ""

    def excluded(self) -> tuple[int, ...]:
        """The partition ids of ``exclude_clients``, sorted (ConfigError if malformed)."""
        return parse_client_ids(self.exclude_clients, "train.exclude_clients")

    def round_size(self, num_clients: int) -> int:
        """Clients that train per round: ``clients_per_round``, capped by the non-excluded."""
        return min(self.clients_per_round, num_clients - len(self.excluded()))


@dataclass
class EngineConfig:
    """How the apps run: in one process, or on Flower's simulation engine (Ray).

    ``client_num_cpus`` is both the torch thread count of each client's training and
    the CPUs Ray reserves per client. Float results depend on the thread count, so
    identical metrics across engines need the same value on both.
    """

    name: str = param("inprocess", Options(_engine_names))
    client_num_cpus: int = param(
        2,
        (
            Interval(int, 1, None, closed="left") & Interval(int, None, 1024, closed="right")
        ).explained("threads per client"),
    )
    client_num_gpus: float = param(0.0, NON_NEGATIVE)
    # where training and aggregation run: cpu, cuda or auto
    device: str = param("cpu", Options(DEVICE_NAMES))
    # seconds the server waits for a round's replies
    round_timeout: float = param(3600.0, POSITIVE)
    # seconds to wait for every client to connect and answer
    connect_timeout: float = param(600.0, POSITIVE)
    # rounds between checkpoints (0: none); see --resume
    checkpoint_every: int = param(1, NON_NEGATIVE_INT)
    # train a round's honest clients together (fedsec.batched): auto (on CUDA), true, false
    batch_clients: str = param("auto", Options(BATCH_CLIENTS))


@dataclass
class AttackConfig:
    """Which clients are malicious, in which rounds; what they do is the attack's own.

    The attacker pool is ``num_attackers`` partition ids (or ``fraction`` of all clients,
    when > 0) drawn from the seed. Schedules:

    - ``fixed-frequency``: ``attackers_per_round`` pool members join rounds
      ``start_round``, ``start_round + every``, ... (the papers' "one attacker every 10
      rounds"); the pool sits out every other round.
    - ``every-round``: as fixed-frequency with ``every = 1``.
    - ``random-pool``: attackers are sampled like everyone else and attack whenever
      they are sampled between ``start_round`` and ``end_round``.

    A pool member that trains outside ``start_round..end_round`` trains honestly. The
    declared keys are judged only when there is an attack (without one they mean
    nothing); ``name`` and the attack's own parameters are the attack registry's.
    """

    name: str = "none"
    num_attackers: int = 1
    fraction: float = param(0.0, Interval(float, 0, 1, closed="both"))
    schedule: str = param("fixed-frequency", Options(SCHEDULE_NAMES))
    every: int = param(10, COUNT)
    attackers_per_round: int = 1
    start_round: int = param(1, COUNT)
    end_round: int = param(0, NON_NEGATIVE_INT)  # 0 = the last round
    target_label: int = -1  # -1 = the attack's own default (ARDIS 7 -> 1, Southwest -> 9)
    params: dict[str, Any] = field(default_factory=dict)

    def pool_size(self, num_clients: int) -> int:
        if self.fraction > 0:
            return max(1, round(self.fraction * num_clients))
        return self.num_attackers

    def last_round(self, rounds: int) -> int:
        return self.end_round or rounds


@dataclass
class DefenseConfig:
    """The server's aggregation strategy; ``params`` are the defense's own (defenses/).

    A key the ``[defense]`` table held before it became one rule's parameter
    (``defenses.FORMER_KEYS``) reads as that rule's parameter (``defenses.current_params``),
    so that every config.toml written before still reads as the same experiment.
    """

    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LogConfig:
    """Experiment trackers that get every round's metrics besides metrics.jsonl (all off
    by default; see fedsec/tracking.py). TensorBoard and W&B need ``pip install -e
    ".[track]"``; their files go into the run directory."""

    csv: bool = False  # RUN_DIR/metrics.csv, one row per round
    tensorboard: bool = False  # RUN_DIR/tensorboard/
    # "off", "offline" (no network; RUN_DIR/wandb/) or "online"
    wandb: str = param("off", Options(_wandb_modes))


@dataclass
class ExperimentConfig:
    seed: int = param(0, NON_NEGATIVE_INT)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def federation_seed(self) -> int:
        """The seed of the partition and attacker pool (``data.partition_seed`` or ``seed``)."""
        return self.seed if self.data.partition_seed < 0 else self.data.partition_seed

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """Build from a nested dict (a parsed TOML file); checks keys and types."""
        if not isinstance(raw, dict):
            raise ConfigError("config must be a TOML table of sections")
        cfg = cls()
        for key, value in raw.items():
            if key == "seed":
                cfg.seed = _coerce("seed", value, int)
            elif key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"[{key}] must be a table, got {typename(value)}")
                _fill_section(key, getattr(cfg, key), value)
            else:
                raise ConfigError(
                    f"unknown config key {key!r}; valid top-level keys: seed, "
                    + ", ".join(f"[{s}]" for s in _SECTIONS)
                )
        from defenses import current_params  # no Flower: the registry and the rules

        cfg.defense.params = current_params(cfg.defense.name, cfg.defense.params)
        return cfg

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_flat` (Flower run configs are flat)."""
        nested: dict[str, Any] = {}
        for key, value in flat.items():
            if key.startswith("output."):
                continue  # where results go is not part of the experiment
            section, _, name = key.partition(".")
            if name:
                nested.setdefault(section, {})[name] = value
            else:
                nested[section] = value
        return cls.from_dict(nested)

    def to_dict(self) -> dict[str, Any]:
        """Nested dict with attack/defense parameters inlined (TOML-ready)."""
        out: dict[str, Any] = {"seed": self.seed}
        for section in _SECTIONS:
            sec = getattr(self, section)
            values = {f.name: getattr(sec, f.name) for f in dataclasses.fields(sec)}
            params = values.pop("params", {})
            out[section] = {**values, **params}
        return out

    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {"seed": self.seed}
        for section, values in self.to_dict().items():
            if isinstance(values, dict):
                flat.update({f"{section}.{k}": v for k, v in values.items()})
        return flat

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def with_overrides(self, assignments: list[str]) -> ExperimentConfig:
        """Apply ``section.key=value`` strings (values parsed as TOML, else text)."""
        raw = self.to_dict()
        for item in assignments:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"--set expects section.key=value, got {item!r}")
            value = _parse_value(text.strip())
            section, _, name = key.partition(".")
            if not name:
                if section != "seed":
                    raise ConfigError(f"--set {item!r}: expected section.key=value (or seed=N)")
                raw["seed"] = value
            elif section not in _SECTIONS:
                raise ConfigError(
                    f"--set {item!r}: unknown section {section!r}; valid sections: "
                    + ", ".join(_SECTIONS)
                )
            else:
                raw[section][name] = value
        return ExperimentConfig.from_dict(raw)

    # ---------------------------------------------------------------- validation
    def validate(self) -> ExperimentConfig:
        """Check every value and every name against its registry; raise ConfigError.

        This is the one place where a config is judged; it is cheap (no data is
        loaded beyond checking that required files exist) so the CLI calls it before
        any training starts. Each key's own constraint first (:meth:`_check_values`),
        then the checks that relate keys.
        """
        # the registries import this module, so they are imported here
        from fedsec_core import data as data_registry

        d, t, e = self.data, self.train, self.engine
        self._check_values()
        if t.min_replies > t.clients_per_round:
            raise ConfigError(
                f"train.min_replies ({t.min_replies}) must be <= train.clients_per_round "
                f"({t.clients_per_round})"
            )
        if t.server_optimizer == "adam" and t.server_momentum != 0:
            raise ConfigError(
                f"train.server_momentum = {t.server_momentum} applies to server_optimizer = "
                "'sgd' only; with 'adam' leave it 0 (Adam's betas are 0.9, 0.999)"
            )
        if t.lr_decay > 1 and math.log(t.lr) + (t.rounds - 1) * math.log(t.lr_decay) > _LOG_MAX_LR:
            raise ConfigError(
                f"train.lr_decay = {t.lr_decay} grows the client lr past {MAX_LR:g} by round "
                f"{t.rounds} (lr * lr_decay ** (round - 1)); use lr_decay <= 1 or fewer rounds"
            )
        if t.clients_per_round > d.num_clients:
            raise ConfigError(
                f"train.clients_per_round ({t.clients_per_round}) must be <= "
                f"data.num_clients ({d.num_clients})"
            )
        excluded = t.excluded()
        bad = [c for c in excluded if c >= d.num_clients]
        if bad:
            raise ConfigError(
                f"train.exclude_clients: unknown client id {bad[0]}; ids are 0..{d.num_clients - 1}"
            )
        if len(excluded) >= d.num_clients:
            raise ConfigError("train.exclude_clients names every client; at least one must train")
        if t.min_replies > t.round_size(d.num_clients):
            raise ConfigError(
                f"train.min_replies ({t.min_replies}) exceeds the {t.round_size(d.num_clients)} "
                "clients a round can have without train.exclude_clients"
            )
        if e.batch_clients == "true":
            from fedsec.batched import BATCHING_ENGINES, model_problem

            if e.name not in BATCHING_ENGINES:
                raise ConfigError(
                    "engine.batch_clients = true needs a simulation engine, 'inprocess' or "
                    f"'flower' (each node of the {e.name} engine holds only its own data); "
                    "use auto or false"
                )
            problem = model_problem(self.model.name)
            if problem:
                raise ConfigError(f"engine.batch_clients = true: {problem}; use auto or false")
        _validate_log(self.log)
        data_registry.check_available(d.name, d.dir or None)
        self._validate_attack_schedule()
        self.check_rounds()  # builds the defense, so it also checks its parameters
        _validate_attack(self)
        return self

    def check_device(self) -> None:
        """ConfigError if ``engine.device`` is not on this machine (``cuda`` where torch
        sees no GPU; ``auto`` falls back to the CPU). Not part of :meth:`validate`: a
        GPU experiment stays a valid config on a machine without one (a sweep prepared
        there, its tests); ``fedsec run`` (``--check`` too) and ``fedsec sweep`` call it
        before any training instead of failing at the first round."""
        from fedsec.task import resolve_device

        resolve_device(self.engine.device)

    def _check_values(self) -> None:
        """Every declared key against its own constraint (its ``param`` above), once, in
        declaration order, with the constraint's one-line error; every other float of
        the experiment (attack and defense parameters included) must be finite. The
        attack's schedule keys are judged only when there is an attack; the attack's
        and the defense's own parameters by their declarations (attacks/, defenses/)."""
        check_parameters(self, str)
        for name in _SECTIONS:
            section = getattr(self, name)
            judged = name != "attack" or section.name != "none"
            if judged:
                check_parameters(section, lambda key, name=name: f"{name}.{key}")
            declared = {f.name for f in parameter_fields(section)} if judged else set()
            rest = {
                f.name: getattr(section, f.name)
                for f in dataclasses.fields(section)
                if f.name not in declared and f.name != "params"
            }
            for key, value in {**rest, **getattr(section, "params", {})}.items():
                if isinstance(value, float):
                    FINITE.check(f"{name}.{key}", value)

    def _validate_attack_schedule(self) -> None:
        a, n = self.attack, self.data.num_clients
        if a.name == "none":
            return
        pool = a.pool_size(n)
        if not 1 <= pool <= n:
            raise ConfigError(
                f"attack.num_attackers must be between 1 and data.num_clients ({n}), got {pool}"
            )
        if a.end_round and a.start_round > a.end_round:
            raise ConfigError(
                f"attack.start_round ({a.start_round}) is after attack.end_round "
                f"({a.end_round}): the attack window is empty; set end_round >= start_round "
                "(0 = the last round)"
            )
        if a.end_round and a.start_round > self.train.rounds:
            raise ConfigError(
                f"the attack window, rounds {a.start_round}..{a.end_round}, lies after the last "
                f"round (train.rounds = {self.train.rounds}): no round is attacked; move "
                "attack.start_round into the rounds"
            )
        if a.schedule != "random-pool":
            per_round = a.attackers_per_round
            if not 1 <= per_round <= min(pool, self.train.clients_per_round):
                raise ConfigError(
                    f"attack.attackers_per_round must be between 1 and min(attacker pool "
                    f"{pool}, train.clients_per_round {self.train.clients_per_round}), "
                    f"got {per_round}"
                )

    def check_rounds(self) -> list[str]:
        """Check that every round can be filled and that the defense can aggregate it.

        Looks at every shape of round the schedule makes (its clients and attackers, at
        the first round of each: ``AttackSchedule.round_shapes``, in time independent of
        ``train.rounds``): a round that cannot have
        ``train.clients_per_round`` clients is an error (with ``train.exclude_clients``,
        rounds of the remaining clients may be smaller, as documented there), and a
        round shape the defense cannot aggregate (Krum with
        ``n < 2f + 3``, ...) would keep the initial model all run. Raises
        ``ConfigError`` naming the round and the limit; returns the defense's caveats
        (what its parameters assume that some round breaks; it still aggregates).
        """
        from defenses import build_rule  # the rule alone: no Flower import for --check
        from fedsec_core.sampling import AttackSchedule

        schedule = AttackSchedule.for_config(self)
        expected = self.train.round_size(self.data.num_clients)
        shapes = schedule.round_shapes()  # (clients, attackers) -> first such round
        for (clients, _), server_round in sorted(shapes.items(), key=lambda s: s[1]):
            if clients < expected and not self.train.excluded():
                a = self.attack
                raise ConfigError(
                    f"round {server_round} can have only {clients} clients, not "
                    f"train.clients_per_round = {self.train.clients_per_round}: in rounds "
                    f"without an attack the {a.pool_size(self.data.num_clients)} attacker-pool "
                    f"client(s) sit out (attack.schedule = {a.schedule!r}); lower "
                    f"train.clients_per_round to {clients} or attack.num_attackers, or "
                    'use attack.schedule = "random-pool"'
                )
        rule = build_rule(self.defense.name, self.defense.params, seed=self.seed)
        caveats = []
        a = self.attack
        if schedule.enabled and a.start_round > self.train.rounds:  # end_round = 0 here
            caveats.append(
                f"attack.start_round = {a.start_round} is after the last round (train.rounds "
                f"= {self.train.rounds}): no round is attacked (a no-attack baseline)"
            )
        for (clients, attackers), server_round in sorted(shapes.items(), key=lambda s: s[1]):
            problem = rule.round_problem(clients, attackers)
            if problem:
                raise ConfigError(
                    f"defense {self.defense.name!r} cannot aggregate round "
                    f"{server_round}: it {problem}"
                )
            caveat = rule.round_caveat(clients, attackers)
            if caveat and caveat not in caveats:
                caveats.append(caveat)
        return caveats


# ---------------------------------------------------------------------- loading
def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Read an experiment file (or the defaults), apply overrides and validate."""
    if path is None:
        cfg = ExperimentConfig()
    else:
        cfg = ExperimentConfig.from_dict(read_toml(path))
    if overrides:
        cfg = cfg.with_overrides(overrides)
    return cfg.validate()


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid TOML: not UTF-8 text") from None


def dumps_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of scalars as TOML (top-level scalars first)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def parse_client_ids(text: str, key: str = "clients") -> tuple[int, ...]:
    """Sorted distinct partition ids from ``"3,7"`` (``""`` = none); ConfigError if malformed."""
    ids = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ConfigError(f"{key}: {part!r} is not a client id (expected ids like 3,7)")
        ids.add(int(part))
    return tuple(sorted(ids))


# ---------------------------------------------------------------------- helpers
_SECTIONS = ("data", "model", "train", "engine", "attack", "defense", "log")


def _fill_section(name: str, section: Any, values: dict[str, Any]) -> None:
    fields = {f.name: f for f in dataclasses.fields(section) if f.name != "params"}
    has_params = any(f.name == "params" for f in dataclasses.fields(section))
    for key, value in values.items():
        if key in fields:
            setattr(section, key, _coerce(f"{name}.{key}", value, _field_type(fields[key])))
        elif has_params:
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{name}.{key} must be a single value, got {typename(value)}")
            section.params[key] = value
        else:
            raise ConfigError(
                f"unknown key {name}.{key}; valid keys in [{name}]: " + ", ".join(fields)
            )


def _field_type(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Accept a value of the field's type (an int where a float is expected); the type
    is the one check made while loading (its error from ``fedsec_core.schema.InstanceOf``)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key == "train.exclude_clients" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # --set train.exclude_clients=3 parses as an integer
    if key == "engine.batch_clients" and isinstance(value, bool):
        return "true" if value else "false"  # batch_clients = true is a TOML boolean
    return InstanceOf(kind).check(key, value)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word such as digits or dirichlet is a string


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise ConfigError(f"cannot write {value!r} to TOML")


def _validate_log(log: LogConfig) -> None:
    from fedsec.tracking import check_trackers

    check_trackers(log)


def _validate_attack(cfg: ExperimentConfig) -> None:
    from attacks import build_attack

    build_attack(cfg)
