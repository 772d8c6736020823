"""The accuracies the NDSS'21 authors' notebooks logged, cell by cell.

Shejwalkar & Houmansadr's release (github.com/vrt1shjwlkr/NDSS21-Model-Poisoning) runs
every attack against every rule in Jupyter notebooks whose committed outputs hold the
training logs. This prints, for each code cell of the notebooks given that trained a
federation, its settings (``aggregation``, ``at_type``, ``dev_type``, ``n_attackers``,
``nepochs``, ``fed_lr``, ``batch_size``) and its last logged line: the round reached,
the validation accuracy then, and the best validation accuracy with the test accuracy
at that point (``te_acc``). Read the notebooks from a checkout or from git:

    git -C REPO show HEAD:cifar10/release-fedsgd-alexnet-median.ipynb > /tmp/median.ipynb
    python experiments/known-breaks/authors_logs.py /tmp/median.ipynb
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

SETTINGS = re.compile(
    r"^\s*(aggregation|at_type|dev_type|n_attackers|nepochs|fed_lr|batch_size)\s*=\s*(.+?)\s*$"
)
LOGGED = re.compile(
    r"\be\s+(\d+).*?val acc\s+([\d.]+)\s+best val_acc\s+([\d.]+)(?:\s+te_acc\s+([\d.]+))?"
)


def cells(notebook: dict) -> list[dict]:
    """One entry per code cell that logged accuracies: its settings and last log line."""
    out = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", []))
        text = "".join("".join(o.get("text", [])) for o in cell.get("outputs", []))
        hits = [m for line in text.splitlines() if (m := LOGGED.search(line))]
        if not hits:
            continue
        settings = {}
        for line in source.splitlines():
            if m := SETTINGS.match(line):
                settings[m.group(1)] = m.group(2)  # the last assignment wins, as in Python
        last = hits[-1]
        out.append(
            {
                "cell": index,
                **settings,
                "round": int(last.group(1)),
                "val_acc": float(last.group(2)),
                "best_val_acc": float(last.group(3)),
                "te_acc_at_best": float(last.group(4)) if last.group(4) else None,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(
        "| notebook | cell | aggregation | at_type | dev_type | n_attackers | last round | "
        "val acc then | best val acc | te_acc at best |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in args.notebooks:
        for c in cells(json.loads(path.read_text())):
            print(
                f"| {path.name} | {c['cell']} | {c.get('aggregation', '')} | "
                f"{c.get('at_type', '')} | {c.get('dev_type', '')} | "
                f"{c.get('n_attackers', '')} | {c['round']} | {c['val_acc']:.1f} | "
                f"{c['best_val_acc']:.1f} | "
                f"{'' if c['te_acc_at_best'] is None else format(c['te_acc_at_best'], '.1f')} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
