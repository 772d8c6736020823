"""Reading results: the runs of one or more sweeps, their labels, summaries and rounds."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec.results import (
    METRICS_FILE,
    SUMMARY_FILE,
    attacker_acceptance,
    attacker_weight,
    read_rounds,
)
from fedsec.sweep import only_labels
from fedsec_core.errors import FedsecError
from fedsec_core.protocol import RoundRecord

SWEEP_FILE = "sweep.json"
SEED_AXIS = "seed"
NO_ATTACK = "none"


def is_no_attack(label: str) -> bool:
    """``none`` and ``none-*`` label no-attack baselines (e.g. ``none-edge``: the edge-case
    attack configured to start after the last round, so its backdoor accuracy is measured
    on an honest federation); the ranking score leaves them out."""
    return label == NO_ATTACK or label.startswith(NO_ATTACK + "-")


#: (key in report.json, column title) of the long table, in its order.
METRICS: tuple[tuple[str, str], ...] = (
    ("final_main_accuracy", "final MA"),
    ("best_main_accuracy", "best MA"),
    ("final_backdoor_accuracy", "final BA"),
    ("max_backdoor_accuracy", "max BA"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("auroc", "AUROC"),
    ("acceptance", "attacker kept"),
    ("attacker_weight", "attacker weight"),
)

#: CRFL's numbers on the final model (its post-training step, defenses.rules.crfl): the
#: smoothed model's accuracy, and its certified accuracy at each radius, a column per
#: radius the runs report.
SMOOTHED = ("final_smoothed_accuracy", "smoothed acc")
CERTIFIED_PREFIX = "certified_accuracy@"


def metric_columns(runs: Sequence[Run]) -> tuple[tuple[str, str], ...]:
    """The long table's columns for ``runs``: :data:`METRICS`, then, when some run
    certified its model (CRFL), the smoothed accuracy and the certified accuracy at each
    radius any of them reports (ascending)."""
    radii: set[str] = set()
    for run in runs:
        radii.update(((run.summary or {}).get("final_certified_accuracy") or {}).keys())
    if not radii:
        return METRICS
    ordered = sorted(radii, key=float)
    return (
        METRICS + (SMOOTHED,) + tuple((CERTIFIED_PREFIX + r, f"certified @r={r}") for r in ordered)
    )


@dataclass
class Run:
    """One run of a sweep: its labels and, once finished, its summary and rounds."""

    id: str
    path: Path
    labels: dict[str, str]
    # "finished", "unfinished" (no summary.json yet, or a damaged metrics.jsonl: left out
    # with a warning) or "missing" (no directory)
    status: str
    summary: dict[str, Any] | None = None
    rounds: list[RoundRecord] = field(default_factory=list)

    def values(self) -> dict[str, float | None]:
        """The run's final numbers in percent (None where the run did not record one)."""
        s = self.summary or {}
        det = s.get("detection") or {}
        raw = {key: s.get(key) for key, _ in METRICS[:4]}
        # auroc: the mean per-round AUROC of the defense's scores (fedsec.results); runs
        # whose rounds logged no scores (older runs, defenses without scores) have none.
        raw.update(precision=det.get("precision"), recall=det.get("recall"), auroc=det.get("auroc"))
        acceptance = attacker_acceptance(self.rounds) if self.selects_clients() else None
        raw["acceptance"] = acceptance and acceptance["rate"]
        weight = attacker_weight(self.rounds)
        raw["attacker_weight"] = weight and weight["mean"]
        raw[SMOOTHED[0]] = s.get(SMOOTHED[0])
        for radius, value in (s.get("final_certified_accuracy") or {}).items():
            raw[CERTIFIED_PREFIX + radius] = value
        return {k: None if v is None else 100.0 * float(v) for k, v in raw.items()}

    def config(self) -> dict[str, Any]:
        return (self.summary or {}).get("config") or {}

    def defense(self) -> str | None:
        """The run's defense: its ``defense`` label, else the one its summary's config names."""
        return self.labels.get("defense") or (self.config().get("defense") or {}).get("name")

    def selects_clients(self) -> bool:
        """Whether the run's defense rule can leave clients out (its ``selects_clients``)."""
        from defenses.rules import rule_class

        rule = rule_class((self.config().get("defense") or {}).get("name", ""))
        return bool(rule is not None and rule.selects_clients)

    def backdoor_key(self) -> tuple | None:
        """What decides the inputs its backdoor accuracy is measured on (attacks.backdoor_key)."""
        from attacks import backdoor_key

        key = backdoor_key(self.config().get("attack") or {})
        return None if key is None else tuple(json.dumps(v) for v in key)

    def attacker_failures(self) -> list[int]:
        """The rounds in which an attacker was sampled but its reply failed (an error,
        an exception or a timeout): there the attack did not take part."""
        return [
            r.round
            for r in self.rounds
            if set(r.failed_clients or ()) & set(r.malicious_clients or ())
        ]

    def provenance(self) -> dict[str, Any]:
        """Where the run's numbers come from: the source commit(s) it ran at (``commits``:
        None where not known, e.g. a run written before fedsec recorded them, or one run
        outside a git checkout; a ``+dirty`` suffix where tracked files differed from the
        commit), the kernel families it ran on (``fedsec.task.kernel_family``: another CPU
        family rounds differently) and the digest of its initial (pre-trained) model."""
        recorded = (self.summary or {}).get("provenance") or {}
        commits = []
        for c in recorded.get("commits") or []:
            name = None if c is None else c["commit"] + ("+dirty" if c.get("dirty") else "")
            if name not in commits:
                commits.append(name)
        kernels = list(dict.fromkeys(recorded.get("kernels") or [])) or [None]
        return {
            "commits": commits or [None],
            "kernels": kernels,
            "initial_model": recorded.get("initial_model"),
        }

    def selection_quota(self) -> str:
        """The defense's quota sentence that summary.json records ("" when it has none)."""
        return ((self.summary or {}).get("detection") or {}).get("selection_quota") or ""


