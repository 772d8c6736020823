"""report.md: tables of a report.json, with the statistics behind every comparison."""

from __future__ import annotations

from typing import Any

from fedsec.report.build import ALL, format_mean_std, mix_warnings, set_title
from fedsec.report.load import METRICS
from fedsec.report.stats import BASELINE, CONFIDENCE, format_ci
from fedsec.results import SUMMARY_FILE


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _score(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _per_seed(stat: dict[str, Any]) -> str:
    return ", ".join(f"{v:.1f}" for v in stat["values"]) or "-"


def render_markdown(
    report: dict[str, Any], pngs: dict[str, str], heatmaps: dict[str, str] | None = None
) -> tuple[str, str]:
    """report.md's text, and its shorter part (compact tables and rankings) for the terminal."""
    rows, cols, seed = report["rows"], report["cols"], report["seed_axis"]
    columns = [tuple(c) for c in report.get("metric_columns", METRICS)]
    c = report["counts"]
    level_pct = round(100 * CONFIDENCE)
    head = [f"# Report: {report['name']}", ""]
    head.append(
        f"Results: `{report['results_dir']}` (runs from {report['source']}): {c['total']} runs, "
        f"{c['finished']} finished, {c['unfinished']} unfinished, {c['missing']} missing"
        + (f" (the slice `--only {' '.join(report['only'])}`)." if report.get("only") else ".")
    )
    over = (
        f"mean ± sample std over `{seed}` ({len(report['axes'][seed])} values; `n=k` marks "
        "cells with fewer finished runs)"
        if seed
        else "one run per cell (no seed axis)"
    )
    head.append(
        f"Rows: `{rows or ALL}`, columns: `{cols or ALL}`; {over}. All numbers in percent; "
        "MA = main accuracy, BA = backdoor accuracy, final = last round."
    )
    head.append(
        f"Intervals `[low, high]` are Student's t {level_pct}% intervals over seeds; a "
        "difference is paired by seed. A comparison whose interval contains the "
        "threshold is *not separated*: the seeds cannot tell the two apart."
    )
    failures = report.get("attacker_failures") or {}
    if failures:
        head.append(
            f"**Warning:** in {len(failures)} runs an attacker's reply failed in some rounds "
            "(`failed_clients`; the reason in `failed_reasons` or the run's log), so their "
            "cells measure an attack that did not always take part: "
            + ", ".join(f"`{k}` (rounds {', '.join(map(str, v))})" for k, v in failures.items())
            + "."
        )
    head += [f"**Warning:** {w}." for w in mix_warnings(report)]
    if any(g["metrics"]["auroc"]["n"] for s in report["sets"] for g in s["groups"]):
        head.append(
            "AUROC: how well the defense's per-client scores rank the attackers above "
            "the honest clients, per round, averaged over the rounds with both "
            "(50 = chance, 100 = every attacker above every honest client)."
        )
    if len(columns) > len(METRICS):
        head.append(
            "Smoothed / certified accuracy (CRFL, on the final model): the majority vote of "
            "noisy copies of the model, and the share of test examples it predicts right "
            "with a certified radius of at least r (`defenses/rules/crfl.py`)."
        )
    if any(g["metrics"]["acceptance"]["n"] for s in report["sets"] for g in s["groups"]):
        head.append(
            "Attacker kept: the share of attack rounds in which a defense that selects "
            "clients kept an attacker in the aggregate (defenses that weigh or clip "
            "every client have none)."
        )
    if any(
        g["metrics"].get("attacker_weight", {}).get("n")
        for s in report["sets"]
        for g in s["groups"]
    ):
        head.append(
            "Attacker weight: a kept attacker's coefficient in the new model as a "
            "share of the weight FedAvg gives it (100 = FedAvg's; keeping 3 of 10 equal "
            "clients makes it 333), the mean over the attack rounds and attackers kept; "
            "defenses whose model is no weighted combination of the clients' (median, "
            "trimmed mean, Bulyan, ...) have none."
        )
    if any("ba_above_baseline" in g for s in report["sets"] for g in s["groups"]):
        head.append(
            "BA − baseline: final BA minus the final BA of the same defense's no-attack "
            "run on the same backdoor inputs (same seed), with its interval."
        )
    if any("ma_drop" in g for s in report["sets"] for g in s["groups"]):
        head.append(
            "MA lost: the final MA of the same defense's no-attack run minus the attacked "
            "run's (same seed), with its interval."
        )
    if "paper" in report:
        head.append(f"Paper: {report['paper']['citation']}, data set `{report['paper']['name']}`.")
    left = [r for r in report["runs"] if r["status"] != "finished"]
    if left:
        head += ["", "Unfinished or missing runs, left out of every number and curve:", ""]
        for r in left:
            why = (
                "no run directory yet"
                if r["status"] == "missing"
                else f"no {SUMMARY_FILE}; {r['rounds_logged']} rounds logged"
            )
            head.append(f"- `{r['id']}`: {r['status']} ({why})")
    full, short = list(head), list(head)
    if heatmaps:
        maps = [
            "",
            "## Heatmaps: BA above the no-attack baseline (MA lost for untargeted attacks)",
            "",
        ]
        maps += [f"![{attack}]({png})" for attack, png in heatmaps.items()]
        full += maps

    for s in report["sets"]:
        title = set_title(s)
        level = "###" if title else "##"
        if title:
            full += ["", f"## {title}"]
            short += ["", f"## {title}"]
        groups = {(g["row"], g["col"]): g for g in s["groups"]}
        row_vals = list(dict.fromkeys(g["row"] for g in s["groups"]))
        col_vals = list(dict.fromkeys(g["col"] for g in s["groups"]))
        corner = f"{rows or ''} \\ {cols or ''}".strip(" \\") or ALL
        compact = [
            "",
            f"{level} Final MA / BA",
            "",
            _table(
                [corner] + col_vals,
                [
                    [r] + [groups[(r, cv)]["cell"] if (r, cv) in groups else "·" for cv in col_vals]
                    for r in row_vals
                ],
            ),
        ]
        long_rows = []
        for g in s["groups"]:
            seeds = str(g["n"]) if g["n"] == g["n_expected"] else f"{g['n']} of {g['n_expected']}"
            above = format_ci(g["ba_above_baseline"]) if "ba_above_baseline" in g else "-"
            lost = format_ci(g["ma_drop"]) if "ma_drop" in g else "-"
            long_rows.append(
                [g["row"], g["col"]]
                + [format_mean_std(g["metrics"][k]) for k, _ in columns]
                + [above, lost, seeds]
            )
        long = [
            "",
            f"{level} All metrics",
            "",
            _table(
                [rows or ALL, cols or ALL]
                + [t for _, t in columns]
                + ["BA − baseline", "MA lost", "seeds"],
                long_rows,
            ),
        ]
        seed_rows = [
            [
                g["row"],
                g["col"],
                _per_seed(g["metrics"]["final_main_accuracy"]),
                format_ci(g["metrics"]["final_main_accuracy"]),
                _per_seed(g["metrics"]["final_backdoor_accuracy"]),
                format_ci(g["metrics"]["final_backdoor_accuracy"]),
            ]
            for g in s["groups"]
        ]
        long += [
            "",
            f"{level} Per seed (final MA and BA, in seed order, and the {level_pct}% interval)",
            "",
            _table([rows or ALL, cols or ALL, "MA per seed", "MA", "BA per seed", "BA"], seed_rows),
        ]
        quotas = [
            f"- {q['defense']} {q['quota']}: its precision and false-positive rate reflect "
            "that quota; its AUROC does not."
            for q in s.get("selection_quotas", [])
        ]
        if quotas:
            long += [""] + quotas
        ranking = _render_ranking(s["ranking"], level, "paper" in report) if s["ranking"] else []
        png = pngs.get(title)
        plot = ["", f"{level} Curves", "", f"![MA and BA per round]({png})"] if png else []
        full += compact + long + ranking + plot
        short += compact + ranking

    if "paper" in report:
        pr = report["paper"]["ranking_all_attacks"]
        line = ", ".join(
            f"{e['rank']}. {e['defense']} ({_score(e['score'])})" for e in pr["scores"]
        )
        tail = ["", f"The paper's own ranking over {', '.join(pr['attacks'])}: {line}."]
        full += tail
        short += tail
    return "\n".join(full) + "\n", "\n".join(short) + "\n"


def ranking_verdict(ranking: dict[str, Any]) -> str:
    """One sentence: which defense ranks first and whether the seeds separate it."""
    first = (ranking.get("per_seed") or {}).get("first")
    if not first:
        return "No defense has a ranking score on every seed."
    scored = (ranking.get("per_seed") or {}).get("seeds") or []
    if len(scored) < 2:
        return (
            f"{first['defense']} has the best score, on {len(scored)} scored seed: no paired "
            "interval, so nothing is separated."
        )
    if first["verdict"] == "holds":
        return (
            f"{first['defense']} ranks first, separated from every other defense "
            "(each paired interval of the score gap lies above 0)."
        )
    return (
        f"{first['defense']} has the best mean score but is not separated from "
        f"{', '.join(first['not_separated_from'])} (their paired intervals of the score gap "
        "contain 0): the seeds do not tell them apart."
    )


def _render_ranking(ranking: dict[str, Any], level: str, with_paper: bool) -> list[str]:
    formula = (
        f"score(d) = Σ over attacks a of (MA[d,a] − MA[{BASELINE},a]) / MA[{BASELINE},a] − "
        f"(BA[d,a] − BA[{BASELINE},a]) / BA[{BASELINE},a], on mean final MA and BA "
        f"(Huang et al., ICCV 2023); attacks: {', '.join(ranking['attacks']) or 'none usable'}."
    )
    out = ["", f"{level} Ranking score", "", formula]
    if ranking["excluded"]:
        out[-1] += (
            " Left out: "
            + "; ".join(f"{a} ({why})" for a, why in ranking["excluded"].items())
            + "."
        )
    if with_paper:
        out[-1] += (
            " The paper's score uses its Table 1 over "
            f"{', '.join(ranking['paper_attacks']) or 'no attack of ours'}."
        )
    per_seed = {e["defense"]: e for e in (ranking.get("per_seed") or {}).get("defenses", [])}
    seeds = (ranking.get("per_seed") or {}).get("seeds", [])
    header = [
        "rank",
        "defense",
        "score",
        "score per seed [interval]",
        "rank per seed",
        "gap to first",
    ]
    header += ["paper score", "paper rank"] if with_paper else []
    rows = []
    for e in ranking["scores"]:
        ps = per_seed.get(e["defense"], {})
        row = [
            "-" if e["rank"] is None else str(e["rank"]),
            e["defense"],
            _score(e["score"]),
            format_ci(ps["score"], 3) if ps else "-",
            ", ".join("-" if ps["ranks"].get(s) is None else str(ps["ranks"][s]) for s in seeds)
            if ps
            else "-",
            format_ci(ps["behind_leader"], 3) if ps.get("behind_leader") else "-",
        ]
        if with_paper:
            row += [
                _score(e["paper_score"]),
                "-" if e["paper_rank"] is None else str(e["paper_rank"]),
            ]
        rows.append(row)
    out += ["", _table(header, rows)]
    if ranking.get("per_seed"):
        dropped = ranking["per_seed"].get("dropped_seeds") or {}
        left_out = "".join(f"; seed {s} left out ({why})" for s, why in dropped.items())
        out += [
            "",
            f"Per seed ({', '.join(seeds) or 'none scored'}{left_out}): "
            + ranking_verdict(ranking),
        ]
    return out
