"""``fedsec sweep``: a grid of experiments, several at a time, resumable.

A sweep file names a base experiment and the axes to cross::

    name = "cpu-table"
    base = "base.toml"                 # relative to the sweep file (or a [base] table)
    order = ["defense", "attack", "seed"]   # run directory nesting (default: file order)

    [axes]
    seed = [0, 1, 2]                   # a list: the values of the config key named like the axis

    [axes.defense]                     # a table: label -> config overrides
    fedavg = { "defense.name" = "fedavg" }
    multi-metrics-reference = { defense = { name = "multi-metrics", variant = "reference" } }

A one-at-a-time design (a few values of one axis around a base, some defenses or
attacks only at the base) leaves combinations out with ``exclude``, a list of tables;
a combination that matches every axis of one table is not run::

    exclude = [{ regime = ["interval-2", "interval-10"], defense = ["krum", "weak-dp"] }]

Every other combination is one run, in ``OUT/<axis>=<label>/.../`` (a normal run directory:
config.toml, metrics.jsonl, summary.json, model.pt, plus run.log). ``OUT/sweep.json``
lists the runs and their labels; ``fedsec report OUT`` reads it.

Resuming is the normal mode: a run with a summary.json is finished and skipped, a run
with a checkpoint continues from it (``fedsec run --resume``), anything else starts
over. So a sweep killed midway is rerun with the same command, and it redoes nothing
that finished. Runs start one seed at a time (all cells of the first seed, then the
next), so a sweep stopped early holds whole seeds of the table.

``--only AXIS=LABEL[,LABEL...]`` (repeatable) runs a slice of the grid first, the cells
whose labels match every one given; the rest runs later with the same ``--out``, and
``sweep.json`` lists the whole grid either way.

A finished run of another sweep (or any run directory) that is the same experiment as
one of this sweep's cells need not run again: ``fedsec sweep FILE --reuse DIR`` copies
every finished run under DIR whose config equals a cell's (compared as configs, as
above) into that cell before the sweep starts, and lists what it copied in
``OUT/reused.json``. A rerun from scratch gives the same metrics (runs are
deterministic), so the copy changes no number, only the hours spent.

Each run is a child ``fedsec run`` process (a crash or a leak in one run cannot take the
others down); ``parallel`` of them run at once, by default as many as the machine's cores
hold at ``engine.client_num_cpus`` threads each. Pre-trained initial models are built
once, before the runs start, so parallel runs never train the same one twice.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec.config import (
    _SECTIONS,
    AttackConfig,
    DefenseConfig,
    ExperimentConfig,
    load_config,
    read_toml,
)
from fedsec.results import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    differences_words,
    read_rounds,
    run_state,
    written_config,
)
from fedsec.tracking import sweep_env
from fedsec_core.atomic import atomic_write_text
from fedsec_core.errors import ConfigError, FedsecError

MANIFEST_FILE = "sweep.json"
LOG_FILE = "run.log"
_SWEEP_KEYS = ("name", "base", "order", "parallel", "axes", "exclude")


@dataclass
class SweepRun:
    """One cell of the grid: its labels, its resolved config and its directory."""

    labels: dict[str, str]
    config: ExperimentConfig
    dir: Path

    @property
    def id(self) -> str:
        return "/".join(f"{axis}={label}" for axis, label in self.labels.items())

    def state(self) -> str:
        """``done`` (summary written), ``partial`` (checkpoint to resume from) or ``new``.

        A directory that holds a different experiment (the sweep file was edited since)
        is an error, never silently reused."""
        # Compared as configs, not as text: a key added to fedsec since the run was written
        # reads back as its default, which keeps the old behaviour, so the run still counts.
        state, changes = run_state(self.dir, self.config)
        if changes:
            raise ConfigError(
                f"{self.dir} holds a different experiment than the sweep's {self.id} "
                f"({differences_words(changes)}; was the sweep file or its base edited?); "
                "move that directory away or use another --out"
            )
        return "new" if state == "empty" else state


def _written_config(path: Path) -> str | None:
    """The run directory's config.toml as this version of fedsec writes it (None: unreadable)."""
    try:
        config = written_config(path.parent)
    except FedsecError:
        return None
    return None if config is None else config.to_toml()


