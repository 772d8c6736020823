"""The ``flower`` engine: Flower's own simulation engine (Ray), driven the supported way.

``fedsec run --engine flower`` does what a Flower user does by hand:

1. writes a Flower App folder (``pyproject.toml`` with ``[tool.flwr.app]``) whose
   components are fedsec's ServerApp and ClientApp and whose run config is the resolved
   experiment, flattened;
2. starts a ``flower-superlink --simulation`` on a free loopback port, with its
   ``FLWR_HOME`` inside the run directory;
3. submits the app with ``flwr run APP fedsec --federation-config ... --stream``;
4. stops the SuperLink (and the Ray processes under it) when the run ends, fails or is
   interrupted.

The ServerApp writes ``metrics.jsonl`` itself; this module only launches and cleans up.
With ``RAY_ADDRESS`` set in the environment, Flower's Ray backend joins that existing
Ray cluster instead of starting a local one (see README.md, "Engines").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fedsec.config import ExperimentConfig, dumps_toml
from fedsec.engines.processes import free_port, marked_env, start_process, stop_marked, wait_for_port
from fedsec.errors import FedsecError

CONNECTION_NAME = "fedsec"
# The ServerApp's own progress lines inside Flower's streamed log.
_PROGRESS = re.compile(r"(fedsec: .*|round \d+/\d+ .*)")


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: a private FLWR_HOME, no runtime installs.

    Every process started with it is marked with ``flwr_home`` (see
    ``fedsec.engines.processes``), so ``stop_marked(str(flwr_home))`` ends them all.
    """
    env = marked_env(dict(os.environ), str(flwr_home))
    env["FLWR_HOME"] = str(flwr_home)
    # The SuperLink starts `flower-superexec` and friends by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("RAY_DEDUP_LOGS", "0")
    # The apps are imported from the installed fedsec package in every Flower process.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_repo_root(), env.get("PYTHONPATH")]))
    return env


def write_app(app_dir: Path, config: ExperimentConfig, out_dir: Path, resume: bool = False,
              clientapp: str = "fedsec.apps.client_app:app") -> Path:
    """A Flower App folder whose run config is ``config`` and whose output is ``out_dir``.

    ``clientapp`` names the ClientApp object (tests substitute one that fails on purpose).
    """
    app_dir.mkdir(parents=True, exist_ok=True)
    run_config = {**config.to_dict(), "output": {"dir": str(out_dir.resolve()), "resume": resume}}
    text = (
        '[project]\nname = "fedsec-experiment"\nversion = "1.0.0"\n'
        'description = "A fedsec experiment as a Flower App"\nlicense = "Apache-2.0"\n'
        "dependencies = []\n\n"
        '[tool.flwr.app]\npublisher = "fedsec"\n\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "fedsec.apps.server_app:app"\n'
        f'clientapp = "{clientapp}"\n\n'
        + _nest("tool.flwr.app.config", dumps_toml(run_config))
    )
    (app_dir / "pyproject.toml").write_text(text, encoding="utf-8")
    return app_dir


def run_flower(
    config: ExperimentConfig, out_dir: str | Path, progress: Callable[[str], None] = print,
    resume: bool = False, clientapp: str = "fedsec.apps.client_app:app",
) -> None:
    """Run ``config`` on Flower's simulation engine; results land in ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    flwr_home = out_dir / ".flwr"
    app_dir = write_app(flwr_home / "app", config, out_dir, resume, clientapp)
    env = flower_env(flwr_home)
    port = free_port()
    _write_connection(flwr_home, port)
    log_path = flwr_home / "superlink.log"
    superlink = start_process(
        [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation"],
        env, log_path,
    )
    try:
        wait_for_port(port, superlink, log_path)
        e = config.engine
        federation = (
            f"num-supernodes={config.data.num_clients} "
            f"client-resources-num-cpus={e.client_num_cpus} "
            f"client-resources-num-gpus={e.client_num_gpus}"
        )
        cmd = [_bin("flwr"), "run", str(app_dir), CONNECTION_NAME,
               "--federation-config", federation, "--stream"]
        run_log = flwr_home / "flwr-run.log"
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as flwr_run, run_log.open("w") as log:
            for line in flwr_run.stdout:
                log.write(line)
                log.flush()
                if _PROGRESS.search(line):
                    progress(_PROGRESS.search(line).group(0).rstrip())
            code = flwr_run.wait()
        if code != 0 or not (out_dir / "summary.json").is_file():
            raise RuntimeError(
                f"the Flower run failed (flwr run exit code {code}); its log: {run_log}\n"
                + "".join(run_log.read_text().splitlines(keepends=True)[-15:])
            )
    finally:
        stop_marked(str(flwr_home))
        superlink.wait()


def _write_connection(flwr_home: Path, port: int) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f'[superlink.{CONNECTION_NAME}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )


def _nest(prefix: str, toml_text: str) -> str:
    """Move every table of ``toml_text`` under ``prefix`` (top-level keys included)."""
    out = [f"[{prefix}]"]
    for line in toml_text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            out.append(f"[{prefix}.{line[1:-1]}]")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _bin(name: str) -> str:
    """A Flower command installed beside this Python (the venv need not be on PATH)."""
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        raise FedsecError(f"the `{name}` command is not installed beside {sys.executable}; "
                          "pip install 'flwr[simulation]'")
    return str(exe)


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])
