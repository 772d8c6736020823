"""The ``fedsec`` command.

    fedsec run [CONFIG.toml] [--set section.key=value ...] [--out DIR [--overwrite]]
    fedsec run --resume RUN_DIR
    fedsec run                          (no config: the showcase, fedsec/showcase.toml)
    fedsec sweep SWEEP.toml [--set section.key=value ...] [--out DIR] [--parallel N] [--dry-run]
                        [--only AXIS=LABEL,... ...] [--reuse DIR ...]
    fedsec partition [CONFIG.toml] [--set ...] [--out FILE.png]
                        (default --out: runs/partition-<config>.png)

A user error (bad config, missing data) prints one line and exits with code 2 before
any training starts. Nothing is lost: ``--out`` refuses a directory that holds another
experiment's run (or a file) unless ``--overwrite``; the same experiment's directory
continues an interrupted run and leaves a finished one as it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from fedsec import report
from fedsec.checkpoint import CHECKPOINT_FILE, load_checkpoint, resume_problem
from fedsec.config import load_config
from fedsec.results import (
    CONFIG_FILE,
    METRICS_FILE,
    RUN_FILES,
    SUMMARY_FILE,
    attack_window,
    differences_words,
    precision_bound,
    read_rounds,
    run_state,
)
from fedsec.unlearning import cli as unlearning_cli
from fedsec_core.errors import ConfigError, FedsecError, RunError
from fedsec_core.protocol import RoundRecord

EXIT_USAGE = 2
DEFAULT_EXPERIMENT = Path(__file__).resolve().parent / "default.toml"
"""The plain built-in experiment (what ``flwr run .`` runs; ``partition`` without a config)."""
SHOWCASE = Path(__file__).resolve().parent / "showcase.toml"
"""``fedsec run`` without a config: a sweep of one attack against FedAvg and Multi-metrics."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        if self.prog != "fedsec":  # a subcommand's parser: point to its help
            message = f"{message} (see `{self.prog} --help`)"
        raise FedsecError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedsec", description="Federated-learning security experiments.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one experiment")
    _config_args(
        run,
        "experiment TOML (default: the showcase, an edge-case attacker with PGD and "
        "model replacement against FedAvg and Multi-metrics side by side; --set "
        "applies to both)",
    )
    run.add_argument(
        "--out",
        help="run directory (default: runs/<config>-<time>); one that holds this experiment "
        "continues it if interrupted and is left as it is if finished; one that holds "
        "another experiment, or a file, is refused",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds (another experiment's run files, a finished run of "
        "this one, or a file) and run the experiment from round 1",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (refused if its "
        "config.toml was edited since, or a file is damaged; a finished run is left as it is)",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="validate the experiment (config, bounds, device, data, attack schedule and "
        "window, defense, --out) and exit without training",
    )
    run.set_defaults(handler=cmd_run)

    sweep = sub.add_parser("sweep", help="run a grid of experiments (resumable)")
    sweep.add_argument("sweep", metavar="SWEEP.toml", help="sweep file (base experiment + axes)")
    sweep.add_argument("--out", help="results directory (default: runs/sweeps/<name>)")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one value of the base experiment (before the axes)",
    )
    sweep.add_argument(
        "--parallel", type=int, help="runs at once (default: cores // engine.client_num_cpus)"
    )
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every run of the grid, list them with their state, and exit",
    )
    sweep.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS=LABEL[,LABEL...]",
        help="run only the cells with these labels (repeatable, one axis each): a slice "
        "of the grid first; the rest runs later with the same --out",
    )
    sweep.add_argument(
        "--reuse",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="copy the finished runs under DIR that are the same experiment as a cell "
        "(equal configs) instead of running them again (repeatable)",
    )
    sweep.set_defaults(handler=cmd_sweep)

    part = sub.add_parser("partition", help="plot the per-client label histogram as a PNG")
    _config_args(part)
    part.add_argument(
        "--out", help="PNG file to write (default: runs/partition-<config>.png, beside the runs)"
    )
    part.set_defaults(handler=cmd_partition)
    unlearning_cli.register(sub)
    report.register(sub)
    return parser


