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
from fedsec.engines.processes import (
    free_port,
    marked_env,
    start_process,
    stop_marked,
    wait_for_port,
)
from fedsec_core.errors import FedsecError
from fedsec_core.protocol import NUM_PARTITIONS, PARTITION_ID

CONNECTION_NAME = "fedsec"
DEFAULT_CLIENTAPP = "fedsec.apps.client_app:app"
DEFAULT_SERVERAPP = "fedsec.apps.server_app:app"
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


def write_app(
    app_dir: Path,
    config: ExperimentConfig,
    out_dir: Path,
    resume: bool = False,
    clientapp: str = DEFAULT_CLIENTAPP,
    serverapp: str = DEFAULT_SERVERAPP,
) -> Path:
    """A Flower App folder whose run config is ``config`` and whose output is ``out_dir``.

    ``clientapp`` and ``serverapp`` name the app objects (``"module:attribute"``): tests
    substitute a ClientApp that fails on purpose, or name apps of a module that
    registers plug-ins of their own, so that the ServerApp and every Ray worker know
    those plug-ins (``tests/hook_plugins.py``; CONTRIBUTING.md says why its ClientApp's
    handlers must live in that module).
    """
    app_dir.mkdir(parents=True, exist_ok=True)
    run_config = {**config.to_dict(), "output": {"dir": str(out_dir.resolve()), "resume": resume}}
    text = (
        '[project]\nname = "fedsec-experiment"\nversion = "1.0.0"\n'
        'description = "A fedsec experiment as a Flower App"\nlicense = "Apache-2.0"\n'
        "dependencies = []\n\n"
        '[tool.flwr.app]\npublisher = "fedsec"\n\n'
        "[tool.flwr.app.components]\n"
        f'serverapp = "{serverapp}"\n'
        f'clientapp = "{clientapp}"\n\n' + _nest("tool.flwr.app.config", dumps_toml(run_config))
    )
    (app_dir / "pyproject.toml").write_text(text, encoding="utf-8")
    return app_dir


def run_flower(
    config: ExperimentConfig,
    out_dir: str | Path,
    progress: Callable[[str], None] = print,
    resume: bool = False,
    clientapp: str = DEFAULT_CLIENTAPP,
    serverapp: str = DEFAULT_SERVERAPP,
) -> None:
    """Run ``config`` on Flower's simulation engine (Ray); results land in ``out_dir``
    (``clientapp``, ``serverapp``: see :func:`write_app`)."""
    e = config.engine
    with FlowerLauncher(config, out_dir, resume, clientapp, serverapp) as launcher:
        launcher.start_superlink(simulation=True)
        launcher.submit(
            progress,
            federation_config=(
                f"num-supernodes={config.data.num_clients} "
                f"client-resources-num-cpus={e.client_num_cpus} "
                f"client-resources-num-gpus={e.client_num_gpus}"
            ),
        )


def run_deployment(
    config: ExperimentConfig,
    out_dir: str | Path,
    progress: Callable[[str], None] = print,
    resume: bool = False,
    clientapp: str = DEFAULT_CLIENTAPP,
    serverapp: str = DEFAULT_SERVERAPP,
) -> None:
    """Run ``config`` on Flower's deployment engine, all on this machine.

    One ``flower-superlink`` and one ``flower-supernode`` per client, talking over
    loopback, each SuperNode told its ``partition-id`` / ``num-partitions`` through
    ``--node-config``: the processes a real deployment runs on many machines.
    """
    with FlowerLauncher(config, out_dir, resume, clientapp, serverapp) as launcher:
        launcher.start_superlink(simulation=False)
        for pid in range(config.data.num_clients):
            launcher.start_supernode(pid, config.data.num_clients)
        launcher.submit(progress)


class FlowerLauncher:
    """Starts Flower's processes for one run and stops every one of them on exit.

    Everything lives in ``OUT_DIR/.flwr``: ``FLWR_HOME``, the generated app, one log
    per process, and ``flwr-run.log`` (what ``flwr run --stream`` printed).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        out_dir: str | Path,
        resume: bool,
        clientapp: str,
        serverapp: str = DEFAULT_SERVERAPP,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir).resolve()
        self.home = self.out_dir / ".flwr"
        self.app_dir = write_app(
            self.home / "app", config, self.out_dir, resume, clientapp, serverapp
        )
        self.env = flower_env(self.home)
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> FlowerLauncher:
        _write_connection(self.home, self.port)
        return self

    def __exit__(self, *exc) -> None:
        stop_marked(str(self.home))
        for proc in self.processes.values():
            proc.wait()

    def start_superlink(self, simulation: bool) -> None:
        cmd = [
            _bin("flower-superlink"),
            "--insecure",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        self._start("superlink", cmd + (["--simulation"] if simulation else []), self.port)

    def start_supernode(self, partition_id: int, num_partitions: int) -> None:
        port = free_port()
        cmd = [
            _bin("flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--node-config",
            f"{PARTITION_ID}={partition_id} {NUM_PARTITIONS}={num_partitions}",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        self._start(f"supernode-{partition_id}", cmd, port)

    def kill(self, name: str) -> None:
        """SIGKILL one process (tests: a SuperNode dying mid-run)."""
        self.processes[name].kill()

    def submit(self, progress: Callable[[str], None], federation_config: str | None = None) -> None:
        """``flwr run`` the app, stream its log, and fail unless the run finished."""
        cmd = [_bin("flwr"), "run", str(self.app_dir), CONNECTION_NAME, "--stream"]
        if federation_config:
            cmd += ["--federation-config", federation_config]
        run_log = self.home / "flwr-run.log"
        with (
            subprocess.Popen(
                cmd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            ) as flwr_run,
            run_log.open("w") as log,
        ):
            for line in flwr_run.stdout:
                log.write(line)
                log.flush()
                if match := _PROGRESS.search(line):
                    progress(match.group(0).rstrip())
            code = flwr_run.wait()
        if code != 0 or not (self.out_dir / "summary.json").is_file():
            raise RuntimeError(
                f"the Flower run failed (flwr run exit code {code}); its log: {run_log}\n"
                + "".join(run_log.read_text().splitlines(keepends=True)[-15:])
            )

    def _start(self, name: str, cmd: list[str], port: int) -> None:
        log_path = self.home / f"{name}.log"
        self.processes[name] = proc = start_process(cmd, self.env, log_path)
        wait_for_port(port, proc, log_path)


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
        raise FedsecError(
            f"the `{name}` command is not installed beside {sys.executable}; "
            "pip install 'flwr[simulation]'"
        )
    return str(exe)


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])