@dataclass
class Sweep:
    """A parsed, validated sweep file (see the module docstring)."""

    name: str
    base: Path
    axes: dict[str, list[str]]
    runs: list[SweepRun]
    root: Path
    parallel: int | None = None

    def select(self, only: list[str]) -> list[SweepRun]:
        """The runs whose labels match every ``AXIS=LABEL[,LABEL...]`` of ``only`` (all
        runs when it is empty): a slice of the grid to run first."""
        chosen = only_labels(only, self.axes, self.name)
        return [r for r in self.runs if all(r.labels[a] in ls for a, ls in chosen.items())]


def only_labels(
    only: list[str] | tuple[str, ...], axes: dict[str, list[str]], of: str
) -> dict[str, set[str]]:
    """``--only AXIS=LABEL[,LABEL...]`` items (``fedsec sweep``, ``fedsec report``) as
    {axis: labels}; a one-line ConfigError for an axis or a label that ``axes`` (those
    of ``of``, named in the message) does not have."""
    chosen: dict[str, set[str]] = {}
    for item in only:
        axis, _, labels = item.partition("=")
        if axis not in axes or not labels:
            raise ConfigError(
                f"--only {item}: give AXIS=LABEL[,LABEL...] with an axis of {of}: {', '.join(axes)}"
            )
        wanted = set(labels.split(","))
        unknown = sorted(wanted - set(axes[axis]))
        if unknown:
            raise ConfigError(
                f"--only {item}: {axis} has no label {unknown[0]!r}; its labels: "
                + ", ".join(axes[axis])
            )
        chosen[axis] = chosen.get(axis, set()) | wanted
    return chosen


def is_sweep_file(path: str | Path) -> bool:
    """Whether ``path`` reads as a sweep file (it has ``axes``, or ``base`` and no section
    of an experiment), for the error of ``fedsec run SWEEP.toml``."""
    try:
        spec = read_toml(path)
    except ConfigError:
        return False
    return "axes" in spec or ("base" in spec and not set(spec) & set(_SECTIONS))


