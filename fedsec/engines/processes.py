"""Start Flower's server processes and make sure every one of them ends.

Flower's SuperLink starts its helpers (SuperExec, the simulation runtime, Ray's
daemons) detached, in sessions of their own, so killing the SuperLink's process group
leaves them running. Every process fedsec starts gets a marker variable in its
environment, which its children inherit; stopping means signalling every live process
that carries the marker, whoever its parent is by then.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

MARKER = "FEDSEC_PROCESS_GROUP"


def start_process(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session, output appended to ``log_path``.

    ``env`` must carry ``MARKER`` (see :func:`marked_env`) so that :func:`stop_marked`
    finds the process and everything it starts.
    """
    if MARKER not in env:
        raise ValueError(f"start_process needs {MARKER} in env; use marked_env()")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def marked_env(env: dict[str, str], marker: str) -> dict[str, str]:
    return {**env, MARKER: marker}


def marked_pids(marker: str) -> list[int]:
    """Live processes (other than this one) whose environment carries ``marker``."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes() + b"\0"
        except OSError:
            continue
        if needle in environ:
            found.append(int(entry))
    return found


def stop_marked(marker: str, grace: float = 10.0) -> None:
    """SIGTERM every marked process, wait up to ``grace`` s, then SIGKILL the rest."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = marked_pids(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = marked_pids(marker)  # an exited process (a zombie) has no environ


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    """Wait until ``proc`` listens on ``port``; fail early if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode}; see {log_path}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.args[0]} did not listen on port {port} within {timeout:.0f}s")