@dataclass
class SweepResults:
    """The runs below one or more results directories and the axes that label them."""

    roots: list[Path]
    name: str
    axes: dict[str, list[str]]
    runs: list[Run]
    source: str  # "sweep.json" or "discovered" (per directory, joined by ", ")

    @property
    def root(self) -> Path:
        return self.roots[0]


def load_results(
    results_dirs: str | Path | Sequence[str | Path], only: Sequence[str] = ()
) -> SweepResults:
    """Read ``sweep.json`` (or discover run directories) and every run's files.

    Several directories (e.g. the sweeps of one study, each over some values of a shared
    ``regime`` axis) are read as one set of runs: the axes are the union of theirs (in the
    order met), and a run keeps the directory it came from in its ``dir``.

    ``only`` (``AXIS=LABEL[,LABEL...]`` items, as ``fedsec sweep --only``) keeps the runs
    whose labels match every item, and each axis keeps the labels they have: the report of
    a slice of a sweep (a pilot, a first part), whose other cells are not "missing" but
    not asked for."""
    dirs = [results_dirs] if isinstance(results_dirs, (str, Path)) else list(results_dirs)
    if not dirs:
        raise FedsecError("no results directory given")
    names, sources, axes, listed = [], [], {}, []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise FedsecError(f"results directory {root} does not exist")
        if (root / SWEEP_FILE).is_file():
            name, dir_axes, entries = _read_sweep_json(root / SWEEP_FILE)
            source = SWEEP_FILE
        else:
            name, (dir_axes, entries) = root.resolve().name, _discover(root)
            source = "discovered"
        if not entries:
            raise FedsecError(
                f"no runs found in {root}: no {SWEEP_FILE} and no directory "
                f"holding {METRICS_FILE} below it"
            )
        names.append(name)
        sources.append(source)
        for key, values in dir_axes.items():
            axes.setdefault(key, [])
            axes[key] += [v for v in values if v not in axes[key]]
        listed += [(root, run_id, rel, labels) for run_id, rel, labels in entries]
    if only:
        chosen = only_labels(list(only), axes, "the results")
        listed = [e for e in listed if all(e[3].get(a) in ls for a, ls in chosen.items())]
        axes = {a: [v for v in vs if a not in chosen or v in chosen[a]] for a, vs in axes.items()}
        if not listed:
            raise FedsecError(f"no run matches --only {' '.join(only)}")
    runs = [_load_run(root, run_id, rel, labels) for root, run_id, rel, labels in listed]
    for run in runs:  # every label value appears on its axis
        for key, value in run.labels.items():
            values = axes.setdefault(key, [])
            if value not in values:
                values.append(value)
    for run in runs:  # and every run has a value for every axis
        for key in axes:
            run.labels.setdefault(key, "(none)")
            if run.labels[key] not in axes[key]:
                axes[key].append(run.labels[key])
    seen: set[str] = set()
    for run in runs:
        if run.id in seen:
            raise FedsecError(
                f"run {run.id!r} appears in more than one results directory; "
                "give the sweeps an axis (e.g. regime) whose labels set them apart"
            )
        seen.add(run.id)
    return SweepResults(
        roots=[Path(d) for d in dirs],
        name=" + ".join(dict.fromkeys(names)),
        axes=axes,
        runs=runs,
        source=", ".join(dict.fromkeys(sources)),
    )


