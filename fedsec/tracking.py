"""Where a run's rounds go: ``metrics.jsonl`` and the experiment trackers of ``[log]``.

Every round's record goes to a list of sinks, ``metrics.jsonl`` first (the source of
truth, which ``summary.json``, reports and ``--resume`` read), then each tracker the
config turns on (all off by default; ``pip install -e ".[track]"`` installs the packages)::

    [log]
    csv = true              # RUN_DIR/metrics.csv
    tensorboard = true      # RUN_DIR/tensorboard/ (torch.utils.tensorboard.SummaryWriter)
    wandb = "offline"       # "off" | "offline" | "online": Weights & Biases, in RUN_DIR/wandb/

A sink (:class:`Sink`) is told the rounds a run keeps when it starts (none for a fresh
run; with ``--resume``, the rounds up to the checkpoint) and then each new round.
Adding a tracker is a :class:`Sink` subclass, a line in :func:`tracker_sinks`, and its
key in ``fedsec.config.LogConfig``; the server loop never names one.

What a tracker gets (:func:`scalar_metrics`, the same for all three): the numbers of a
round's record under their ``metrics.jsonl`` names, booleans as 1/0; a list (the
round's clients, its attackers, the accepted and rejected ones) and a table keyed by
client id (scores, evasion scales, invalid or failed replies) as its length,
``n_<key>``; ``certified_accuracy`` (crfl's ``{radius: share}``) as one value per
radius, ``certified_accuracy/<radius>``. Left out: text (``kept_previous_reason``,
notes), the other tables (crfl's ``certification`` constants) and the line's
``format_version``; they stay in ``metrics.jsonl``. The round is the step
(TensorBoard, W&B) or the first column (CSV).

No round is logged twice, also across ``--resume`` (which drops the rounds after the
checkpoint and runs them again): every tracker's files are rebuilt from the rounds the
run keeps. metrics.csv is rewritten from them; the TensorBoard event files are replaced
by one that holds the kept rounds (``SummaryWriter(purge_step=...)`` would leave the
dropped rounds in the old file for readers to skip, and TensorBoard's own
``EventAccumulator`` does not skip them for tensor summaries, which fedsec writes to
keep float64 values exact); an offline W&B run is replaced by one with the same run id
that holds the kept rounds. An online W&B run is resumed (``resume="allow"``, same id)
and gets only the rounds from its ``starting_step`` on: the server keeps what it has.

A run of a sweep is tagged with the sweep's name and its cell's axis labels, which
``fedsec sweep`` hands its child runs in the environment variable ``FEDSEC_SWEEP_CELL``;
TensorBoard gets them as hparams (with the headline config keys, so every run of a
sweep has the same keys) and in a text summary with the whole config, W&B as the run's
group (the sweep), tags (``axis=label``) and config (``sweep``, ``axes`` and the
experiment's sections). They are kept in ``RUN_DIR/trackers.json`` with the W&B run
id, so a run resumed by hand keeps them.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import numbers
import os
import secrets
import shutil
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsec_core.atomic import atomic_write_text
from fedsec_core.errors import ConfigError
from fedsec_core.protocol import FORMAT_KEY, RoundRecord

if TYPE_CHECKING:  # pragma: no cover
    from fedsec.config import ExperimentConfig, LogConfig

CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B's own folder name under the ``dir`` it is given
STATE_FILE = "trackers.json"
SWEEP_ENV = "FEDSEC_SWEEP_CELL"
WANDB_MODES = ("off", "offline", "online")
WANDB_PROJECT = "fedsec"  # unless WANDB_PROJECT is set
INSTALL_HINT = 'pip install -e ".[track]"'

#: Tables flattened to one value per key (``key/subkey``): their keys are the same in
#: every round (crfl's radii), unlike the per-client tables, which are counted.
SERIES_TABLES = ("certified_accuracy",)
#: Config keys every run's TensorBoard hparams carry besides the sweep's axes.
HEADLINE_KEYS = ("seed", "data.name", "model.name", "attack.name", "defense.name")
#: The metrics the TensorBoard hparams view shows beside them.
HPARAM_METRICS = ("main_accuracy", "backdoor_accuracy", "test_loss")


# ----------------------------------------------------------------------- metrics
def scalar_metrics(record: dict[str, Any]) -> dict[str, float | int]:
    """The numbers of one round's record (its metrics.jsonl object,
    ``RoundRecord.to_dict``) that a tracker logs (see the module docstring); ``round`` is
    left out (it is the step), and so is the record's format version."""
    out: dict[str, float | int] = {}
    for key, value in record.items():
        if key in ("round", FORMAT_KEY):
            continue
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, numbers.Real):
            out[key] = value
        elif isinstance(value, list):
            out[f"n_{key}"] = len(value)
        elif isinstance(value, dict) and key in SERIES_TABLES:
            for sub, v in value.items():
                if isinstance(v, numbers.Real) and not isinstance(v, bool):
                    out[f"{key}/{sub}"] = v
        elif isinstance(value, dict) and all(str(k).isdigit() for k in value):
            out[f"n_{key}"] = len(value)  # a table keyed by client id
    return out


