"""How long the CLI takes to start, against importing torch alone?

Times, in fresh interpreters started from this process, interleaved (a slow spell of a
shared machine hits every command alike), ``--repeats`` runs each, wall clock; prints
the median and the best wall time of each and its ratio to ``import torch`` (medians),
and the median CPU time (user + system; on a shared machine it moves far less with
the load than the wall time does) and its ratio:

- ``import torch``: ``python -c "import torch"``, the floor of any fedsec command;
- ``import defenses.rules``: the defenses' math alone (must load neither Flower nor
  scikit-learn);
- ``default --check``: ``fedsec run fedsec/default.toml --check``, validating the plain
  built-in experiment (config, data, partition, attack schedule, defense limits);
- ``showcase --check (cached)``: ``fedsec run --check``, the showcase (two runs, the
  edge-case tail attack) with the tail density already in the disk cache, as every
  check after the first one finds it;
- ``showcase --check (empty cache)``: the same with a new, empty ``FEDSEC_CACHE``
  each time: the first check on a machine, which fits the tail density;
- ``showcase first line``: ``fedsec run`` (the showcase), the time until it prints its
  first line; the process group is then killed (nothing has trained yet).

Every command runs with ``FEDSEC_CACHE`` in a temporary folder, so ``~/.cache/fedsec``
is neither read nor written. Ends with ``check_startup_ratio: <default --check /
import torch>`` and ``showcase_check_ratio: <showcase --check (cached) / default
--check>`` (medians of wall time; of CPU time in brackets).

    python benchmarks/startup.py [--repeats 7] [--repo DIR]

``--repo`` times the fedsec of another checkout (e.g. an export of an older commit),
with this interpreter, so before and after are measured in one session.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys, defenses.rules; print(sorted(m for m in ('flwr', 'sklearn') if m in sys.modules))"
)
FEDSEC = [sys.executable, "-m", "fedsec.cli", "run"]
#: name -> (command, which cache: "warm" (shared, filled first) or "cold" (new each run))
COMMANDS = {
    "import torch": ([sys.executable, "-c", "import torch"], "warm"),
    "import defenses.rules": ([sys.executable, "-c", "import defenses.rules"], "warm"),
    "default --check": ([*FEDSEC, "fedsec/default.toml", "--check"], "warm"),
    "showcase --check (cached)": ([*FEDSEC, "--check"], "warm"),
    "showcase --check (empty cache)": ([*FEDSEC, "--check"], "cold"),
}


def timed(cmd: list[str], repo: Path, cache: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children)."""
    env = {**os.environ, "FEDSEC_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def first_line(repo: Path, cache: Path, out: Path) -> float:
    """Seconds until ``fedsec run`` (the showcase) prints its first line; then the
    process group is killed."""
    env = {**os.environ, "FEDSEC_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*FEDSEC, "--out", str(out)],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.stdout.readline()
        return time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to time")
    args = parser.parse_args()
    repo = args.repo.resolve()
    times: dict[str, list[float]] = {name: [] for name in [*COMMANDS, "showcase first line"]}
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory(prefix="fedsec-startup-") as tmp:
        warm = Path(tmp) / "warm"
        timed(COMMANDS["showcase --check (cached)"][0], repo, warm)  # fills the cache
        for i in range(args.repeats):  # interleaved: a slow spell hits all alike
            for name, (cmd, cache) in COMMANDS.items():
                folder = warm if cache == "warm" else Path(tmp) / f"c{i}"
                wall, used = timed(cmd, repo, folder)
                times[name].append(wall)
                cpu[name].append(used)
            times["showcase first line"].append(first_line(repo, warm, Path(tmp) / f"run{i}"))
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} (1 / 5 min) "
        f"at the end; {args.repeats} runs each; repo {repo}"
    )
    median = {name: statistics.median(ts) for name, ts in times.items()}
    cpu_median = {name: statistics.median(ts) for name, ts in cpu.items()}
    base, cpu_base = median["import torch"], cpu_median["import torch"]
    for name, ts in times.items():
        line = (
            f"{name:32s} wall median {median[name]:6.2f} s  best {min(ts):6.2f} s "
            f"{median[name] / base:5.2f}x import torch"
        )
        if name in cpu:
            line += f" | CPU median {cpu_median[name]:5.2f} s {cpu_median[name] / cpu_base:5.2f}x"
        print(line)
    loaded = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"import defenses.rules loads of flwr, sklearn: {loaded}")
    print(
        f"check_startup_ratio: {median['default --check'] / base:.2f} "
        f"(CPU: {cpu_median['default --check'] / cpu_base:.2f})"
    )
    default, cpu_default = median["default --check"], cpu_median["default --check"]
    print(
        f"showcase_check_ratio: {median['showcase --check (cached)'] / default:.2f} "
        f"(CPU: {cpu_median['showcase --check (cached)'] / cpu_default:.2f}; empty cache: "
        f"{median['showcase --check (empty cache)'] / default:.2f}, CPU "
        f"{cpu_median['showcase --check (empty cache)'] / cpu_default:.2f})"
    )


if __name__ == "__main__":
    main()
