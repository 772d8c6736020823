"""How long does the CLI take to start, against importing torch alone?

Times, in fresh interpreters started from this process, interleaved, best of
``--repeats`` each (wall clock):

- ``import torch``: ``python -c "import torch"``, the floor of any fedsec command;
- ``import defenses.rules``: the defenses' math alone (must load neither Flower nor
  scikit-learn);
- ``fedsec run --check``: validating the built-in default experiment (config, data,
  partition, attack schedule, defense limits), without training.

Prints each time, its ratio to ``import torch``, and which of flwr / sklearn the rules
import loaded. Ends with ``check_startup_ratio: <fedsec run --check / import torch>``.

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys, defenses.rules; print(sorted(m for m in ('flwr', 'sklearn') if m in sys.modules))"
)
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import defenses.rules": [sys.executable, "-c", "import defenses.rules"],
    "fedsec run --check": [
        sys.executable,
        "-m",
        "fedsec.cli",
        "run",
        str(REPO / "fedsec" / "default.toml"),
        "--check",
    ],
}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    best = dict.fromkeys(COMMANDS, float("inf"))
    for _ in range(args.repeats):  # interleaved: a slow spell of the VM hits all alike
        for name, cmd in COMMANDS.items():
            best[name] = min(best[name], timed(cmd))
    base = best["import torch"]
    for name, seconds in best.items():
        print(f"{name:24s} {seconds:6.2f} s   {seconds / base:5.2f}x import torch")
    loaded = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"import defenses.rules loads of flwr, sklearn: {loaded}")
    print(f"check_startup_ratio: {best['fedsec run --check'] / base:.2f}")


if __name__ == "__main__":
    main()