# ----------------------------------------------------------------------- sinks
class Sink:
    """Receives a run's rounds. ``start`` is called once with the rounds the run keeps
    (``[]`` for a fresh run), then ``log_round`` once per new round, then ``close``."""

    def start(self, kept: list[RoundRecord]) -> None:
        for record in kept:
            self.log_round(record)

    def log_round(self, record: RoundRecord) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JsonlSink(Sink):
    """``metrics.jsonl``: one JSON object per round, appended, flushed and synced as it
    ends (a killed run loses no finished round)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, kept: list[RoundRecord]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r.to_dict()) + "\n" for r in kept))

    def log_round(self, record: RoundRecord) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record.to_dict(), sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


class CsvSink(Sink):
    """``metrics.csv``: one row per round, ``round`` then the :func:`scalar_metrics`
    columns in alphabetical order (a key that no round has yet is an empty cell). A
    round that brings a new column rewrites the file whole; any other is appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []

    def start(self, kept: list[RoundRecord]) -> None:
        self.rows = [_csv_row(r) for r in kept]
        self._rewrite()

    def log_round(self, record: RoundRecord) -> None:
        row = _csv_row(record)
        self.rows.append(row)
        if not set(row) <= set(self.columns):
            self._rewrite()
            return
        with self.path.open("a", encoding="utf-8", newline="") as f:
            _csv_writer(f, self.columns).writerow(row)
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self) -> None:
        names = {k for row in self.rows for k in row} - {"round"}
        self.columns = ["round", *sorted(names)]
        text = io.StringIO()
        writer = _csv_writer(text, self.columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, text.getvalue())


def _csv_row(record: RoundRecord) -> dict[str, Any]:
    return {"round": record.round, **scalar_metrics(record.to_dict())}


def _csv_writer(f: Any, columns: list[str]) -> csv.DictWriter:
    return csv.DictWriter(f, columns, restval="", lineterminator="\n")


