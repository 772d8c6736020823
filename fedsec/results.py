"""A run directory: the resolved config, one JSON line per round, and a summary.

Layout::

    RUN_DIR/config.toml     the resolved experiment (every key, defaults included)
    RUN_DIR/metrics.jsonl   one JSON object per round, appended and flushed as it ends
    RUN_DIR/summary.json    final numbers, seed, config, package versions, wall time
    RUN_DIR/model.pt        the final global model (state dict)

and what the experiment trackers of ``[log]`` write (metrics.csv, tensorboard/, wandb/;
see fedsec/tracking.py): each round goes to metrics.jsonl first, then to each of them.

Nothing is rewritten in place: a run killed midway leaves every finished round on disk.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fedsec.config import ExperimentConfig, _toml_value, read_toml
from fedsec.tracking import JsonlSink, Sink, tracker_sinks
from fedsec_core.atomic import atomic_write_text
from fedsec_core.errors import ConfigError, FedsecError
from fedsec_core.protocol import FormatError, RoundRecord

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"
MODEL_FILE = "model.pt"
PROVENANCE_FILE = "provenance.json"
CHECKPOINT_FILE = "checkpoint.pt"  # fedsec.checkpoint
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, MODEL_FILE, CHECKPOINT_FILE)
"""The files a run writes."""


def config_differences(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """The keys in which two experiments differ, as ``"key old -> new"``; [] when they are
    the same experiment. Compared key by key as TOML writes the values (so ``2`` and
    ``2.0`` differ, as in the files), whatever the order of the keys."""
    a, b = old.to_flat(), new.to_flat()
    shown = {k: _toml_value(v) for k, v in a.items()}, {k: _toml_value(v) for k, v in b.items()}
    keys = list(a) + [k for k in b if k not in a]
    return [
        f"{k} {shown[0].get(k, '(unset)')} -> {shown[1].get(k, '(unset)')}"
        for k in keys
        if shown[0].get(k) != shown[1].get(k)
    ]


def differences_words(changes: list[str], limit: int = 4) -> str:
    """``"seed 0 -> 5, train.rounds 3 -> 6"``, cut after ``limit`` keys."""
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more


def written_config(run_dir: str | Path) -> ExperimentConfig | None:
    """The experiment in ``run_dir/config.toml`` as this version of fedsec reads it (a key
    added to fedsec since it was written reads back as its default, which keeps the old
    behaviour); None when there is no such file; FedsecError when it is unreadable."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return ExperimentConfig.from_dict(read_toml(path))
    except ConfigError as err:
        raise FedsecError(f"{path} is not a readable experiment: {err}") from None


def run_state(run_dir: str | Path, config: ExperimentConfig) -> tuple[str, list[str]]:
    """What ``run_dir`` holds for the experiment ``config``: (state, differences).

    state: ``empty`` (no run file there), ``done`` (summary written), ``partial`` (a
    checkpoint to resume from) or ``new`` (to start over); differences: how the
    experiment written there differs from ``config`` (:func:`config_differences`),
    non-empty when the directory holds another experiment, whose files a new run would
    replace. A run file without a readable config.toml counts as another experiment.
    """
    run_dir = Path(run_dir)
    if not any((run_dir / name).exists() for name in RUN_FILES):
        return "empty", []
    try:
        written = written_config(run_dir)
    except FedsecError as err:
        return "new", [str(err)]
    if written is None:
        return "new", [f"run files but no {CONFIG_FILE}"]
    changes = config_differences(written, config)
    if (run_dir / SUMMARY_FILE).is_file():
        return "done", changes
    if (run_dir / CHECKPOINT_FILE).is_file():
        return "partial", changes
    return "new", changes


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a result depends on."""
    versions = {"python": platform.python_version()}
    for name in ("fedsec", "flwr", "torch", "numpy", "scipy", "scikit-learn", "flwr-datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def source_commit() -> dict[str, Any] | None:
    """The git commit fedsec's source tree is at, and whether tracked files differ from it
    (``dirty``); None when fedsec is not run from a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(status.strip())}


