"""benchmarks/gpu_check.py runs without Flower and covers every aggregation rule.

The script is meant for a GPU machine without flwr; here its ``--quick --device cpu``
smoke runs in a subprocess where ``import flwr`` fails, on one thread (about 10-15 s).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"

# sys.modules["flwr"] = None makes every `import flwr` / `import flwr.x` raise ImportError.
RUNNER = """
import runpy, sys
sys.modules["flwr"] = None
script = sys.argv[1]
sys.argv = [script, "--quick", "--device", "cpu"]
try:
    runpy.run_path(script, run_name="__main__")
    code = 0
except SystemExit as stop:
    code = stop.code
loaded = sorted(name for name, module in sys.modules.items()
                if module is not None and name.split(".")[0] in ("flwr", "ray"))
print("flower modules loaded:", loaded)
print("Flower adapter loaded:", "defenses.adapter" in sys.modules)
sys.exit(code)
"""


def rule_classes() -> list[str]:
    """The rule classes that defenses/rules/__init__.py exports (read, not imported)."""
    tree = ast.parse((REPO / "defenses" / "rules" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names = ast.literal_eval(node.value)
            return [n for n in names if n.endswith("Rule") and n not in ("AggregationRule", "SeededRule")]
    raise AssertionError("defenses/rules/__init__.py has no __all__")


def test_quick_cpu_run_without_flower() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the script must find the repository by itself
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(SCRIPT)], cwd=REPO / "benchmarks", env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"^gpu_check: \d+ passed, 0 failed$", out, re.MULTILINE), out
    assert "flower modules loaded: []" in out, out
    assert "Flower adapter loaded: False" in out, out
    passed = {line.split()[0] for line in out.splitlines() if " PASS " in line}
    for name in rule_classes():
        labels = ([f"rule/{name}[paper]", f"rule/{name}[reference]"]
                  if name == "MultiMetricsRule" else [f"rule/{name}"])
        for label in labels:
            assert label in passed, f"{label} missing or not PASS:\n{out}"
    assert {"noise/WeakDPRule", "noise/FLAMERule", "train/lenet", "train/vgg9"} <= passed, out
    assert " FAIL " not in out, out
