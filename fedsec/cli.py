"""The ``fedsec`` command.

    fedsec run [CONFIG.toml] [--set section.key=value ...] [--out DIR]
    fedsec run --resume RUN_DIR
    fedsec partition [CONFIG.toml] [--set ...] [--out FILE.png]

A user error (bad config, missing data) prints one line and exits with code 2 before
any training starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fedsec.checkpoint import CHECKPOINT_FILE
from fedsec.config import load_config
from fedsec.errors import FedsecError
from fedsec.results import CONFIG_FILE

EXIT_USAGE = 2
DEFAULT_EXPERIMENT = Path(__file__).resolve().parent / "default.toml"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise FedsecError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedsec", description="Federated-learning security experiments.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one experiment")
    _config_args(run)
    run.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run from its last checkpoint")
    run.add_argument("--check", action="store_true",
                     help="validate the experiment (config, data, attack) and exit without training")
    run.set_defaults(handler=cmd_run)

    part = sub.add_parser("partition", help="plot the per-client label histogram as a PNG")
    _config_args(part)
    part.add_argument("--out", default="partition.png", help="PNG file to write")
    part.set_defaults(handler=cmd_partition)
    return parser


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="experiment TOML (default: the built-in one)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override one config value")


def _load(args: argparse.Namespace):
    return load_config(args.config or DEFAULT_EXPERIMENT, args.overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from fedsec.engines import run_experiment
    from fedsec.task import get_task

    if args.resume:
        out = Path(args.resume)
        if args.config or args.overrides or args.out:
            raise FedsecError("--resume takes the run directory alone: its config.toml is the experiment")
        if not (out / CHECKPOINT_FILE).is_file():
            raise FedsecError(f"cannot resume {out}: no {CHECKPOINT_FILE} there (not a run "
                              "directory, or it died before its first checkpoint)")
        config = load_config(out / CONFIG_FILE)
    else:
        config = _load(args)
        stem = Path(args.config).stem if args.config else "default"
        out = Path(args.out or f"runs/{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    get_task(config)  # load the data and check the attack against it before any training
    if args.check:
        print(f"fedsec: {args.config or args.resume or 'default experiment'} is valid")
        return 0
    print(f"fedsec: {config.data.name} / {config.model.name} / {config.defense.name}, "
          f"{config.data.num_clients} clients, {config.train.rounds} rounds on the "
          f"{config.engine.name} engine -> {out}", flush=True)
    # fedsec prints one line per round; Flower's per-round INFO log would repeat it.
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        run_experiment(config, out, resume=bool(args.resume))
    except KeyboardInterrupt:
        print(f"fedsec: interrupted; finished rounds are in {out}/metrics.jsonl", file=sys.stderr)
        return 130
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from fedsec.partition import label_histogram, plot_label_histogram
    from fedsec.task import get_task

    config = _load(args)
    task = get_task(config)
    hist = label_histogram(task.dataset.y_train, list(task.partitions), task.dataset.num_classes)
    d = config.data
    title = f"{d.name}: {d.num_clients} clients, {d.partition}" + (
        f" (alpha={d.alpha})" if d.partition == "dirichlet" else "")
    plot_label_histogram(hist, args.out, classes=task.dataset.classes, title=title)
    print(f"fedsec: wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except FedsecError as err:
        print(f"fedsec: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