def _config_args(
    p: argparse.ArgumentParser, config_help: str = "experiment TOML (default: fedsec/default.toml)"
) -> None:
    p.add_argument("config", nargs="?", help=config_help)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value",
    )


def _load(args: argparse.Namespace):
    path = args.config or DEFAULT_EXPERIMENT
    try:
        return load_config(path, args.overrides)
    except ConfigError:
        from fedsec.sweep import is_sweep_file

        if is_sweep_file(path):
            raise ConfigError(
                f"{path} is a sweep file (a base experiment and axes), not one experiment; "
                f"run it with `fedsec sweep {path}`"
            ) from None
        raise


def cmd_run(args: argparse.Namespace) -> int:
    from fedsec.engines import run_experiment
    from fedsec.task import get_task

    if args.resume:
        out = Path(args.resume)
        if args.config or args.overrides or args.out or args.overwrite:
            raise FedsecError(
                "--resume takes the run directory alone: its config.toml is the experiment"
            )
        if not (out / CHECKPOINT_FILE).is_file():
            raise FedsecError(
                f"cannot resume {out}: no {CHECKPOINT_FILE} there (not a run "
                "directory, or it died before its first checkpoint)"
            )
        config = load_config(out / CONFIG_FILE)
        state = _resumable(out, config)
    elif not args.config:
        return cmd_showcase(args)
    else:
        config = _load(args)
        out = Path(args.out or f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        state = _out_state(out, config, args.overwrite)
        if state == "resume":
            state = _resumable(out, config)
    config.check_device()
    task = get_task(config)  # load the data and check the attack against it before any training
    for caveat in config.check_rounds():
        print(f"fedsec: warning: {caveat}", file=sys.stderr)
    schedule = task.schedule.describe()
    if args.check:
        print(f"fedsec: {args.config or args.resume} is valid; attack: {schedule}")
        return 0
    if state == "done":
        print(
            f"fedsec: {out} already holds this experiment, finished; nothing to run "
            "(--overwrite runs it again)"
        )
        return _finish_run(out)
    if state == "replace":
        _remove_run(out)
    elif state == "resume" and not args.resume:
        print(
            f"fedsec: {out} holds this experiment, interrupted; continuing it from its "
            "checkpoint (--overwrite starts it over)"
        )
    print(
        f"fedsec: {config.data.name} / {config.model.name} / {config.defense.name}, "
        f"{config.data.num_clients} clients ({config.train.clients_per_round} a round), "
        f"{config.train.rounds} rounds on the {config.engine.name} engine -> {out}\n"
        f"fedsec: attack: {schedule}",
        flush=True,
    )
    # fedsec prints one line per round; Flower's per-round INFO log would repeat it.
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        run_experiment(config, out, resume=state == "resume")
    except KeyboardInterrupt:
        print(f"fedsec: interrupted; finished rounds are in {out}/metrics.jsonl", file=sys.stderr)
        return 130
    return _finish_run(out)


def _out_state(out: Path, config, overwrite: bool) -> str:
    """What ``fedsec run CONFIG --out OUT`` does with OUT: ``new`` (start the run there),
    ``resume`` (it holds this experiment, interrupted), ``done`` (it holds this experiment,
    finished: nothing to run) or ``replace`` (``--overwrite``: remove what is there, then
    start). OUT holding another experiment (compared as configs, as ``fedsec sweep``
    does: ``fedsec.results.run_state``), or being a file, is refused without --overwrite."""
    if out.exists() and not out.is_dir():
        if overwrite:
            return "replace"
        raise FedsecError(
            f"--out {out} is a file, not a run directory; give a new directory (or "
            "--overwrite to replace the file)"
        )
    state, changes = run_state(out, config)
    if overwrite:
        return "new" if state == "empty" else "replace"
    if changes:
        raise FedsecError(
            f"--out {out} holds another experiment ({differences_words(changes)}); "
            "give another --out, or --overwrite to replace its run"
        )
    return {"empty": "new", "new": "new", "partial": "resume", "done": "done"}[state]


def _resumable(out: Path, config) -> str:
    """Check, before any training, that ``out`` can continue ``config`` from its checkpoint:
    the checkpoint loads, was written by the same experiment (config.toml was not edited
    since) and every round of metrics.jsonl is whole. ``resume``, or ``done`` when the
    run has finished already (then nothing changes)."""
    checkpoint = load_checkpoint(out)
    recorded = checkpoint.config
    if not recorded and (out / SUMMARY_FILE).is_file():  # a checkpoint of an older version
        recorded = _read_summary(out).get("config") or {}
    problem = resume_problem(recorded, config)
    if problem:
        raise FedsecError(
            f"cannot resume {out}: its {CONFIG_FILE} is not the experiment its "
            f"{CHECKPOINT_FILE} was written by ({problem}); undo the edit, or run the "
            "edited experiment with another --out"
        )
    read_rounds(out / METRICS_FILE)
    if checkpoint.round >= config.train.rounds and (out / SUMMARY_FILE).is_file():
        return "done"
    return "resume"


def _remove_run(out: Path) -> None:
    """``--overwrite``: remove the file at ``out``, or the run files in it."""
    if not out.is_dir():
        out.unlink()
        return
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _read_summary(out: Path) -> dict:
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    except ValueError:
        summary = None
    if not isinstance(summary, dict):
        raise FedsecError(
            f"{out / SUMMARY_FILE} is not a summary (damaged or edited); rerun the "
            f"experiment with `fedsec run {out / CONFIG_FILE} --out {out} --overwrite`"
        )
    return summary


def _finish_run(out: Path) -> int:
    """Print the run's summary line; fail the run if no round produced a new model."""
    summary = _read_summary(out)
    rounds = read_rounds(out / METRICS_FILE)
    print(summary_line(summary, out, rounds))
    kept = [r for r in rounds if r.kept_previous_model]
    if rounds and len(kept) == len(rounds):
        reason = kept[0].kept_previous_reason or "no usable reply"
        raise RunError(
            f"every one of the {len(rounds)} rounds kept the previous global model "
            f"(round {kept[0].round}: {reason}); the model never left its initial "
            f"state (results in {out})"
        )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedsec.sweep import load_sweep

    if args.parallel is not None and args.parallel < 1:
        raise FedsecError(f"--parallel must be >= 1, got {args.parallel}")
    sweep = load_sweep(args.sweep, args.out, args.overrides)
    runs = sweep.select(args.only)
    if args.reuse:
        from fedsec.sweep import reuse_finished

        copied = reuse_finished(sweep, args.reuse, dry_run=args.dry_run)
        verb = "would copy" if args.dry_run else "copied"
        print(f"fedsec: {verb} {len(copied)} finished runs with the same config from --reuse")
    code = _sweep(sweep, sweep.root, args.parallel, args.dry_run, runs)
    if code == 0 and not args.dry_run and len(runs) < len(sweep.runs):
        print(f"fedsec: sweep {sweep.name}: the {len(runs)} runs of --only finished")
    elif code == 0 and not args.dry_run:
        print(
            f"fedsec: sweep {sweep.name} complete: {len(sweep.runs)} runs in {sweep.root}; "
            f"tables and plots: fedsec report {sweep.root}"
        )
    return code


def _sweep(sweep, root: Path, parallel: int | None, dry_run: bool = False, runs=None) -> int:
    """Run (or with ``dry_run`` list) a loaded sweep, or the slice ``runs`` of it; 0 when
    every run finished."""
    from fedsec.sweep import default_parallel, pretrain_all, run_sweep
    from fedsec.task import get_task

    runs = sweep.runs if runs is None else runs
    parallel = parallel or default_parallel(sweep)
    states = [r.state() for r in runs]
    print(
        f"fedsec: sweep {sweep.name}: {len(states)} runs ({states.count('done')} done, "
        f"{states.count('partial')} to resume, {states.count('new')} new), "
        f"{parallel} at a time -> {root}",
        flush=True,
    )
    if dry_run:
        for run, state in zip(runs, states, strict=True):
            print(f"{state:8s}{run.id}")
        return 0
    for run, state in zip(runs, states, strict=True):  # checked against the data before any run
        if state != "done":
            run.config.check_device()
            get_task(run.config)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    pretrain_all(sweep, log=lambda msg: print(f"fedsec: {msg}", flush=True), runs=runs)
    try:
        failed = run_sweep(sweep, root, parallel, runs=runs)
    except KeyboardInterrupt:
        print(f"fedsec: interrupted; rerun the same command to resume {root}", file=sys.stderr)
        return 130
    if failed:
        print(
            f"fedsec: {len(failed)} of {len(runs)} runs failed: "
            + ", ".join(f"{r.id} ({r.dir}/run.log)" for r in failed),
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_showcase(args: argparse.Namespace) -> int:
    """``fedsec run`` without a config: the showcase sweep, then its side-by-side plot."""
    from fedsec.report import write_report
    from fedsec.sweep import load_sweep
    from fedsec.task import get_task

    root = Path(args.out or f"runs/showcase-{time.strftime('%Y%m%d-%H%M%S')}")
    sweep = load_sweep(SHOWCASE, root, args.overrides)
    if args.check:
        for run in sweep.runs:
            run.config.check_device()
            get_task(run.config)
        print("fedsec: the showcase experiment is valid")
        return 0
    cfg = sweep.runs[0].config
    print(
        f"fedsec: showcase: {cfg.attack.name} ({cfg.attack.params.get('edge_case', '')}) "
        f"against {' and '.join(sweep.axes['defense'])}, {cfg.data.name} / {cfg.model.name}, "
        f"{cfg.data.num_clients} clients, {cfg.train.rounds} rounds, seed {cfg.seed}",
        flush=True,
    )
    code = _sweep(sweep, root, None)
    if code != 0:
        return code
    report, short = write_report(root)
    print(short, end="")
    print(
        f"fedsec: curves of both runs in {root / report['files']['png'][0]}; "
        f"tables in {root / 'report.md'}"
    )
    print(f"fedsec: {showcase_verdict(sweep)}")
    return 0


def showcase_verdict(sweep) -> str:
    """What happened in the showcase, in one plain sentence with the numbers."""
    clauses = []
    for run in sweep.runs:
        summary = json.loads((run.dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        rounds = read_rounds(run.dir / METRICS_FILE)
        clauses.append(verdict_clause(run.labels["defense"], summary, rounds))
    return f"the {sweep.runs[0].config.attack.name} attack " + " and ".join(clauses) + "."


#: A backdoor got through when its BA averaged at least this over the attack window,
#: and was stopped when it never reached STOPPED; in between it partly got through.
GOT_THROUGH, STOPPED = 0.5, 0.2
#: A max - min of BA over the attack window at least this large is called a swing.
SWING = 0.3


def verdict_clause(defense: str, summary: dict, rounds: list[RoundRecord]) -> str:
    """How the attack fared against ``defense``, judged on the attack window
    (:func:`fedsec.results.attack_window`: the rounds from the first attack round on),
    not on the final round alone: a BA that swings between 7% and 97% from round to
    round is neither stopped nor 37% because the last round read 37%."""
    ma = summary["final_main_accuracy"]
    window = attack_window(rounds)
    if window is None:  # an attack without a backdoor (set with --set), or no attack round
        return f"ran against {defense} (main accuracy {ma:.1%})"
    # Backdoor accuracy is the share of edge-case inputs classified as the target.
    if window["max"] < STOPPED:
        outcome = "was stopped by"
    elif window["mean"] >= GOT_THROUGH:
        outcome = "got through"
    else:
        outcome = "partly got through"
    span = (
        f"round {window['first_round']}"
        if window["first_round"] == window["last_round"]
        else f"rounds {window['first_round']}-{window['last_round']}"
    )
    swing = (
        f", swinging between {window['min']:.1%} and {window['max']:.1%}"
        if window["max"] - window["min"] >= SWING
        else ""
    )
    return (
        f"{outcome} {defense} (backdoor accuracy over the attack {span}: mean "
        f"{window['mean']:.1%}, max {window['max']:.1%}{swing}; final {window['final']:.1%}; "
        f"main accuracy {ma:.1%})"
    )


def cmd_partition(args: argparse.Namespace) -> int:
    from fedsec.partition import label_histogram, plot_label_histogram
    from fedsec.task import get_task

    config = _load(args)
    task = get_task(config)
    hist = label_histogram(task.dataset.y_train, list(task.partitions), task.dataset.num_classes)
    d = config.data
    title = f"{d.name}: {d.num_clients} clients, {d.partition}" + (
        f" (alpha={d.alpha})" if d.partition == "dirichlet" else ""
    )
    out = Path(args.out) if args.out else partition_default_path(args.config)
    plot_label_histogram(hist, out, classes=task.dataset.classes, title=title)
    print(f"fedsec: wrote {out}")
    return 0


def partition_default_path(config: str | None) -> Path:
    """Where ``fedsec partition`` writes without ``--out``: ``runs/partition-<config>.png``
    (the config file's stem, ``default`` for the built-in experiment), beside the
    ``runs/<config>-<time>`` folders of ``fedsec run``, not into the working folder."""
    return Path("runs") / f"partition-{Path(config or DEFAULT_EXPERIMENT).stem}.png"


def summary_line(summary: dict, out: Path, rounds: list[RoundRecord] | None = None) -> str:
    """One line: final accuracies, detection, rounds that kept the model, where the files are.

    With the run's ``rounds``, a defense that keeps a fixed number of clients a round
    (``detection.selection_quota``) gets its precision explained: such a rule rejects
    the rest whatever it sees, so its precision is bounded by the attackers a round
    holds (:func:`fedsec.results.precision_bound`)."""
    parts = [f"{summary['rounds']} rounds"]
    if "final_main_accuracy" in summary:
        parts.append(
            f"main accuracy {summary['final_main_accuracy']:.4f} "
            f"(best {summary['best_main_accuracy']:.4f})"
        )
    if "final_backdoor_accuracy" in summary:
        parts.append(
            f"backdoor accuracy {summary['final_backdoor_accuracy']:.4f} "
            f"(max {summary['max_backdoor_accuracy']:.4f})"
        )
    detection = summary.get("detection") or {}
    judged = [
        f"{name} {detection[key]:.2f}"
        for key, name in (("precision", "precision"), ("recall", "recall"), ("auroc", "AUROC"))
        if detection.get(key) is not None
    ]
    if judged and detection.get("precision") is not None and detection.get("selection_quota"):
        judged[0] += quota_note(detection["selection_quota"], rounds or [])
    if judged:
        parts.append("detection " + ", ".join(judged))
    kept = summary.get("kept_previous_model_rounds", 0)
    if kept:
        parts.append(f"kept the previous model in {kept} round(s)")
    return f"fedsec: done: {'; '.join(parts)}; files in {out}"


def quota_note(quota: str, rounds: list[RoundRecord]) -> str:
    """Why a fixed-quota defense's precision is what it is, with the bound computed on
    ``rounds`` ("" when they rejected no one)."""
    bound = precision_bound(rounds)
    if bound is None:
        return f" (the defense {quota})"
    return (
        f" (at most {bound['bound']:.2f} here: the defense {quota}, so of its "
        f"{bound['rejected']} rejections at most {bound['right_at_most']} could be "
        f"the {bound['attackers']} attackers it judged)"
    )


class _ProgressLines(logging.Handler):
    """Prints the ``fedsec.progress`` records (loading data, fitting the tail density)
    as ``fedsec: ...`` lines on stdout, looked up when printing (so a captured or
    redirected stdout gets them), flushed at once."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"fedsec: {record.getMessage()}", flush=True)


def _show_progress() -> None:
    progress = logging.getLogger("fedsec.progress")
    if not any(isinstance(h, _ProgressLines) for h in progress.handlers):
        progress.addHandler(_ProgressLines())
        progress.setLevel(logging.INFO)
        progress.propagate = False


def main(argv: list[str] | None = None) -> int:
    _show_progress()
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except FedsecError as err:
        for line in str(err).splitlines():  # one line per problem (e.g. per bad sweep cell)
            print(f"fedsec: error: {line}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_USAGE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