def load_sweep(
    path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None
) -> Sweep:
    """Read and check a sweep file; every run's config is built and validated here, so
    a bad value anywhere in the grid is an error before any run starts.

    ``overrides`` (``section.key=value``) change the base experiment before the axes
    are applied, e.g. ``data.dir`` where the data set lives on this machine."""
    path = Path(path)
    spec = read_toml(path)
    unknown = sorted(set(spec) - set(_SWEEP_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown sweep key {unknown[0]!r}; valid keys: {', '.join(_SWEEP_KEYS)}"
        )
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{path}: name must be a non-empty string without '/', got {name!r}")
    if "base" not in spec:
        raise ConfigError(
            f"{path}: missing 'base' (the experiment the axes modify: a TOML "
            "file path, or the experiment itself as a [base] table)"
        )
    axes = _parse_axes(path, spec.get("axes"))
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        for axis, options in axes.items():
            if any(key in assignment for assignment in options.values()):
                raise ConfigError(f"--set {item}: {key} is set by the sweep's axis {axis!r}")
    if isinstance(spec["base"], dict):  # the experiment inline
        base = path.resolve()
        base_config = (
            ExperimentConfig.from_dict(spec["base"]).with_overrides(overrides or []).validate()
        )
    else:
        base = (path.parent / str(spec["base"])).resolve()
        if not base.is_file():
            raise ConfigError(f"{path}: base experiment {base} does not exist")
        base_config = load_config(base, overrides)
    order = spec.get("order", list(axes))
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(axes):
        raise ConfigError(f"{path}: order must list every axis once: {', '.join(axes)}")
    axes = {axis: axes[axis] for axis in order}
    parallel = spec.get("parallel")
    if parallel is not None and (
        isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1
    ):
        raise ConfigError(f"{path}: parallel must be an int >= 1, got {parallel!r}")

    exclude = _parse_exclude(path, spec.get("exclude", []), axes)
    root = Path(out) if out else Path("runs") / "sweeps" / name
    runs, errors = [], []
    for combo in itertools.product(*(options.items() for options in axes.values())):
        labels = {axis: label for axis, (label, _) in zip(axes, combo, strict=True)}
        if any(all(labels[axis] in chosen for axis, chosen in rule.items()) for rule in exclude):
            continue
        cell: dict[str, Any] = {}
        origin: dict[str, str] = {}  # key -> where the sweep file sets it
        for axis, (label, assignment) in zip(axes, combo, strict=True):
            cell.update(assignment)
            origin.update(
                {
                    key: f"axes.{axis}" if key == axis else f"axes.{axis}.{label}"
                    for key in assignment
                }
            )
        try:
            config = _apply(base_config, cell, labels, origin)
        except ConfigError as err:  # every bad cell is reported, one line each
            errors.append(str(err))
            continue
        run_dir = root.joinpath(*(f"{axis}={label}" for axis, label in labels.items()))
        runs.append(SweepRun(labels, config, run_dir))
    if errors:
        more = len(errors) - _MAX_CELL_ERRORS
        raise ConfigError(
            "\n".join(
                errors[:_MAX_CELL_ERRORS] + ([f"... and {more} more bad runs"] if more > 0 else [])
            )
        )
    if not runs:
        raise ConfigError(f"{path}: exclude leaves no run of the grid")
    return Sweep(name, base, {a: list(o) for a, o in axes.items()}, runs, root, parallel)


def _parse_axes(path: Path, axes: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Axis -> label -> flat overrides."""
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{path}: [axes] must be a table with at least one axis")
    parsed: dict[str, dict[str, dict[str, Any]]] = {}
    for axis, value in axes.items():
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"{path}: axis {axis!r} has no values")
            options = {_label(v): {axis: v} for v in value}
        elif isinstance(value, dict):
            if not value:
                raise ConfigError(f"{path}: axis {axis!r} has no options")
            options = {}
            for label, assignment in value.items():
                if not isinstance(assignment, dict):
                    raise ConfigError(
                        f"{path}: axes.{axis}.{label} must be a table of config overrides, "
                        f'e.g. {{ "defense.name" = "krum" }}'
                    )
                options[label] = _flatten(assignment)
        else:
            raise ConfigError(
                f"{path}: axis {axis!r} must be a list of values or a table of label -> overrides"
            )
        for label in options:
            if not label or "/" in label or "=" in label:
                raise ConfigError(
                    f"{path}: axis {axis!r} label {label!r} must be non-empty without '/' or '='"
                )
        if isinstance(value, list) and len(options) != len(value):
            raise ConfigError(f"{path}: axis {axis!r} repeats a value")
        parsed[axis] = options
    return parsed


def _parse_exclude(
    path: Path, rules: Any, axes: dict[str, dict[str, dict[str, Any]]]
) -> list[dict[str, set[str]]]:
    """``exclude``: a list of tables ``{axis = label or [labels], ...}``; a combination that
    matches every axis of one table is not a run of the sweep (e.g. the defenses that a
    one-at-a-time axis leaves out)."""
    if not isinstance(rules, list) or not all(isinstance(r, dict) and r for r in rules):
        raise ConfigError(
            f"{path}: exclude must be a list of tables {{axis = label or [labels]}}, "
            f'e.g. [{{ defense = ["krum"], attack = "dba" }}]'
        )
    parsed = []
    for i, rule in enumerate(rules):
        chosen: dict[str, set[str]] = {}
        for axis, labels in rule.items():
            if axis not in axes:
                raise ConfigError(
                    f"{path}: exclude[{i}] names axis {axis!r}; axes: {', '.join(axes)}"
                )
            labels = [labels] if not isinstance(labels, list) else labels
            names = [_label(v) for v in labels]
            unknown = [n for n in names if n not in axes[axis]]
            if unknown or not names:
                raise ConfigError(
                    f"{path}: exclude[{i}].{axis} has no label "
                    f"{unknown[0] if unknown else '(empty list)'!r}; "
                    f"labels: {', '.join(axes[axis])}"
                )
            chosen[axis] = set(names)
        parsed.append(chosen)
    return parsed


def _label(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


_MAX_CELL_ERRORS = 50
"""Bad runs of a sweep listed one line each; the rest are counted."""


def _apply(
    base: ExperimentConfig,
    overrides: dict[str, Any],
    labels: dict[str, str],
    origin: dict[str, str] | None = None,
) -> ExperimentConfig:
    flat = base.to_flat()
    if overrides.get("attack.name", flat["attack.name"]) != flat["attack.name"]:
        # A different attack has different parameters: keep only the schedule keys of
        # the base, so one attack's parameters never leak into another's.
        schedule = {f"attack.{f}" for f in AttackConfig.__dataclass_fields__ if f != "params"}
        flat = {k: v for k, v in flat.items() if not k.startswith("attack.") or k in schedule}
    if overrides.get("defense.name", flat["defense.name"]) != flat["defense.name"]:
        flat = {
            k: v for k, v in flat.items() if not k.startswith("defense.") or k == "defense.name"
        }
    flat.update(overrides)
    where = ", ".join(f"{a}={v}" for a, v in labels.items())
    try:
        config = ExperimentConfig.from_flat(flat)
        problem = _unknown_written_key(config, overrides, origin or {})
        if problem:
            raise ConfigError(problem)
        return config.validate()
    except ConfigError as err:
        text, origin = str(err), origin or {}
        written = [  # the keys the error is about, and where the sweep file writes them
            f"{origin[key]} sets {key} = {overrides[key]!r}"
            for key in overrides
            if key in origin
            and origin[key] not in text
            and (key in text or repr(key.partition(".")[2]) in text)
        ]
        text += f" ({'; '.join(written)})" if written else ""
        raise ConfigError(f"sweep run {where}: {text}") from None


def _unknown_written_key(
    config: ExperimentConfig, overrides: dict[str, Any], origin: dict[str, str]
) -> str:
    """The first key a cell writes that its attack or defense has no parameter for, in
    words naming the key as written and where (a misspelled ``defense.nmae`` would
    otherwise read as a parameter of the base's defense); "" if none. Other unknown keys
    fail in ``ExperimentConfig.from_flat`` already, naming the key."""
    from attacks import ATTACKS
    from defenses import defense_parameters

    for key in overrides:
        section, _, name = key.partition(".")
        if section not in ("attack", "defense") or not name:
            continue
        fields = {
            f.name
            for f in dataclasses.fields(AttackConfig if section == "attack" else DefenseConfig)
        } - {"params"}
        if name in fields:
            continue
        chosen = config.attack.name if section == "attack" else config.defense.name
        try:
            if section == "attack":
                cls = ATTACKS.get(chosen)
                params = set(cls.parameters()) if cls is not None else None
            else:
                params = set(defense_parameters(chosen))
        except ConfigError:
            params = None
        if params is None or name in params:
            continue  # an unknown attack or defense name is its own error
        valid = sorted(fields | params)
        near = difflib.get_close_matches(name, valid, n=1)
        hint = f"; did you mean {section}.{near[0]}?" if near else ""
        return (
            f"{origin.get(key, 'the cell')} sets {key!r}, which is neither a key of "
            f"[{section}] nor a parameter of {section} {chosen!r}{hint} (valid: "
            + ", ".join(valid)
            + ")"
        )
    return ""


def write_manifest(sweep: Sweep, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": sweep.name,
        "base": str(sweep.base),
        "axes": sweep.axes,
        "runs": [
            {"id": r.id, "dir": str(r.dir.relative_to(root)), "labels": r.labels}
            for r in sweep.runs
        ],
    }
    atomic_write_text(root / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


REUSED_FILE = "reused.json"


def reuse_finished(sweep: Sweep, sources: list[Path], dry_run: bool = False) -> dict[str, str]:
    """Copy each finished run under ``sources`` that is the same experiment as a cell of
    ``sweep`` not yet run into that cell's directory; return {cell id: source dir}.

    A source run counts when it has a summary (it finished) and its config reads back as
    the cell's config. Cells already done or partial are left alone. With ``dry_run``,
    nothing is copied: the answer says what would be."""
    finished: dict[str, Path] = {}
    for source in sources:
        if not source.is_dir():
            raise ConfigError(
                f"--reuse {source}: no such directory (give a sweep's or a run's output)"
            )
        for written in sorted(source.rglob(CONFIG_FILE)):
            if (written.parent / SUMMARY_FILE).is_file():
                finished.setdefault(_written_config(written) or "", written.parent)
    finished.pop("", None)
    copied: dict[str, str] = {}
    for run in sweep.runs:
        source = finished.get(run.config.to_toml())
        if source is None or source.resolve() == run.dir.resolve() or run.state() != "new":
            continue
        copied[run.id] = str(source)
        if not dry_run:
            shutil.copytree(source, run.dir, dirs_exist_ok=True)
    if copied and not dry_run:
        path = sweep.root / REUSED_FILE
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        atomic_write_text(path, json.dumps({**earlier, **copied}, indent=2) + "\n")
    return copied


def default_parallel(sweep: Sweep) -> int:
    """Runs at once: the sweep's ``parallel``, else cores // threads per run (>= 1)."""
    if sweep.parallel:
        return sweep.parallel
    threads = max(r.config.engine.client_num_cpus for r in sweep.runs)
    return max(1, (os.cpu_count() or 1) // threads)


def pretrain_all(sweep: Sweep, log=print, runs: list[SweepRun] | None = None) -> None:
    """Build every distinct pre-trained initial model of ``runs`` (default: the whole
    grid) once, sequentially, in this process."""
    from fedsec.pretrain import initial_state
    from fedsec.task import get_task

    seen = set()
    for run in sweep.runs if runs is None else runs:
        cfg, t = run.config, run.config.train
        if t.pretrain_epochs == 0:
            continue
        key = (
            cfg.seed,
            json.dumps(cfg.to_dict()["data"], sort_keys=True),
            cfg.model.name,
            t.pretrain_epochs,
            t.lr,
            t.batch_size,
            t.momentum,
            t.weight_decay,
            t.pretrain_cache,
            cfg.engine.client_num_cpus,
            cfg.engine.device,
        )
        if key in seen:
            continue
        seen.add(key)
        import torch

        torch.set_num_threads(cfg.engine.client_num_cpus)
        initial_state(get_task(cfg), log=log)


def run_sweep(
    sweep: Sweep,
    root: Path,
    parallel: int,
    progress: bool = True,
    runs: list[SweepRun] | None = None,
) -> list[SweepRun]:
    """Run every unfinished run (of ``runs``, a slice of the grid, when given); return
    the runs that failed. The manifest lists the whole grid either way."""
    from tqdm import tqdm

    write_manifest(sweep, root)
    runs = sweep.runs if runs is None else runs
    todo = [r for r in runs if r.state() != "done"]
    if "seed" in sweep.axes:
        # One seed at a time: a sweep stopped early holds whole seeds of the table.
        seeds = sweep.axes["seed"]
        todo.sort(key=lambda r: seeds.index(r.labels["seed"]))
    # Progress counts rounds across every run (the parallel runs' rounds interleave);
    # the postfix counts finished runs.
    rounds_done = {r.id: len(read_rounds(r.dir / METRICS_FILE)) for r in runs}
    runs_done = len(runs) - len(todo)
    failed: list[SweepRun] = []
    lock = threading.Lock()
    bar = tqdm(
        total=sum(r.config.train.rounds for r in runs),
        initial=sum(min(rounds_done[r.id], r.config.train.rounds) for r in runs),
        desc=sweep.name,
        unit="round",
        disable=not progress,
        dynamic_ncols=True,
    )
    bar.set_postfix_str(f"runs {runs_done}/{len(runs)}")

    def on_round(run: SweepRun, server_round: int) -> None:
        with lock:
            if server_round > rounds_done[run.id]:  # a resumed run repeats some rounds
                bar.update(server_round - rounds_done[run.id])
                rounds_done[run.id] = server_round

    def one(run: SweepRun) -> None:
        nonlocal runs_done
        with lock:
            bar.write(f"fedsec: started {run.id}; its log: {run.dir / LOG_FILE}")
        ok = _run_child(run, lambda server_round: on_round(run, server_round), sweep.name)
        with lock:
            runs_done += 1
            if not ok:
                failed.append(run)
                bar.write(f"fedsec: run {run.id} failed; see {run.dir / LOG_FILE}")
            bar.set_postfix_str(f"runs {runs_done}/{len(runs)}")

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for _ in pool.map(one, todo):
            pass
    bar.close()
    return failed


def _run_child(
    run: SweepRun, on_round: Callable[[int], None] = lambda _: None, sweep: str = ""
) -> bool:
    """One run as a ``fedsec run`` child process; its output goes to run.log, and
    ``on_round(k)`` is called as it logs round k. The child is told its cell (the
    ``sweep``'s name and the run's labels) for the experiment trackers' tags."""
    run.dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fedsec.cli", "run"]
    if run.state() == "partial":
        cmd += ["--resume", str(run.dir)]
    else:
        # The resolved config is the run's whole experiment: rerunning it alone gives
        # the same numbers (``fedsec run RUN/config.toml``).
        atomic_write_text(run.dir / CONFIG_FILE, run.config.to_toml())
        cmd += [str(run.dir / CONFIG_FILE), "--out", str(run.dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **sweep_env(sweep, run.labels)}
    with (run.dir / LOG_FILE).open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        with subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent,
        ) as proc:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if match := _ROUND_LINE.match(line):
                    on_round(int(match.group(1)))
            code = proc.wait()
    return code == 0 and run.state() == "done"


#: The per-round line ``fedsec run`` prints (fedsec.server._progress_line).
_ROUND_LINE = re.compile(r"^round +(\d+)/\d+ ")


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the sweep process dies (even by
    SIGKILL), so a rerun of a killed sweep never races an orphaned run on its directory."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
