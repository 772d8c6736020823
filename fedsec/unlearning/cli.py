"""``fedsec unlearn`` and ``fedsec unlearn-eval`` (registered by fedsec.cli).

fedsec unlearn RUN_DIR (--clients 3,7 | --flagged [--flag-level 0.05] [--allow-majority])
               [--method dmm] [--no-forget-data] ...
fedsec unlearn-eval CONFIG.toml --clients 3,7|auto --out DIR [--models 50] ...
"""

from __future__ import annotations

import argparse
import logging

from fedsec.unlearning import DEFAULT_KLOM_MODELS, DEFAULT_OM_ORACLES, METHODS
from fedsec.unlearning.settings import MatchingConfig
from fedsec_core.params import parameter_defaults


def register(sub) -> None:
    """Add the unlearning subcommands to fedsec's subparsers."""
    un = sub.add_parser("unlearn", help="remove clients' influence from a run's model")
    un.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    un.add_argument("--clients", help="partition ids to forget, e.g. 3,7")
    un.add_argument(
        "--flagged",
        action="store_true",
        help="forget the clients the run's defense rejected significantly more often "
        "than its base rejection rate (one-sided binomial test, Bonferroni)",
    )
    un.add_argument(
        "--flag-level",
        type=float,
        default=None,
        help="--flagged's significance level, in (0, 1) (default 0.05), divided by "
        "the number of clients judged",
    )
    un.add_argument(
        "--allow-majority",
        action="store_true",
        help="let --flagged forget more than half of the federation",
    )
    un.add_argument("--method", default="dmm", choices=METHODS.names())
    un.add_argument(
        "--datamodel", help="datamodel artifact (default RUN_DIR/unlearning/datamodel.pt)"
    )
    un.add_argument("--out", help="output folder (default RUN_DIR/unlearning/METHOD-clients-IDS)")
    _common(un)
    un.set_defaults(handler=cmd_unlearn)

    ev = sub.add_parser("unlearn-eval", help="KLoM of every unlearning method against oracles")
    ev.add_argument("config", metavar="CONFIG.toml")
    ev.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value",
    )
    ev.add_argument(
        "--clients",
        required=True,
        help="ids to forget (3,7), or auto[:K] = the K most influential by the datamodel",
    )
    ev.add_argument("--out", required=True, help="results folder (klom.json, klom.md, klom.png)")
    ev.add_argument(
        "--models",
        type=int,
        default=DEFAULT_KLOM_MODELS,
        help=f"N originals and N oracles (default {DEFAULT_KLOM_MODELS})",
    )
    ev.add_argument("--methods", default=",".join(METHODS.names()), help="comma-separated methods")
    _common(ev)
    ev.set_defaults(handler=cmd_unlearn_eval)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subsets", type=int, help="datamodel: subset models M (default 100)")
    p.add_argument("--q", type=float, help="datamodel: probability a unit is kept (default 0.9)")
    p.add_argument(
        "--workers", type=int, help="parallel trainings (default cores // client_num_cpus)"
    )
    p.add_argument(
        "--no-forget-data",
        dest="cooperative",
        action="store_false",
        help="the forget clients do not hand over their data, an attacker its poisoned "
        "examples (match on the server's reference set only)",
    )
    p.add_argument(
        "--reference-size",
        type=int,
        help="server reference set size (default 3x the forget clients' examples)",
    )
    p.add_argument(
        "--om-oracles",
        type=int,
        default=DEFAULT_OM_ORACLES,
        help=f"retrained models OM matches (default {DEFAULT_OM_ORACLES}, chosen on validation "
        "models: experiments/unlearning/README.md)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="matching epochs, as the paper's code (default: until the held-out matching "
        "loss stops improving)",
    )
    p.add_argument(
        "--lr",
        type=float,
        help="matching learning rate (Adam; default "
        f"{parameter_defaults(MatchingConfig)['lr']:g}, chosen on validation models)",
    )


def _settings(args):
    """The request's settings from the flags given (the rest keep their declared
    defaults); ``unlearn_run`` / ``klom_evaluation`` judge them before any training."""
    from fedsec.unlearning.federated import UnlearnSettings

    given = {k: getattr(args, k) for k in ("epochs", "lr") if getattr(args, k) is not None}
    sizes = {} if args.reference_size is None else {"reference_size": args.reference_size}
    return UnlearnSettings(cooperative=args.cooperative, matching=MatchingConfig(**given), **sizes)


def cmd_unlearn(args) -> int:
    from fedsec.unlearning.federated import unlearn_run

    logging.getLogger("flwr").setLevel(logging.WARNING)
    info = unlearn_run(
        args.run_dir,
        method=args.method,
        clients=args.clients,
        flagged=args.flagged,
        flag_level=args.flag_level,
        allow_majority=args.allow_majority,
        datamodel_path=args.datamodel,
        num_models=args.subsets,
        q=args.q,
        workers=args.workers,
        settings=_settings(args),
        om_oracles=args.om_oracles,
        out=args.out,
    )
    before, after = info["before"], info["after"]
    parts = [f"{k} {before[k]:.4f} -> {after[k]:.4f}" for k in before]
    print(
        f"fedsec: unlearned clients {info['clients']} by {info['method']} in "
        f"{info['wall_time_s']:.2f}s: " + ", ".join(parts)
    )
    print(f"fedsec: wrote {info['out']}")
    return 0


def cmd_unlearn_eval(args) -> int:
    from fedsec.config import load_config
    from fedsec.unlearning.evaluation import klom_evaluation
    from fedsec_core.errors import ConfigError

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods:
        raise ConfigError("--methods is empty; valid: " + ", ".join(METHODS.names()))
    for method in methods:
        METHODS.resolve(method)
    settings = _settings(args)
    config = load_config(args.config, args.overrides)
    if args.clients.strip() != "auto" and not args.clients.startswith("auto:"):
        from fedsec.unlearning.federated import check_forget_set

        check_forget_set(args.clients, config.data.num_clients)  # before any training
    logging.getLogger("flwr").setLevel(logging.WARNING)
    klom_evaluation(
        config,
        args.clients.strip(),
        args.out,
        n_models=args.models,
        methods=methods,
        num_models=args.subsets,
        q=args.q,
        workers=args.workers,
        settings=settings,
        om_oracles=args.om_oracles,
    )
    print(f"fedsec: wrote {args.out}/klom.json, klom.md, klom.png")
    return 0