def state_digest(state: dict[str, Any]) -> str:
    """A digest of a model state dict (names, dtypes, shapes and values, in order): tells
    two initial models, e.g. two pre-training caches, apart."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        h.update(f"{name}:{array.dtype}:{array.shape};".encode())
        h.update(array.tobytes())
    return h.hexdigest()


class RunWriter:
    """Writes one run directory as the run goes.

    Parameters
    ----------
    out_dir : str or Path
        The run directory; created if needed.
    config : ExperimentConfig
        The resolved experiment, written to ``config.toml`` at once.
    keep_rounds : int
        Rounds of an existing ``metrics.jsonl`` to keep (a resumed run keeps those up to
        its checkpoint and drops later ones, which it runs again); 0 starts afresh.
    initial_model : str
        :func:`state_digest` of the round-0 model of a fresh run ("" on resume, which keeps
        the one recorded when the run started).

    ``provenance.json`` records the initial model's digest and the source commit and the
    kernel family (``fedsec.task.kernel_family``) of every start and resume (``commits``,
    ``kernels``); ``summary.json`` carries it as ``provenance``, so a report can tell a
    cell whose seeds come from different programs or machines.
    """

    def __init__(
        self,
        out_dir: str | Path,
        config: ExperimentConfig,
        keep_rounds: int = 0,
        initial_model: str = "",
    ) -> None:
        self.out_dir = Path(out_dir)
        self.config = config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / CONFIG_FILE, config.to_toml())
        metrics = self.out_dir / METRICS_FILE
        kept = [r for r in read_rounds(metrics) if r.round <= keep_rounds]
        # metrics.jsonl first: every tracker of [log] is a sink beside it, and each
        # starts from the kept rounds, so a resumed run logs no round twice anywhere.
        self.sinks: list[Sink] = [
            JsonlSink(metrics),
            *tracker_sinks(self.out_dir, config, resuming=keep_rounds > 0),
        ]
        for sink in self.sinks:
            sink.start(kept)
        self.elapsed_before = (kept[-1].time_s or 0.0) if kept else 0.0
        self._started = time.time() - self.elapsed_before
        self.provenance = self._record_provenance(initial_model, resumed=keep_rounds > 0)

    def _kernels(self) -> str:
        from fedsec.task import kernel_family, resolve_device

        return kernel_family(resolve_device(self.config.engine.device))

    def _record_provenance(self, initial_model: str, resumed: bool) -> dict[str, Any]:
        path = self.out_dir / PROVENANCE_FILE
        previous: dict[str, Any] = {}
        if resumed and path.is_file():
            try:
                previous = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = {}
        provenance = {
            "initial_model": previous.get("initial_model") or initial_model or None,
            "commits": [*previous.get("commits", []), source_commit()],
            # the kernels of every start and resume: another CPU family rounds differently
            "kernels": [*previous.get("kernels", []), self._kernels()],
        }
        atomic_write_text(path, json.dumps(provenance, indent=1) + "\n")
        return provenance

    def log_round(self, record: RoundRecord) -> None:
        """Append one round's record to metrics.jsonl (flushed to disk), then hand it to
        the trackers."""
        for sink in self.sinks:
            sink.log_round(record)

    def close(self) -> None:
        """Close the trackers (``finish`` does; a run that fails leaves them to exit)."""
        for sink in self.sinks:
            sink.close()

    def finish(self, extra: dict[str, Any], rule: Any = None) -> dict[str, Any]:
        """Write ``summary.json`` from the logged rounds, ``extra`` and the config.

        ``rule`` is the run's defense rule (:class:`defenses.rules.AggregationRule`), or
        None: its ``higher_score_is_suspicious`` orients the scores for the detection
        AUROC, its ``selection_quota`` (for this config's round size), when it has
        one, goes into ``detection`` beside the precision and FPR that it shapes, and
        the keys it names in ``final_summary_keys`` (what its step after training adds
        to the last round) go into the summary as ``final_<key>``.
        """
        rounds = self.rounds()
        higher = True if rule is None else bool(rule.higher_score_is_suspicious)
        final_keys = () if rule is None else tuple(rule.final_summary_keys)
        summarized = summarize_rounds(
            rounds, higher_score_is_suspicious=higher, final_keys=final_keys
        )
        quota = (
            ""
            if rule is None
            else rule.selection_quota(self.config.train.round_size(self.config.data.num_clients))
        )
        if quota and "detection" in summarized:
            summarized["detection"]["selection_quota"] = quota
        if rule is not None and rule.selects_clients:
            acceptance = attacker_acceptance(rounds)
            if acceptance is not None:
                summarized["attacker_acceptance"] = acceptance
        summary = {
            "rounds": len(rounds),
            "seed": self.config.seed,
            "wall_time_s": round(time.time() - self._started, 3),
            **summarized,
            **extra,
            "config": self.config.to_dict(),
            "versions": package_versions(),
            "provenance": self.provenance,
        }
        self._write_summary(summary)
        self.close()
        return summary

    def rounds(self) -> list[RoundRecord]:
        """The rounds logged so far."""
        return read_rounds(self.out_dir / METRICS_FILE)

    def _write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


class MemoryWriter(RunWriter):
    """A :class:`RunWriter` that keeps the rounds and the summary in memory and writes no
    file: for federations trained as a step of something else (unlearning's retrained
    and subset models), which need the final model, not a run directory."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.elapsed_before = 0.0
        self._started = time.time()
        self._rounds: list[RoundRecord] = []
        self.provenance = None
        self.sinks = []

    def log_round(self, record: RoundRecord) -> None:
        self._rounds.append(record)

    def rounds(self) -> list[RoundRecord]:
        return list(self._rounds)

    def _write_summary(self, summary: dict[str, Any]) -> None:
        pass


def summarize_rounds(
    rounds: list[RoundRecord],
    higher_score_is_suspicious: bool = True,
    final_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Final and best value of each accuracy that the rounds recorded, and the detection.

    ``final_keys``: keys of the last round's ``final`` (a rule's step after training,
    e.g. CRFL's ``smoothed_accuracy``) copied as ``final_<key>``.

    ``detection`` holds the confusion counts summed over the rounds, precision, recall
    and FPR and, when rounds logged the defense's ``scores`` with attackers and honest
    clients among the scored, ``auroc`` (see :func:`detection_auroc`; the scores are
    oriented by ``higher_score_is_suspicious``) and ``auroc_rounds``.
    """
    out: dict[str, Any] = {}
    for key in ("main_accuracy", "backdoor_accuracy"):
        values = [getattr(r, key) for r in rounds if getattr(r, key) is not None]
        if values:
            out[f"final_{key}"] = values[-1]
            out[f"best_{key}" if key == "main_accuracy" else f"max_{key}"] = max(values)
    for key in final_keys:  # what the rule's step after training measured
        if rounds and rounds[-1].final.get(key) is not None:
            out[f"final_{key}"] = rounds[-1].final[key]
    counts = {
        k: sum(getattr(r, k) or 0 for r in rounds)
        for k in ("true_positives", "false_positives", "false_negatives", "true_negatives")
    }
    if any(getattr(r, k) is not None for r in rounds for k in counts):
        tp, fp, fn, tn = counts.values()
        out["detection"] = {
            **counts,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "false_positive_rate": fp / (fp + tn) if fp + tn else None,
        }
    # Rounds that produced no new model (too few replies, or the defense kept the model).
    out["kept_previous_model_rounds"] = sum(1 for r in rounds if r.kept_previous_model)
    auroc, n_rounds = detection_auroc(rounds, higher_score_is_suspicious)
    if n_rounds:
        out.setdefault("detection", {}).update(auroc=auroc, auroc_rounds=n_rounds)
    return out


def attacker_acceptance(rounds: list[RoundRecord]) -> dict[str, Any] | None:
    """In how many attack rounds the defense kept an attacker in the aggregate.

    An attack round is one that logged ``malicious_clients`` (non-empty) and the
    defense's ``accepted_clients``; it counts as accepted when any of its attackers is
    among them. Returns ``{"attack_rounds", "accepted_rounds", "rate"}``, or None when
    no round counts (no attack, or no model was aggregated in an attack round). Only
    meaningful for rules that can leave clients out (``selects_clients``).
    """
    attack_rounds = accepted = 0
    for r in rounds:
        bad = r.malicious_clients
        if not bad or r.accepted_clients is None or r.kept_previous_model:
            continue
        attack_rounds += 1
        accepted += bool(set(bad) & set(r.accepted_clients))
    if not attack_rounds:
        return None
    return {
        "attack_rounds": attack_rounds,
        "accepted_rounds": accepted,
        "rate": accepted / attack_rounds,
    }


def attacker_weight(rounds: list[RoundRecord]) -> dict[str, Any] | None:
    """How heavy a kept attacker was against FedAvg: the amplification a selecting rule
    gives the attackers it keeps (keeping 3 of 10 equal clients makes each 10/3 as heavy).

    Over the attack rounds (non-empty ``malicious_clients``) that logged the rule's
    ``weight_ratios`` and aggregated a model, each attacker in the aggregate (ratio > 0)
    adds its ratio: its coefficient in the new model over FedAvg's ``n_i / sum n``.
    Returns ``{"kept", "mean", "max"}`` (the (round, attacker) pairs counted, the mean
    and the largest ratio), or None when no pair counts (no attack, a rule whose model
    is no combination of the clients', or no attacker ever kept).
    """
    ratios = [
        r.weight_ratios[c]
        for r in rounds
        if r.malicious_clients and r.weight_ratios and not r.kept_previous_model
        for c in r.malicious_clients
        if r.weight_ratios.get(c, 0.0) > 0
    ]
    if not ratios:
        return None
    return {"kept": len(ratios), "mean": sum(ratios) / len(ratios), "max": max(ratios)}


def attack_window(rounds: list[RoundRecord]) -> dict[str, Any] | None:
    """Backdoor accuracy over the attack window: the rounds from the first one with an
    attacker (non-empty ``malicious_clients``) to the last round, those of them that
    measured BA. A backdoor's BA can swing from round to round (an attacker every other
    round, or a model the next honest round repairs), so one final value can say the
    opposite of what the run did; the window's mean, max and min say it whole.

    Returns ``{"first_round", "last_round", "rounds", "mean", "max", "min", "final"}``
    (accuracies as fractions, ``rounds`` the number measured), or None without an
    attack round that measured BA.
    """
    starts = [r.round for r in rounds if r.malicious_clients]
    if not starts:
        return None
    values = [
        (r.round, r.backdoor_accuracy)
        for r in rounds
        if r.round >= starts[0] and r.backdoor_accuracy is not None
    ]
    if not values:
        return None
    ba = np.array([v for _, v in values], dtype=float)
    return {
        "first_round": values[0][0],
        "last_round": values[-1][0],
        "rounds": len(values),
        "mean": float(ba.mean()),
        "max": float(ba.max()),
        "min": float(ba.min()),
        "final": float(ba[-1]),
    }


def precision_bound(rounds: list[RoundRecord]) -> dict[str, Any] | None:
    """The highest detection precision a rule that rejects a fixed number of clients a
    round could reach on these rounds, whatever it saw.

    A round that judged clients rejected ``len(rejected_clients)`` of them; at most
    ``min(attackers judged, rejected)`` of those rejections can be attackers. Summed
    over the rounds: ``{"bound": sum of those / rejections, "rejected", "attackers"
    (the judged attackers), "right_at_most"}``; None when no round rejected anyone.
    """
    rejected = attackers = right = 0
    for r in rounds:
        if r.rejected_clients is None:
            continue
        judged = set(r.rejected_clients) | set(r.accepted_clients or [])
        bad = len(judged & set(r.malicious_clients or []))
        rejected += len(r.rejected_clients)
        attackers += bad
        right += min(bad, len(r.rejected_clients))
    if not rejected:
        return None
    return {
        "bound": right / rejected,
        "rejected": rejected,
        "attackers": attackers,
        "right_at_most": right,
    }


def detection_auroc(
    rounds: list[RoundRecord], higher_score_is_suspicious: bool = True
) -> tuple[float | None, int]:
    """Mean over rounds of the AUROC of the defense's scores against the attackers.

    A round counts when it logged ``scores`` ({partition id: score}) and
    ``malicious_clients``, and both an attacker and an honest client were scored. Its
    AUROC is the Mann-Whitney statistic: the share of (attacker, honest) pairs in which
    the attacker's score is the more suspicious, ties counting 1/2; scores are negated
    first when a higher one is more benign (a trust or a weight). A score is on the
    scale of its own round only (distances shrink as the model converges, a trust is
    relative to that round's reference), so rounds are averaged, never pooled.

    Returns (mean AUROC, rounds averaged); (None, 0) when no round counts.
    """
    from scipy.stats import rankdata  # scipy.stats takes a while to import; only here

    sign = 1.0 if higher_score_is_suspicious else -1.0
    per_round = []
    for r in rounds:
        scores = r.scores
        if not scores or r.malicious_clients is None:
            continue
        bad = {int(c) for c in r.malicious_clients}
        ids = np.array(list(scores), dtype=np.int64)
        s = sign * np.array([np.nan if v is None else float(v) for v in scores.values()])
        keep = ~np.isnan(s)
        ids, s = ids[keep], s[keep]
        pos = np.isin(ids, list(bad))
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(s)  # average ranks: a tie between the classes counts 1/2
        per_round.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    if not per_round:
        return None, 0
    return float(np.mean(per_round)), len(per_round)


def read_rounds(path: str | Path) -> list[RoundRecord]:
    """The rounds of a metrics.jsonl; a torn last line (a killed writer) is skipped, a
    torn line before it (the file was damaged or edited) is a FedsecError naming it, and
    so is a round in a format version this fedsec does not read
    (:class:`fedsec_core.protocol.FormatError`: a newer fedsec wrote it)."""
    path = Path(path)
    if not path.is_file():
        return []
    rounds = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the writer died mid-line; every earlier round is whole
            raise FedsecError(
                f"{path}: line {i + 1} of {len(lines)} is not a whole JSON record (the file "
                "was damaged or edited; only a torn last line is expected); restore the file, "
                "or run the experiment again with --out elsewhere or --overwrite"
            ) from None
        if not isinstance(data, dict):
            raise FormatError(f"{path}: line {i + 1} is not a round record (a JSON object)")
        rounds.append(RoundRecord.from_dict(data, where=f"{path} (line {i + 1})"))
    return rounds


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rounds of a metrics.jsonl (:func:`read_rounds`) as JSON objects, without their
    format version: for scripts and tests that read a run by key. fedsec reads
    :class:`~fedsec_core.protocol.RoundRecord` objects."""
    return [r.to_dict(version=False) for r in read_rounds(path)]
