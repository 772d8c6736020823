"""Engines: where the same ServerApp and ClientApp run.

- ``inprocess``: one process, no Ray (fast; many small runs).
- ``flower``: Flower's simulation engine on Ray, launched through ``flwr run``.
- ``deployment``: Flower's deployment engine on this machine: a SuperLink and one
  SuperNode process per client over loopback, launched through ``flwr run``.

Both hand the apps the same flat run config, including ``output.dir``, where the
ServerApp writes the run directory. On the two simulation engines a round's honest
clients can train as one batch, one message to one node (``engine.batch_clients``,
``fedsec.engines.batching``); deployment nodes own their data and never batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fedsec.config import ExperimentConfig
from fedsec_core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from fedsec.server import FederationResult


def run_experiment_inprocess(
    config: ExperimentConfig, out_dir: str | Path, resume: bool = False
) -> None:
    """The ``inprocess`` engine: the ServerApp and every ClientApp in this process."""
    from fedsec.apps.client_app import app as client_app
    from fedsec.apps.server_app import OUTPUT_DIR_KEY, RESUME_KEY
    from fedsec.apps.server_app import app as server_app
    from fedsec.engines.inprocess import run_inprocess

    run_config = {
        **config.to_flat(),
        OUTPUT_DIR_KEY: str(Path(out_dir).resolve()),
        RESUME_KEY: resume,
    }
    run_inprocess(server_app, client_app, config.data.num_clients, run_config)


def train_inprocess(
    config: ExperimentConfig, progress: Callable[[str], None] = lambda line: None
) -> FederationResult:
    """The federation of ``config`` trained on the in-process engine and kept in memory:
    the round loop ``fedsec run`` runs (``fedsec.server.run_federation``, the same
    ClientApp and strategy), without a run directory. Returns the summary and the final
    state dict."""
    from fedsec.apps.client_app import app as client_app
    from fedsec.engines.inprocess import in_process_grid
    from fedsec.server import run_federation

    grid = in_process_grid(client_app, config.data.num_clients, config.to_flat())
    return run_federation(grid, config.validate(), None, progress=progress)


#: ``engine.name`` -> ``run(config, out_dir, resume=False)``, from the simplest to the most
#: distributed; the Flower engines are imported (with Ray) only when used.
ENGINES: Registry[Callable[..., None]] = Registry(
    "engine.name",
    {
        "inprocess": run_experiment_inprocess,
        "flower": "fedsec.engines.flower:run_flower",
        "deployment": "fedsec.engines.flower:run_deployment",
    },
    sort_names=False,
)


def run_experiment(config: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> None:
    """Run a validated experiment on the engine its config names.

    ``resume`` continues the run in ``out_dir`` from its last checkpoint. Prints which
    path trains the clients (``fedsec.batched.use_batched``: batched or one by one).
    """
    from fedsec.batched import use_batched

    engine = ENGINES.resolve(config.engine.name)
    print(f"fedsec: training: {use_batched(config)[1]}", flush=True)
    engine(config, out_dir, resume=resume)