def _read_sweep_json(
    path: Path,
) -> tuple[str, dict[str, list[str]], list[tuple[str, str, dict[str, str]]]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        axes = {str(k): [str(v) for v in vals] for k, vals in doc.get("axes", {}).items()}
        entries = []
        for r in doc["runs"]:
            labels = {str(k): str(v) for k, v in r.get("labels", {}).items()}
            rel = str(r.get("dir") or r["id"])
            entries.append((str(r.get("id", rel)), rel, labels))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise FedsecError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    return str(doc.get("name", path.parent.name)), axes, entries


def _discover(root: Path) -> tuple[dict[str, list[str]], list[tuple[str, str, dict[str, str]]]]:
    """Run directories below ``root``, labelled by their ``key=value`` path components."""
    dirs = sorted(
        {p.parent for pattern in (METRICS_FILE, SUMMARY_FILE) for p in root.rglob(pattern)}
    )
    entries = []
    for d in dirs:
        rel = d.relative_to(root).as_posix() if d != root else "."
        labels = dict(part.split("=", 1) for part in Path(rel).parts if "=" in part)
        entries.append((rel, rel, labels))
    if entries and not any(labels for _, _, labels in entries):
        entries = [(rel, rel, {"run": rel}) for rel, _, _ in entries]
    axes: dict[str, list[str]] = {}
    for _, _, labels in entries:
        for key, value in labels.items():
            axes.setdefault(key, [])
            if value not in axes[key]:
                axes[key].append(value)
    return {k: sorted(v, key=_natural_key) for k, v in axes.items()}, entries


def _natural_key(text: str) -> list:
    """Sort key that orders "2" before "10" and "0.05" before "0.5"."""
    try:
        return [0, float(text), ""]
    except ValueError:
        return [1, 0.0] + [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _load_run(root: Path, run_id: str, rel: str, labels: dict[str, str]) -> Run:
    path = root / rel
    if not path.is_dir():
        return Run(run_id, path, labels, "missing")
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    try:
        rounds = read_rounds(path / METRICS_FILE)
    except FedsecError as err:  # a torn line before the last, or a format it cannot read
        print(f"fedsec: report: warning: run {run_id} left out: {err}", file=sys.stderr)
        return Run(run_id, path, labels, "unfinished")
    if not isinstance(summary, dict):
        return Run(run_id, path, labels, "unfinished", rounds=rounds)
    return Run(run_id, path, labels, "finished", summary, rounds)
