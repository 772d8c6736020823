"""The report's figures: MA/BA curves per set, and heatmaps of what each attack gains.

matplotlib's object API with the Agg canvas (no display, pyplot's global state
untouched); matplotlib is imported only here, when a figure is drawn.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from fedsec.report.build import ALL, set_title


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text)


def plot_curves(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """One PNG per set: a panel per column value, MA solid and BA dashed per row value.

    Returns {set title ("" without extra axes): file name}. Uses matplotlib's object API
    with the Agg canvas (no display, pyplot's global state untouched).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    written = {}
    for s in report["sets"]:
        title = set_title(s)
        name = "curves.png" if not title else "curves_" + _safe(title.replace(", ", "_")) + ".png"
        row_vals = list(dict.fromkeys(g["row"] for g in s["groups"]))
        col_vals = list(dict.fromkeys(g["col"] for g in s["groups"]))
        cmap = colormaps["tab10" if len(row_vals) <= 10 else "tab20"]
        colours = {r: cmap(i % cmap.N) for i, r in enumerate(row_vals)}
        ncols = min(len(col_vals), 4)
        nrows = -(-len(col_vals) // ncols)
        legend_w = 0.6 + 0.06 * max(len(str(r)) for r in row_vals + [report["rows"] or ""])
        fig = Figure(figsize=(4.2 * ncols + legend_w, 3.4 * nrows + 0.6))
        FigureCanvasAgg(fig)
        axs = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
        groups = {(g["row"], g["col"]): g for g in s["groups"]}
        # the grid may have more axes than columns; the spare ones are hidden below
        for ax, cv in zip(axs, col_vals, strict=False):
            drawn = False
            for rv in row_vals:
                if (rv, cv) not in groups:  # a combination the sweep excludes
                    continue
                cur = groups[(rv, cv)]["curves"]
                x = np.array(cur["round"], dtype=float)
                for key, style in (("main_accuracy", "-"), ("backdoor_accuracy", "--")):
                    y = np.array([np.nan if v is None else v for v in cur[key]], dtype=float)
                    if np.isfinite(y).any():
                        ax.plot(
                            x,
                            y,
                            style,
                            color=colours[rv],
                            linewidth=1.5,
                            marker="." if x.size < 3 else None,
                        )
                        drawn = True
            if not drawn:
                ax.text(
                    0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes
                )
            ax.set_title(
                f"{report['cols']}={cv}" if report["cols"] else _panel_title(report, s, cv),
                fontsize="medium",
            )
            ax.set_ylim(-2, 102)
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        for ax in axs[len(col_vals) :]:
            ax.set_visible(False)
        handles = [Line2D([], [], color=colours[r], label=r) for r in row_vals]
        handles += [
            Line2D([], [], color="black", linestyle="-", label="MA"),
            Line2D([], [], color="black", linestyle="--", label="BA"),
        ]
        fig.legend(
            handles=handles, title=report["rows"] or None, loc="center right", fontsize="small"
        )
        fig.suptitle(
            f"{report['name']}"
            + (f" ({title})" if title else "")
            + (f": mean over {report['seed_axis']}s" if report["seed_axis"] else "")
        )
        fig.tight_layout(rect=(0, 0, 1 - legend_w / fig.get_figwidth(), 1))
        fig.savefig(out_dir / name, format="png", dpi=90)
        written[title] = name
    return written


def _panel_title(report: dict[str, Any], s: dict[str, Any], cv: str) -> str:
    """The title of a panel that no column axis names (the showcase's one panel): the
    attack its runs share, read from their summaries ("attack: edge-case-pgd-replacement
    (tail)"), or the attacks they ran; the column value (``all``) only when no summary
    says."""
    dirs = {r["id"]: r["dir"] for r in report.get("runs", [])}
    attacks = []
    for g in s["groups"]:
        if g["col"] != cv:
            continue
        for run_id in g["runs"]:
            try:
                summary = json.loads((Path(dirs[run_id]) / "summary.json").read_text("utf-8"))
            except (KeyError, OSError, ValueError):
                continue
            attack = (summary.get("config") or {}).get("attack") or {}
            name = attack.get("name", "none")
            details = [attack.get("edge_case")]
            details += (
                [f"evasion {attack['evasion']}"] if attack.get("evasion", "none") != "none" else []
            )
            detail = ", ".join(d for d in details if d)
            label = "no attack" if name == "none" else name + (f" ({detail})" if detail else "")
            if label not in attacks:
                attacks.append(label)
    if not attacks:
        return cv
    if attacks == ["no attack"]:
        return "no attack"
    return ("attack: " if len(attacks) == 1 else "attacks: ") + ", ".join(attacks)


#: What a heatmap's colour measures: BA above the no-attack baseline for a backdoor,
#: MA lost to the attack for an untargeted attack (no BA).
MEASURES = {
    "ba_above_baseline": "BA − no-attack BA (points)",
    "ma_drop": "MA lost to the attack (points)",
}


def heatmap_data(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per attacked column: the sets (rows) x the report's rows (columns) matrix of what
    the attack gains (mean final BA above the no-attack baseline for a backdoor, mean MA
    lost for an untargeted attack; NaN where there is no such cell), and the share of
    attack rounds the attacker was kept (NaN where the defense selects no one)."""
    out: dict[str, dict[str, Any]] = {}
    sets = report["sets"]
    titles = [set_title(s) or ALL for s in sets]
    for s_idx, s in enumerate(sets):
        for g in s["groups"]:
            if g["n"] == 0:  # no finished run (a sweep still running): nothing to show
                continue
            # a backdoor (a cell with BA) is judged by its BA, an untargeted attack by the
            # MA it costs
            targeted = g["metrics"]["final_backdoor_accuracy"]["n"] > 0
            measure = "ba_above_baseline" if targeted else "ma_drop"
            if measure not in g:
                continue
            entry = out.setdefault(
                g["col"],
                {"sets": titles, "rows": [], "gain": {}, "kept": {}, "measure": measure},
            )
            if g["row"] not in entry["rows"]:
                entry["rows"].append(g["row"])
            entry["gain"][(s_idx, g["row"])] = g[entry["measure"]]["mean"]
            entry["kept"][(s_idx, g["row"])] = g["metrics"]["acceptance"]["mean"]
    for entry in out.values():
        shape = (len(entry["sets"]), len(entry["rows"]))
        gain, kept = np.full(shape, np.nan), np.full(shape, np.nan)
        for (i, row), v in entry["gain"].items():
            gain[i, entry["rows"].index(row)] = np.nan if v is None else v
        for (i, row), v in entry["kept"].items():
            kept[i, entry["rows"].index(row)] = np.nan if v is None else v
        used = ~np.all(np.isnan(gain), axis=1)  # sets without this attack drop out
        entry.update(
            sets=[t for t, u in zip(entry["sets"], used, strict=True) if u],
            gain=gain[used],
            kept=kept[used],
        )
    return out


def plot_heatmaps(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """One PNG per attacked column: set (e.g. regime) x defense, colour = what the attack
    gains (mean final BA above the no-attack baseline, or MA lost for an untargeted
    attack; percentage points), each cell annotated with it and, for defenses that
    select clients, the share of attack rounds that kept the attacker.

    Returns {column value: file name}."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = {}
    for attack, entry in heatmap_data(report).items():
        gain, kept = entry["gain"], entry["kept"]
        if gain.size == 0:
            continue
        limit = max(10.0, float(np.nanmax(np.abs(gain))) if np.isfinite(gain).any() else 10.0)
        fig = Figure(figsize=(1.3 * gain.shape[1] + 3.2, max(3.2, 0.55 * gain.shape[0] + 2.2)))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        image = ax.imshow(
            np.ma.masked_invalid(gain), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto"
        )
        for i in range(gain.shape[0]):
            for j in range(gain.shape[1]):
                if np.isnan(gain[i, j]):
                    ax.text(j, i, "·", ha="center", va="center", color="grey")
                    continue
                text = f"{gain[i, j]:+.1f}" + (
                    "" if np.isnan(kept[i, j]) else f"\nkept {kept[i, j]:.0f}%"
                )
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="white" if abs(gain[i, j]) > 0.6 * limit else "black",
                )
        ax.set_xticks(range(gain.shape[1]), entry["rows"], rotation=30, ha="right")
        ax.set_yticks(range(gain.shape[0]), entry["sets"])
        ax.set_xlabel(report["rows"] or ALL)
        fig.colorbar(image, ax=ax, label=MEASURES[entry["measure"]])
        ax.set_title(
            f"{report['name']}: {report['cols']}={attack}" if report["cols"] else report["name"],
            fontsize="medium",
        )
        fig.tight_layout()
        name = f"heatmap_{_safe(attack)}.png"
        fig.savefig(out_dir / name, format="png", dpi=90)
        written[attack] = name
    return written