class TensorBoardSink(Sink):
    """TensorBoard event files in ``RUN_DIR/tensorboard``: each metric a scalar (a
    float64 tensor summary, so it reads back equal to metrics.jsonl) at step = round;
    at step 0 the hparams (sweep, axes, headline keys) and a text summary of the run."""

    def __init__(self, log_dir: Path, labels: RunLabels, config: ExperimentConfig) -> None:
        self.log_dir = log_dir
        self.labels = labels
        self.config = config
        self.writer: Any = None

    def start(self, kept: list[RoundRecord]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("events.out.tfevents.*"):
            old.unlink()  # the run's earlier files: rebuilt below from the kept rounds
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        for summary in hparams(
            self.labels.hparams(self.config), {name: 0.0 for name in HPARAM_METRICS}
        ):
            self.writer.file_writer.add_summary(summary, 0)
        self.writer.add_text("run", self.labels.describe(self.config), 0)
        for record in kept:
            self._add(record)
        self.writer.flush()

    def log_round(self, record: RoundRecord) -> None:
        self._add(record)
        self.writer.flush()

    def _add(self, record: RoundRecord) -> None:
        for name, value in scalar_metrics(record.to_dict()).items():
            self.writer.add_scalar(name, value, record.round, new_style=True, double_precision=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbSink(Sink):
    """A Weights & Biases run in ``RUN_DIR/wandb`` (``dir`` = the run directory), offline
    (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later) or online. Its console
    is not captured (fedsec prints its own lines). The project is ``$WANDB_PROJECT`` or
    ``fedsec``; the entity is W&B's default (``$WANDB_ENTITY``). ``close`` ends W&B's
    session in this process (``wandb.teardown``), so that the run's files are whole
    when the run returns."""

    def __init__(
        self, run_dir: Path, mode: str, labels: RunLabels, config: ExperimentConfig
    ) -> None:
        self.run_dir = run_dir
        self.mode = mode
        self.labels = labels
        self.config = config
        self.run: Any = None
        self.first_step = 0

    def start(self, kept: list[RoundRecord]) -> None:
        import wandb

        if self.mode == "offline":  # the earlier offline runs of this directory, rebuilt
            self._remove_offline_runs(keep=None)
        repo = Path(__file__).resolve().parents[1]
        git = {"git_root": str(repo)} if (repo / ".git").exists() else {"disable_git": True}
        self.run = wandb.init(
            dir=str(self.run_dir),
            mode=self.mode,
            id=self.labels.wandb_id,
            resume="allow" if self.mode == "online" else None,
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
            name=self.labels.name,
            group=self.labels.sweep or None,
            tags=self.labels.tags(),
            config=self.labels.wandb_config(self.config),
            reinit="create_new",
            settings=wandb.Settings(console="off", **git),
        )
        # Offline, W&B ignores resume and the run starts at step 0; online, a resumed
        # run starts after the last step the server holds.
        self.first_step = self.run.starting_step
        for record in kept:
            self.log_round(record)

    def log_round(self, record: RoundRecord) -> None:
        if record.round >= self.first_step:
            self.run.log(scalar_metrics(record.to_dict()), step=record.round, commit=True)

    def close(self) -> None:
        if self.run is not None:
            import wandb

            this_run = Path(self.run.dir).parent  # RUN_DIR/wandb/offline-run-<time>-<id>
            self.run.finish()
            # finish() can return before W&B's service has written the run's file out;
            # teardown waits for it (and ends W&B's session in this process).
            wandb.teardown()
            if self.mode == "offline":  # what a killed run's W&B process wrote as it died
                self._remove_offline_runs(keep=this_run)
            self.run = None

    def _remove_offline_runs(self, keep: Path | None) -> None:
        for old in (self.run_dir / WANDB_DIR).glob("offline-run-*"):
            if keep is None or old.resolve() != keep.resolve():
                shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------- labels
@dataclass
class RunLabels:
    """How the trackers name a run: its name, the sweep it is a cell of and the cell's
    axis labels, and its W&B run id."""

    name: str
    sweep: str = ""
    axes: dict[str, str] = field(default_factory=dict)
    wandb_id: str = ""

    def tags(self) -> list[str]:
        return [f"{axis}={label}"[:64] for axis, label in self.axes.items()]  # W&B: <= 64

    def hparams(self, config: ExperimentConfig) -> dict[str, Any]:
        flat = config.to_flat()
        return {
            "sweep": self.sweep,
            **{f"axis/{axis}": label for axis, label in self.axes.items()},
            **{key: flat[key] for key in HEADLINE_KEYS},
        }

    def wandb_config(self, config: ExperimentConfig) -> dict[str, Any]:
        return {"sweep": self.sweep, "axes": dict(self.axes), **config.to_dict()}

    def describe(self, config: ExperimentConfig) -> str:
        cell = ", ".join(self.tags()) or "(not a sweep)"
        return (
            f"run {self.name}; sweep {self.sweep or '(none)'}: {cell}\n\n"
            f"```toml\n{config.to_toml()}```\n"
        )


def run_labels(run_dir: Path, resuming: bool) -> RunLabels:
    """The run's labels: those saved in ``trackers.json`` when it resumes, else the
    sweep cell of ``$FEDSEC_SWEEP_CELL`` and a new W&B id (saved for a later resume)."""
    path = run_dir / STATE_FILE
    if resuming and path.is_file():
        return RunLabels(**json.loads(path.read_text(encoding="utf-8")))
    cell = json.loads(os.environ.get(SWEEP_ENV) or "{}")
    sweep = str(cell.get("sweep", ""))
    axes = {str(axis): str(label) for axis, label in cell.get("axes", {}).items()}
    name = "/".join([sweep, *(f"{a}={v}" for a, v in axes.items())]) if sweep else run_dir.name
    alphabet = string.ascii_lowercase + string.digits
    labels = RunLabels(name, sweep, axes, "".join(secrets.choice(alphabet) for _ in range(8)))
    atomic_write_text(path, json.dumps(asdict(labels), indent=2) + "\n")
    return labels


def sweep_env(sweep: str, labels: dict[str, str]) -> dict[str, str]:
    """The environment entry that tells a sweep's child run its cell (see run_labels)."""
    return {SWEEP_ENV: json.dumps({"sweep": sweep, "axes": labels})}


# ----------------------------------------------------------------------- opening
def tracker_sinks(run_dir: Path, config: ExperimentConfig, resuming: bool) -> list[Sink]:
    """The trackers ``config.log`` turns on for ``run_dir``, not started yet."""
    log = config.log
    sinks: list[Sink] = []
    if log.csv:
        sinks.append(CsvSink(run_dir / CSV_FILE))
    if log.tensorboard or log.wandb != "off":
        labels = run_labels(run_dir, resuming)
        if log.tensorboard:
            sinks.append(TensorBoardSink(run_dir / TENSORBOARD_DIR, labels, config))
        if log.wandb != "off":
            sinks.append(WandbSink(run_dir, log.wandb, labels, config))
    return sinks


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None


def check_trackers(log: LogConfig) -> None:
    """ConfigError (one line) when ``[log]`` asks for a tracker whose package is missing."""
    wanted = {"log.tensorboard = true": ("tensorboard", log.tensorboard)}
    wanted[f"log.wandb = {log.wandb!r}"] = ("wandb", log.wandb != "off")
    for setting, (package, on) in wanted.items():
        if on and not installed(package):
            raise ConfigError(
                f"{setting} needs the {package} package, which is not installed: "
                f"{INSTALL_HINT} (or set it off)"
            )
