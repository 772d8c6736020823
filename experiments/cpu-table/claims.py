"""Check the CPU-scale table against the claims of issue 4 and of Huang et al. (ICCV 2023).

Reads the ``report.json`` that ``fedsec report`` wrote for the cpu-table sweep and prints
one line per claim: HOLDS / FAILS and the numbers behind it (percent, mean over seeds).
Nothing is computed that the report does not hold; the thresholds are the issue's.

    python experiments/cpu-table/claims.py experiments/results/cpu-table/report.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ATTACKS = ("model-replacement", "dba", "pgd", "edge-case-pgd")
# Each attack's backdoor accuracy is compared with the no-attack run that measures the
# same backdoor test set (sweep.toml: none-edge = ARDIS 7s -> 1, none-trigger = pattern -> 2).
BASELINE = {"model-replacement": "none-trigger", "dba": "none-trigger", "pgd": "none-trigger",
            "edge-case-pgd": "none-edge"}
MM_VARIANTS = ("multi-metrics", "multi-metrics-reference")


def load(path: Path) -> tuple[dict, dict]:
    report = json.loads(path.read_text())
    groups = report["sets"][0]["groups"]
    cells = {(g["row"], g["col"]): g for g in groups}
    return report, cells


def mean(cells: dict, defense: str, attack: str, metric: str) -> float | None:
    group = cells.get((defense, attack))
    stat = group and group["metrics"].get(metric)
    return None if not stat or stat.get("mean") is None else stat["mean"]


def seeds(cells: dict, defense: str, attack: str) -> str:
    group = cells.get((defense, attack))
    return f"n={group['n']}" if group else "n=0"


def f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def line(ok: bool | None, text: str) -> str:
    return f"{'HOLDS' if ok else 'n/a  ' if ok is None else 'FAILS'}  {text}"


def check(cells: dict, ranking: list[dict]) -> list[str]:
    out = []
    ma, ba = "final_main_accuracy", "final_backdoor_accuracy"
    fed_ec = mean(cells, "fedavg", "edge-case-pgd", ba)
    out.append(line(None if fed_ec is None else fed_ec >= 50,
                    f"FedAvg's edge-case PGD BA >= 50: {f(fed_ec)} ({seeds(cells, 'fedavg', 'edge-case-pgd')})"))
    fed_ma = mean(cells, "fedavg", "none-edge", ma)
    for mm in MM_VARIANTS:
        for attack in ("model-replacement", "pgd", "edge-case-pgd"):
            got, base = mean(cells, mm, attack, ba), mean(cells, mm, BASELINE[attack], ba)
            ok = None if got is None or base is None else abs(got - base) <= 5
            out.append(line(ok, f"{mm} BA within 5 points of its no-attack baseline on {attack}: "
                                f"{f(got)} vs {f(base)} ({BASELINE[attack]})"))
        for attack in ATTACKS:
            got = mean(cells, mm, attack, ma)
            ok = None if got is None or fed_ma is None else got >= fed_ma - 1
            out.append(line(ok, f"{mm} MA within 1 point of FedAvg's no-attack MA under {attack}: "
                                f"{f(got)} vs {f(fed_ma)}"))
    order = [entry["defense"] for entry in ranking]
    for mm in MM_VARIANTS:
        rank = next((e["rank"] for e in ranking if e["defense"] == mm), None)
        out.append(line(None if rank is None else rank == 1,
                        f"{mm} ranks first by the ranking score: rank {rank}; order {', '.join(order)}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.json of the cpu-table sweep")
    args = parser.parse_args()
    report, cells = load(args.report)
    ranking = report["sets"][0]["ranking"]["scores"]
    c = report["counts"]
    print(f"cpu-table: {c['finished']} of {c['total']} runs finished")
    for text in check(cells, ranking):
        print(text)
    print("ranking score (vs FedAvg): " + ", ".join(
        f"{e['rank']}. {e['defense']} {e['score']:+.4f}" for e in ranking if e["score"] is not None))


if __name__ == "__main__":
    main()
