"""The GPU checks' tooling runs without Flower: benchmarks/gpu_timing.py and tests/test_gpu.py.

The GPU machine has no flwr. One subprocess, in which ``import flwr`` fails and torch
uses one thread, imports tests/test_gpu.py (the checks: ``pytest -m gpu``) and runs the
timing script three times at tiny sizes: ``--help``; the default devices with the rules
only (without CUDA it must say so and time the CPU); ``--fake-cuda`` (a second CPU
device plays the CUDA part, so the two-device lines run). What is tested is that every
line is there and no measurement raised, never the times themselves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from defenses import rules

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_timing.py"
GPU_TESTS = REPO / "tests" / "test_gpu.py"
TINY = ["--repeats", "1", "--n", "10", "--d", "3000"]
RUNS = [
    ["--help"],
    ["--only", "rules", *TINY],
    ["--fake-cuda", "--examples", "8", *TINY],
]

# sys.modules["flwr"] = None makes every `import flwr` / `import flwr.x` raise ImportError.
RUNNER = """
import json, runpy, sys
sys.modules["flwr"] = None
script, tests, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
runpy.run_path(tests, run_name="gpu_tests")
for i, argv in enumerate(runs):
    print(f"=== run {i}", flush=True)
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    print(f"=== exit {code}", flush=True)
loaded = sorted(name for name, module in sys.modules.items()
                if module is not None and name.split(".")[0] in ("flwr", "ray"))
print("flower modules loaded:", loaded)
print("Flower adapter loaded:", "defenses.adapter" in sys.modules)
"""


def rule_labels() -> list[str]:
    """Every rule class that defenses.rules exports (Multi-metrics: both variants)."""
    labels = []
    for name in rules.__all__:
        obj = getattr(rules, name)
        if isinstance(obj, type) and issubclass(obj, rules.AggregationRule) and obj.name:
            if obj is rules.MultiMetricsRule:
                labels += [f"{name}[paper]", f"{name}[reference]"]
            else:
                labels.append(name)
    return labels


def split_runs(out: str) -> list[tuple[str, int]]:
    """(output, exit code) of each run of the script."""
    found = re.findall(r"^=== run \d+\n(.*?)^=== exit (\d+)$", out, re.MULTILINE | re.DOTALL)
    return [(text, int(code)) for text, code in found]


def lines(text: str, prefix: str) -> dict[str, str]:
    """Measurement lines starting with ``prefix``: name -> the rest of the line."""
    found = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, rest = line.partition(" ")
            found[name] = rest.strip()
    return found


def test_timing_script_and_gpu_tests_run_without_flower() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the script must find the repository by itself
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(SCRIPT), str(GPU_TESTS), json.dumps(RUNS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "flower modules loaded: []" in out, out
    assert "Flower adapter loaded: False" in out, out
    runs = split_runs(out)
    assert [code for _, code in runs] == [0, 0, 0], out + proc.stderr
    (usage, _), (rules_only, _), (fake, _) = runs
    labels = [f"rule-speed/{label}" for label in rule_labels()]

    assert usage.startswith("usage:"), usage
    for option in ("--device", "--repeats", "--only", "--n", "--d", "--examples"):
        assert option in usage, usage
    assert "--fake-cuda" not in usage, usage

    # Default devices, rules only: every rule timed (without CUDA: on the CPU only),
    # relative to FedAvg.
    assert "train-speed/" not in rules_only, rules_only
    speed = lines(rules_only, "rule-speed/")
    assert sorted(speed) == sorted(labels), rules_only
    assert speed["rule-speed/FedAvgRule"].startswith("cpu "), rules_only
    assert "(1.0x FedAvg)" in speed["rule-speed/FedAvgRule"], rules_only
    if not torch.cuda.is_available():
        assert "gpu_timing: no CUDA device" in rules_only, rules_only
        for text in speed.values():
            assert re.fullmatch(r"cpu \d+\.\d+ m?s \(\d+\.\dx FedAvg\)", text), rules_only
    assert "error:" not in rules_only, rules_only

    # Two devices (the second a CPU playing CUDA): ratios and TF32 lines for everything.
    assert "no CUDA device" not in fake, fake
    train = lines(fake, "train-speed/")
    assert sorted(train) == ["train-speed/lenet", "train-speed/vgg9"], fake
    for text in train.values():
        assert re.search(r"^cpu .*/epoch, cuda .*/epoch: GPU \d+\.\dx faster \(8 examples", text)
    assert sorted(lines(fake, "train-tf32/")) == ["train-tf32/lenet", "train-tf32/vgg9"], fake
    speed = lines(fake, "rule-speed/")
    assert sorted(speed) == sorted(labels), fake
    for text in speed.values():
        assert re.search(r"^cpu .* FedAvg\), cuda .* FedAvg\): GPU \d+\.\dx faster$", text), fake
    tf32 = lines(fake, "rule-tf32/")
    assert sorted(tf32) == sorted(label.replace("speed", "tf32") for label in labels), fake
    # On a CPU TF32 does nothing and every rule (seeded noise included) is deterministic
    # on one thread, so the "TF32 on" results equal the float32 ones exactly.
    for text in tf32.values():
        assert text.startswith("matmul TF32 on: same clients as fp32: True"), fake
        assert "agg rel diff 0.0e+00" in text, fake
    assert "error:" not in fake, fake
