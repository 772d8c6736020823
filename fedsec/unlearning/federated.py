"""Unlearning clients from a federation's global model (DMM, OM and baselines).

The datamodel's inputs are every client's examples as it trains on them (the training
split, then the poisoned examples attackers train on that are not in their partitions:
triggered inputs, edge cases, flipped labels), then the test split, so one artifact
serves every later request, whatever the forget set (a real server would evaluate its
subset models on a forget client's data when the client hands it over). A request's
matching set is the server's reference set (a seeded sample of the retained clients'
clean training examples, by default 3x the forget clients' example count, the paper's
retain sample), plus the forget clients' own data, as they trained on it, only when
they cooperate (a detected attacker does not: without its triggered inputs, DMM
corrects the model on clean inputs only). Methods (Georgiev et al. 2024,
"Attribute-to-Delete: Machine Unlearning via Datamodel Matching"):

- ``dmm``: match f(x; theta) - sum_{i in F} B[i, x, :] on the matching set;
- ``om``: match the mean logits of ``om_oracles`` models retrained without F (the upper
  bound: it pays for the retraining it avoids);
- ``retrain``: the oracle, the federation retrained from scratch without F (same seed);
- ``finetune``: cross-entropy on the reference set; ``gradient-ascent``: ascend the
  cross-entropy of the forget data (needs cooperating clients); ``none``: do nothing.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsec.config import ExperimentConfig, load_config, parse_client_ids
from fedsec.results import CONFIG_FILE, METRICS_FILE, MODEL_FILE, read_metrics
from fedsec.unlearning import DEFAULT_OM_ORACLES, METHODS
from fedsec.unlearning.artifact import (
    DatamodelArtifact,
    config_hash,
    load_artifact,
    tensor_hash,
)
from fedsec.unlearning.datamodel import Datamodel, predicted_oracle
from fedsec.unlearning.matching import (
    MatchingConfig,
    MatchingReport,
    finetune_retain,
    gradient_ascent,
    match_logits,
)
from fedsec.unlearning.subsets import (
    FederatedSubsetTrainer,
    default_workers,
    federation_variant,
    run_parallel,
    train_datamodel,
    train_federation,
)
from fedsec_core.errors import ConfigError, FedsecError
from fedsec_core.seeding import derive_seed, rng
from fedsec_core.training import evaluate, predict_logits

DATAMODEL_FILE = "datamodel.pt"
UNLEARN_DIR = "unlearning"
DEFAULT_SUBSETS = 100
DEFAULT_Q = 0.9
DEFAULT_FLAG_LEVEL = 0.05
OUTLIER_Z = 3.5  # modified z-score cut-off for --flagged (Iglewicz & Hoaglin 1993)


# ------------------------------------------------------------------ the federation
@dataclass
class Federation:
    """A config's federation as unlearning sees it: inputs = the clients' examples (the
    training split, then the attackers' poisoned examples), then the test split."""

    config: ExperimentConfig
    task: Any
    inputs: torch.Tensor
    labels: torch.Tensor
    n_train: int  # rows before the test split
    owner: np.ndarray  # client id of every row before the test split (-1: nobody's)
    n_split: int  # rows of the training split (clean); attackers' poisoned examples follow

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> Federation:
        from fedsec.task import get_task

        task = get_task(config)
        (xt, yt), (xs, ys) = task.train_data(), task.test_data()
        owner = np.full(len(yt), -1, dtype=np.int64)
        for pid, idx in enumerate(task.partitions):
            owner[idx] = pid
        inputs, labels, owners = [xt], [yt], [owner]
        for pid in task.schedule.pool if task.attack is not None and task.schedule.enabled else ():
            x, y = poisoned_examples(task, pid)
            inputs.append(x)
            labels.append(y)
            owners.append(np.full(len(y), pid, dtype=np.int64))
        owner = np.concatenate(owners)
        return cls(
            config,
            task,
            torch.cat([*inputs, xs]),
            torch.cat([*labels, ys]),
            len(owner),
            owner,
            len(yt),
        )

    @property
    def num_clients(self) -> int:
        return self.config.data.num_clients

    def client_rows(self, clients) -> np.ndarray:
        return np.flatnonzero(np.isin(self.owner, list(clients)))

    def retained_rows(self, forget) -> np.ndarray:
        return np.flatnonzero((self.owner >= 0) & ~np.isin(self.owner, list(forget)))

    def test_rows(self) -> np.ndarray:
        return np.arange(self.n_train, len(self.labels))

    def new_model(self) -> torch.nn.Module:
        return self.task.new_model()

    def model_from(self, state: dict) -> torch.nn.Module:
        model = self.new_model()
        model.load_state_dict(state)
        return model

    def backdoor_set(self):
        attack = self.task.attack
        return attack.backdoor_test_set(self.task.dataset) if attack is not None else None


def poisoned_examples(task, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples attacker ``partition_id`` trains on that its partition does not hold
    (same input and label): what a cooperating attacker would hand over beyond its clean data."""
    x, y = task.attack.attacker_data(task.pool_context(partition_id))
    own_x, own_y = task.client_data(partition_id)
    own = {(a.numpy().tobytes(), int(b)) for a, b in zip(own_x, own_y, strict=True)}
    new = [
        i
        for i, (a, b) in enumerate(zip(x, y, strict=True))
        if (a.numpy().tobytes(), int(b)) not in own
    ]
    keep = torch.tensor(new, dtype=torch.int64)
    return x[keep].to(own_x.dtype), y[keep].to(own_y.dtype)


def check_forget_set(clients, num_clients: int) -> tuple[int, ...]:
    """The forget set as sorted ids: ConfigError if empty, unknown ids or every client."""
    ids = (
        parse_client_ids(clients, "--clients")
        if isinstance(clients, str)
        else tuple(sorted(set(clients)))
    )
    if not ids:
        raise ConfigError("the forget set is empty: name at least one client (--clients 3,7)")
    bad = [c for c in ids if not 0 <= c < num_clients]
    if bad:
        raise ConfigError(
            f"unknown client id {bad[0]}: the federation has clients 0..{num_clients - 1}"
        )
    if len(ids) >= num_clients:
        raise ConfigError("the forget set is every client: nothing would remain to learn from")
    return ids


@dataclass
class Flagging:
    """Which clients a run's defense rejected significantly more often than its base rate.

    A defense that keeps a quota (Multi-metrics keeps 3 of 10 clients a round, Krum 1)
    rejects most clients in most rounds by design, so a share of rejected rounds says
    nothing. Instead: the base rejection rate ``p0`` = rejected client-rounds / judged
    client-rounds over the run (judged: in ``accepted_clients`` or ``rejected_clients``);
    a client rejected in ``k`` of its ``n`` judged rounds gets the one-sided binomial
    p-value P(X >= k | n, p0), and is flagged when it is below ``level`` divided by the
    number of clients judged at least once (Bonferroni: with honest clients only, the
    chance that anyone is flagged is at most ``level``), *and* its rejection rate
    ``k / n`` is an outlier among the clients' rates: modified z-score
    ``0.6745 (rate - median) / MAD > 3.5`` (Iglewicz & Hoaglin's cut-off; with MAD = 0,
    any rate above the median).

    Why both: a selection defense does not reject honest clients at random. It ranks
    them, so a consistently atypical honest client (its data, its size) is rejected in
    nearly every round, and in a real Multi-metrics run of honest clients only several
    are rejected in every round: each alone is significant against ``p0``, yet they are
    many and the others are spread out, so none stands out from the clients' rates. A
    client is flagged only when it is rejected more than the base rate explains *and*
    more than the other clients are. No rule on verdicts can tell an honest client that
    the defense always rejects from an attacker it always rejects: a flag is the
    defense's judgement, not proof.
    """

    level: float
    rejected_total: int
    judged_total: int
    rejected: dict[int, int]  # client -> rounds it was rejected in
    judged: dict[int, int]  # client -> rounds it was judged in
    p_values: dict[int, float]

    @property
    def base_rate(self) -> float:
        return self.rejected_total / self.judged_total

    @property
    def threshold(self) -> float:
        return self.level / len(self.judged)

    @property
    def clients(self) -> tuple[int, ...]:
        return tuple(
            sorted(
                c for c, p in self.p_values.items() if p < self.threshold and self.rate_outlier(c)
            )
        )

    def rate(self, client: int) -> float:
        return self.rejected[client] / self.judged[client]

    def rate_outlier(self, client: int) -> bool:
        """Whether ``client``'s rejection rate stands out from the clients' rates."""
        rates = np.array([self.rate(c) for c in sorted(self.judged)])
        median = float(np.median(rates))
        mad = float(np.median(np.abs(rates - median)))
        if mad == 0:
            return self.rate(client) > median
        return 0.6745 * (self.rate(client) - median) / mad > OUTLIER_Z

    def rule(self) -> str:
        """The test and its numbers, in words."""
        return (
            f"base rejection rate p0 = {self.rejected_total}/{self.judged_total} = "
            f"{self.base_rate:.3f}; a client is flagged when P(X >= k | n, p0) < "
            f"{self.level:g} / {len(self.judged)} clients = {self.threshold:.3g} and its "
            f"rejection rate is an outlier among the clients' (modified z > {OUTLIER_Z:g})"
        )

    def evidence(self, client: int) -> str:
        """Client ``client``'s k of n rounds rejected against p0, and its p-value."""
        return (
            f"rejected in {self.rejected[client]} of {self.judged[client]} rounds vs base "
            f"rate {self.base_rate:.3f}, p = {self.p_values[client]:.3g}"
        )


def flagged_clients(records: list[dict], level: float = 0.05) -> Flagging:
    """The significance test of :class:`Flagging` on a run's rounds (``metrics.jsonl``);
    rounds without a verdict (no ``rejected_clients``) are left out."""
    from scipy.stats import binom

    rejected: dict[int, int] = {}
    judged: dict[int, int] = {}
    for r in records:
        if "rejected_clients" not in r:
            continue
        for c in set(r["rejected_clients"]) | set(r.get("accepted_clients", [])):
            judged[int(c)] = judged.get(int(c), 0) + 1
        for c in set(r["rejected_clients"]):
            rejected[int(c)] = rejected.get(int(c), 0) + 1
    if not judged:
        raise FedsecError(
            "the run's defense recorded no verdicts (no rejected_clients in "
            "metrics.jsonl); name the clients with --clients"
        )
    ids = sorted(judged)
    k = np.array([rejected.get(c, 0) for c in ids])
    n = np.array([judged[c] for c in ids])
    p0 = k.sum() / n.sum()
    p_values = binom.sf(k - 1, n, p0)  # P(X >= k) for X ~ Binomial(n, p0)
    return Flagging(
        level=level,
        rejected_total=int(k.sum()),
        judged_total=int(n.sum()),
        rejected={c: int(x) for c, x in zip(ids, k, strict=True)},
        judged={c: int(x) for c, x in zip(ids, n, strict=True)},
        p_values={c: float(p) for c, p in zip(ids, p_values, strict=True)},
    )


def flagged_forget_set(flagging: Flagging, num_clients: int, allow_majority: bool = False) -> str:
    """``--flagged``'s forget set as "3,7": FedsecError when nobody is flagged (nothing to
    forget), or when more than half of the federation is, unless ``allow_majority``."""
    ids = flagging.clients
    if not ids:
        best = min(flagging.p_values, key=lambda c: (flagging.p_values[c], c))
        why = (
            f"is not below {flagging.level:g} / {len(flagging.judged)} clients = "
            f"{flagging.threshold:.3g}"
            if flagging.p_values[best] >= flagging.threshold
            else "is significant, but its rejection rate does not stand out from the other "
            "clients' (a selection defense rejects atypical honest clients as often)"
        )
        raise FedsecError(
            f"--flagged flags no client: the smallest p-value, client {best}'s "
            f"({flagging.evidence(best)}), {why}; nothing to forget"
        )
    if len(ids) > num_clients / 2 and not allow_majority:
        raise FedsecError(
            f"--flagged names {len(ids)} of {num_clients} clients, more than half "
            "of the federation; pass --allow-majority to forget them anyway"
        )
    return ",".join(map(str, ids))


# ------------------------------------------------------------------ the datamodel
def get_datamodel(
    fed: Federation,
    path: str | Path,
    *,
    num_models: int | None = None,
    q: float | None = None,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[DatamodelArtifact, bool]:
    """The artifact at ``path``, checked against ``fed``; built (and saved) if absent.

    Returns (artifact, built). An existing artifact for another config, other inputs or
    another q / M (when given) is an error, never silently rebuilt.
    """
    path = Path(path)
    c_hash, i_hash = config_hash(fed.config), tensor_hash(fed.inputs)
    if path.exists():
        art = load_artifact(
            path, config_hash=c_hash, inputs_hash=i_hash, q=q, num_models=num_models
        )
        log(
            f"fedsec: reusing datamodel {path} "
            f"(M={art.num_models}, q={art.q}, lambda={art.datamodel.lam:.4g})"
        )
        return art, False
    m, q = num_models or DEFAULT_SUBSETS, DEFAULT_Q if q is None else q
    if not 0 < q <= 1:
        raise ConfigError(f"--q must be in (0, 1], got {q}")
    if m < 3:
        raise ConfigError(f"--subsets must be >= 3, got {m}")
    threads = fed.config.engine.client_num_cpus
    workers = workers or default_workers(threads)
    log(
        f"fedsec: building datamodel {path}: {m} federations on random {q:.0%} client subsets, "
        f"{workers} workers"
    )
    build = train_datamodel(
        FederatedSubsetTrainer(fed.config, fed.inputs),
        num_models=m,
        q=q,
        seed=fed.config.seed,
        workers=workers,
        threads=threads,
        progress=progress,
    )
    art = DatamodelArtifact(
        build.datamodel, i_hash, c_hash, q, m, "client", build.wall_time_s, build.train_time_s
    )
    art.save(path)
    log(
        f"fedsec: datamodel built in {build.wall_time_s:.1f}s (lambda={build.datamodel.lam:.4g}, "
        f"held-out MSE {build.datamodel.val_mse:.4g})"
    )
    return art, True


# ------------------------------------------------------------------ federations in parallel
@dataclass
class FederationJob:
    """Picklable ``(seed, exclude) -> final state dict`` of ``config``'s federation."""

    config: ExperimentConfig

    def __call__(self, seed: int, exclude: tuple[int, ...]) -> dict[str, torch.Tensor]:
        return train_federation(federation_variant(self.config, seed, exclude))


def train_federations(
    config: ExperimentConfig,
    jobs: list[tuple[int, tuple[int, ...]]],
    *,
    workers: int | None = None,
    desc: str = "federations",
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[list[dict], list[float]]:
    """Final states (and each training's own seconds) of ``config`` for (seed, exclude) jobs.

    With ``cache_dir``, states are kept in ``cache_dir/<config hash>/`` and trained once:
    a cached state's time is the one recorded when it was trained.
    """
    threads = config.engine.client_num_cpus
    files = [None] * len(jobs)
    if cache_dir is not None:
        folder = Path(cache_dir) / config_hash(config)[:16]
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / f"seed{s}-without{'_'.join(map(str, ex)) or '-'}.pt" for s, ex in jobs]
    todo = [i for i, f in enumerate(files) if f is None or not f.is_file()]
    states, times = run_parallel(
        FederationJob(config),
        [jobs[i] for i in todo],
        workers=workers or default_workers(threads),
        threads=threads,
        desc=desc,
        progress=progress,
    )
    out_states, out_times = [None] * len(jobs), [0.0] * len(jobs)
    for i, state, seconds in zip(todo, states, times, strict=True):
        out_states[i], out_times[i] = state, seconds
        if files[i] is not None:
            torch.save({"state": state, "seconds": seconds}, files[i])
    for i, f in enumerate(files):
        if out_states[i] is None:
            saved = torch.load(f, weights_only=True)
            out_states[i], out_times[i] = saved["state"], saved["seconds"]
    return out_states, out_times


def training_examples(config: ExperimentConfig) -> int:
    """Example-gradients one training of ``config`` computes: each round's sampled
    clients' examples (an attacker's poisoned set at its size) times the local epochs,
    summed over the rounds. The cost of a retraining that does not depend on the machine;
    a central pre-training is not counted (the unlearning settings have none)."""
    from fedsec.task import get_task

    task = get_task(config)
    schedule = task.schedule
    total = 0
    for server_round in range(1, config.train.rounds + 1):
        sampled, malicious = schedule.sample(server_round)
        sizes = [len(task.partitions[c]) for c in sampled]
        total += sum(
            task.attack.num_examples(n) if c in malicious else n
            for c, n in zip(sampled, sizes, strict=True)
        )
    return total * config.train.local_epochs


def oracle_mean_logits(
    fed: Federation, forget, n: int, *, workers=None, progress=True, cache_dir=None
) -> torch.Tensor:
    """Mean logits on ``fed.inputs`` of ``n`` federations retrained without ``forget``."""
    seeds = [derive_seed(fed.config.seed, "om-oracle", j) for j in range(n)]
    states, _ = train_federations(
        fed.config,
        [(s, tuple(forget)) for s in seeds],
        workers=workers,
        desc="OM oracles",
        progress=progress,
        cache_dir=cache_dir,
    )
    return torch.stack([predict_logits(fed.model_from(s), fed.inputs) for s in states]).mean(0)


# ------------------------------------------------------------------ the methods
@dataclass
class UnlearnSettings:
    cooperative: bool = True  # the forget clients hand over their data for matching
    reference_size: int = 0  # 0 = 3x the forget clients' example count
    matching: MatchingConfig = field(default_factory=MatchingConfig)


def matching_rows(
    fed: Federation, forget, settings: UnlearnSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(reference rows, forget rows used for matching); the latter empty without cooperation.

    The reference set stands in for the server's own data: clean training examples of
    retained clients, never a retained attacker's poisoned ones.
    """
    forget_rows = fed.client_rows(forget)
    retained = fed.retained_rows(forget)
    retained = retained[retained < fed.n_split]
    size = min(settings.reference_size or 3 * len(forget_rows), len(retained))
    reference = np.sort(
        rng(fed.config.federation_seed, "unlearning-reference").choice(
            retained, size=size, replace=False
        )
    )
    return reference, (forget_rows if settings.cooperative else forget_rows[:0])


@dataclass(frozen=True)
class Unlearned:
    """What an unlearning method returns: the new model's state dict and, for the
    fine-tuning methods, how far the fine-tuning got."""

    state: dict[str, torch.Tensor]
    matching: MatchingReport | None = None


def unlearn_state(
    fed: Federation,
    state: dict,
    method: str,
    forget,
    *,
    seed: int,
    settings: UnlearnSettings | None = None,
    datamodel: Datamodel | None = None,
    om_target: torch.Tensor | None = None,
) -> Unlearned:
    """Unlearn ``forget`` from the model ``state`` (trained with seed ``seed``) by ``method``
    (a name in ``fedsec.unlearning.METHODS``)."""
    request = UnlearnRequest(
        fed, state, tuple(forget), seed, settings or UnlearnSettings(), datamodel, om_target
    )
    return METHODS.resolve(method)(request)


@dataclass(frozen=True)
class UnlearnRequest:
    """What every unlearning method gets: the federation, the trained model's state and
    its training seed, the clients to forget, the settings and, for the methods that
    need them, the datamodel (dmm) and the oracles' mean logits (om)."""

    fed: Federation
    state: dict
    forget: tuple[int, ...]
    seed: int
    settings: UnlearnSettings
    datamodel: Datamodel | None = None
    om_target: torch.Tensor | None = None


@dataclass(frozen=True)
class _MatchingSet:
    """The model to change and the rows it is matched on: the reference (retained) rows
    first, then the forget clients' rows (empty unless they cooperate)."""

    model: torch.nn.Module
    rows: torch.Tensor
    x: torch.Tensor
    n_reference: int
    seed: int


def _matching_set(request: UnlearnRequest) -> _MatchingSet:
    fed = request.fed
    reference, forget_rows = matching_rows(fed, request.forget, request.settings)
    rows = torch.from_numpy(np.concatenate([reference, forget_rows]))
    return _MatchingSet(
        fed.model_from(request.state),
        rows,
        fed.inputs[rows],
        len(reference),
        derive_seed(request.seed, "unlearn-match"),
    )


def _state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def keep_model(request: UnlearnRequest) -> Unlearned:
    """``none``: the trained model as it is (the baseline every method must beat)."""
    return Unlearned(copy.deepcopy(request.state))


def retrain(request: UnlearnRequest) -> Unlearned:
    """``retrain``: the federation trained again without the forget clients (the oracle)."""
    config = federation_variant(request.fed.config, request.seed, request.forget)
    return Unlearned(train_federation(config))


def finetune(request: UnlearnRequest) -> Unlearned:
    """``finetune``: fine-tune on the retained clients' reference rows."""
    m = _matching_set(request)
    labels = request.fed.labels[m.rows[: m.n_reference]]
    report = finetune_retain(
        m.model, m.x[: m.n_reference], labels, seed=m.seed, settings=request.settings.matching
    )
    return Unlearned(_state_of(m.model), report)


def gradient_ascent_method(request: UnlearnRequest) -> Unlearned:
    """``gradient-ascent``: ascend the loss on the forget clients' data (they must cooperate)."""
    m = _matching_set(request)
    if m.n_reference == len(m.rows):
        raise ConfigError("gradient-ascent needs the forget clients' data; they do not cooperate")
    labels = request.fed.labels[m.rows[m.n_reference :]]
    report = gradient_ascent(
        m.model, m.x[m.n_reference :], labels, seed=m.seed, settings=request.settings.matching
    )
    return Unlearned(_state_of(m.model), report)


def datamodel_matching(request: UnlearnRequest) -> Unlearned:
    """``dmm``: match the logits the datamodel predicts for the model trained without the
    forget clients (Georgiev et al. 2024)."""
    if request.datamodel is None:
        raise ValueError("dmm needs a datamodel")
    m = _matching_set(request)
    target = predicted_oracle(
        predict_logits(m.model, m.x), request.datamodel, request.forget, m.rows
    )
    report = match_logits(m.model, m.x, target, seed=m.seed, settings=request.settings.matching)
    return Unlearned(_state_of(m.model), report)


def oracle_matching(request: UnlearnRequest) -> Unlearned:
    """``om``: match the mean logits of models retrained without the forget clients."""
    if request.om_target is None:
        raise ValueError("om needs the oracles' mean logits")
    m = _matching_set(request)
    report = match_logits(
        m.model, m.x, request.om_target[m.rows], seed=m.seed, settings=request.settings.matching
    )
    return Unlearned(_state_of(m.model), report)


def model_metrics(fed: Federation, state: dict, forget) -> dict[str, float]:
    """Accuracy on the test split, the forget and retained clients' data, and BA."""
    model = fed.model_from(state)
    out = {}
    for name, rows in (
        ("test", fed.test_rows()),
        ("forget", fed.client_rows(forget)),
        ("retain", fed.retained_rows(forget)),
    ):
        idx = torch.from_numpy(rows)
        out[f"{name}_accuracy"] = evaluate(model, fed.inputs[idx], fed.labels[idx]).accuracy
    backdoor = fed.backdoor_set()
    if backdoor is not None:
        out["backdoor_accuracy"] = evaluate(model, *backdoor).accuracy
    return out


# ------------------------------------------------------------------ fedsec unlearn RUN_DIR
def unlearn_run(
    run_dir: str | Path,
    *,
    method: str,
    clients: str | None = None,
    flagged: bool = False,
    flag_level: float | None = None,
    allow_majority: bool = False,
    datamodel_path: str | None = None,
    num_models: int | None = None,
    q: float | None = None,
    workers: int | None = None,
    settings: UnlearnSettings | None = None,
    om_oracles: int = DEFAULT_OM_ORACLES,
    out: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Unlearn clients from ``run_dir``'s model; write the model and its metrics beside it.

    With ``flagged``, the clients are those :func:`flagged_clients` flags at
    ``flag_level`` (default 0.05); more than half of the federation only with
    ``allow_majority``. Every refusal comes before any training.
    """
    run_dir = Path(run_dir)
    settings = settings or UnlearnSettings()
    METHODS.resolve(method)
    if not (run_dir / MODEL_FILE).is_file():
        raise FedsecError(f"{run_dir} has no {MODEL_FILE}: not a finished run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise FedsecError(f"{run_dir} has no {CONFIG_FILE}: not a run directory")
    if flagged == (clients is not None):
        raise FedsecError("name the clients to forget with --clients, or use --flagged (not both)")
    if not flagged and (flag_level is not None or allow_majority):
        raise ConfigError("--flag-level and --allow-majority apply only with --flagged")
    level = DEFAULT_FLAG_LEVEL if flag_level is None else flag_level
    if flagged and not 0 < level < 1:
        raise ConfigError(f"--flag-level must be in (0, 1), got {level}")
    config = load_config(run_dir / CONFIG_FILE)
    torch.set_num_threads(config.engine.client_num_cpus)  # as a client (and retraining) uses
    if flagged:
        flagging = flagged_clients(read_metrics(run_dir / METRICS_FILE), level)
        clients = flagged_forget_set(flagging, config.data.num_clients, allow_majority)
        log(f"fedsec: --flagged: {flagging.rule()}")
        for c in flagging.clients:
            log(f"fedsec: flagged client {c}: {flagging.evidence(c)}")
    forget = check_forget_set(clients, config.data.num_clients)
    fed = Federation.from_config(config)
    state = torch.load(run_dir / MODEL_FILE, weights_only=True)
    info: dict[str, Any] = {
        "method": method,
        "clients": list(forget),
        "cooperative": settings.cooperative,
    }
    art = None
    if method == "dmm":
        art, built = get_datamodel(
            fed,
            datamodel_path or run_dir / UNLEARN_DIR / DATAMODEL_FILE,
            num_models=num_models,
            q=q,
            workers=workers,
            progress=progress,
            log=log,
        )
        info["datamodel"] = {
            "built_now": built,
            "num_models": art.num_models,
            "q": art.q,
            "lambda": art.datamodel.lam,
            "build_wall_time_s": art.build_wall_time_s,
        }
    start = time.perf_counter()
    om_target = (
        oracle_mean_logits(fed, forget, om_oracles, workers=workers, progress=progress)
        if method == "om"
        else None
    )
    unlearned = unlearn_state(
        fed,
        state,
        method,
        forget,
        seed=config.seed,
        settings=settings,
        datamodel=art.datamodel if art else None,
        om_target=om_target,
    )
    new_state = unlearned.state
    info["wall_time_s"] = round(time.perf_counter() - start, 3)
    if unlearned.matching is not None:
        info["matching"] = unlearned.matching.as_dict()
        if unlearned.matching.converged is False:
            log(
                f"fedsec: warning: the {method} fine-tuning stopped at max_steps = "
                f"{settings.matching.max_steps} before its held-out loss stopped improving "
                f"({unlearned.matching.start_loss:.4g} -> {unlearned.matching.end_loss:.4g}); "
                "the model may be short of its target"
            )
    info["before"] = model_metrics(fed, state, forget)
    info["after"] = model_metrics(fed, new_state, forget)
    out = (
        Path(out)
        if out
        else run_dir / UNLEARN_DIR / f"{method}-clients-{'_'.join(map(str, forget))}"
    )
    out.mkdir(parents=True, exist_ok=True)
    torch.save(new_state, out / MODEL_FILE)
    (out / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    info["out"] = str(out)
    return info
