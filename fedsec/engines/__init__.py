"""Engines: where the same ServerApp and ClientApp run.

- ``inprocess``: one process, no Ray (fast; many small runs).
- ``flower``: Flower's simulation engine on Ray, launched through ``flwr run``.
- ``deployment``: Flower's deployment engine on this machine: a SuperLink and one
  SuperNode process per client over loopback, launched through ``flwr run``.

Both hand the apps the same flat run config, including ``output.dir``, where the
ServerApp writes the run directory.
"""

from __future__ import annotations

from pathlib import Path

from fedsec.config import ExperimentConfig


def run_experiment(config: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> None:
    """Run a validated experiment on the engine its config names.

    ``resume`` continues the run in ``out_dir`` from its last checkpoint.
    """
    if config.engine.name in ("flower", "deployment"):
        from fedsec.engines.flower import run_deployment, run_flower

        launch = run_flower if config.engine.name == "flower" else run_deployment
        launch(config, out_dir, resume=resume)
        return
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
