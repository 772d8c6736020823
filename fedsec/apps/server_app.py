"""The ServerApp: reads the experiment from the run config and runs the federation."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsec.config import ExperimentConfig
from fedsec.server import run_federation

OUTPUT_DIR_KEY = "output.dir"
RESUME_KEY = "output.resume"  # continue from the checkpoint in output.dir

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = ExperimentConfig.from_flat(context.run_config).validate()
    out_dir = Path(str(context.run_config.get(OUTPUT_DIR_KEY, "runs/flwr"))).resolve()
    print(f"fedsec: writing results to {out_dir}", flush=True)
    run_federation(
        grid,
        config,
        out_dir,
        progress=lambda line: print(line, flush=True),
        resume=bool(context.run_config.get(RESUME_KEY, False)),
    )
