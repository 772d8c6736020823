"""``fedsec unlearn RUN_DIR``: unlearn clients from a finished run's model, and the
datamodel artifact that run keeps beside it (:func:`get_datamodel`).

Unlearning a federation is split by layer, as the report package is:

- ``federation``: the federation's rows (every client's examples as it trains on them,
  then the test split), who owns each, the forget set's check, a model's accuracies;
- ``flagging``: ``--flagged``, the clients a run's defense rejected significantly more
  often than its base rate;
- ``oracles``: federations retrained without some clients, in parallel and cached;
- ``methods``: the unlearning methods (``dmm``, ``om``, ``retrain``, ``finetune``,
  ``gradient-ascent``, ``none``) on an :class:`UnlearnRequest`;
- this module: the run-directory command. It re-exports the names above, so
  ``from fedsec.unlearning.federated import Federation`` (and the others) keeps working.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedsec.config import load_config
from fedsec.results import CONFIG_FILE, METRICS_FILE, MODEL_FILE, read_rounds
from fedsec.unlearning import DEFAULT_OM_ORACLES, METHODS
from fedsec.unlearning.artifact import (
    DatamodelArtifact,
    config_hash,
    load_artifact,
    tensor_hash,
)
from fedsec.unlearning.federation import (
    Federation,
    check_forget_set,
    model_metrics,
    poisoned_examples,
)
from fedsec.unlearning.flagging import (
    DEFAULT_FLAG_LEVEL,
    OUTLIER_Z,
    Flagging,
    flagged_clients,
    flagged_forget_set,
)
from fedsec.unlearning.methods import (
    Unlearned,
    UnlearnRequest,
    UnlearnSettings,
    datamodel_matching,
    finetune,
    gradient_ascent_method,
    keep_model,
    matching_rows,
    oracle_matching,
    retrain,
    unlearn_state,
)
from fedsec.unlearning.oracles import (
    FederationJob,
    oracle_mean_logits,
    train_federations,
    training_examples,
)
from fedsec.unlearning.settings import check_request
from fedsec.unlearning.subsets import FederatedSubsetTrainer, default_workers, train_datamodel
from fedsec_core.errors import ConfigError, FedsecError

__all__ = [
    "DATAMODEL_FILE",
    "DEFAULT_FLAG_LEVEL",
    "DEFAULT_Q",
    "DEFAULT_SUBSETS",
    "OUTLIER_Z",
    "UNLEARN_DIR",
    "Federation",
    "FederationJob",
    "Flagging",
    "UnlearnRequest",
    "UnlearnSettings",
    "Unlearned",
    "check_forget_set",
    "datamodel_matching",
    "finetune",
    "flagged_clients",
    "flagged_forget_set",
    "get_datamodel",
    "gradient_ascent_method",
    "keep_model",
    "matching_rows",
    "model_metrics",
    "oracle_matching",
    "oracle_mean_logits",
    "poisoned_examples",
    "retrain",
    "train_federations",
    "training_examples",
    "unlearn_run",
    "unlearn_state",
]

DATAMODEL_FILE = "datamodel.pt"
UNLEARN_DIR = "unlearning"
DEFAULT_SUBSETS = 100
DEFAULT_Q = 0.9


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
    # num_models and q as settings.check_request judged them (None: the default)
    m, q = num_models or DEFAULT_SUBSETS, DEFAULT_Q if q is None else q
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
    check_request(
        settings,
        subsets=num_models,
        q=q,
        workers=workers,
        om_oracles=om_oracles,
        flag_level=flag_level,
    )
    level = DEFAULT_FLAG_LEVEL if flag_level is None else flag_level
    config = load_config(run_dir / CONFIG_FILE)
    torch.set_num_threads(config.engine.client_num_cpus)  # as a client (and retraining) uses
    if flagged:
        flagging = flagged_clients(read_rounds(run_dir / METRICS_FILE), level)
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
