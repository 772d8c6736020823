"""Statistics over seeds: means with 95% intervals, paired differences, verdicts, rankings.

With a handful of seeds a mean alone says little: two defenses whose means differ by
less than the spread between seeds cannot be told apart. Every comparison here is paired
by seed (runs with the same seed share the partition, the pre-trained model and the
attacker's data), and its 95% interval is Student's t over the per-seed differences:
``mean ± t(0.975, n-1) · sd / sqrt(n)``. A claim holds only when the whole interval is on
its side of the threshold, fails when the whole interval is on the other side, and is
*not separated* otherwise (including when fewer than two seeds are paired).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedsec import paper as paper_mod
from fedsec.report.load import is_no_attack

BASELINE = "fedavg"
HOLDS, FAILS, NOT_SEPARATED = "holds", "fails", "not separated"
CONFIDENCE = 0.95


def t_critical(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student's t quantile for ``n`` values (n - 1 degrees of freedom)."""
    from scipy.stats import t  # scipy.stats takes a while to import; only here

    return float(t.ppf(0.5 + confidence / 2, n - 1))


def summarize(per_seed: Mapping[str, float | None]) -> dict[str, Any]:
    """Mean, sample std (ddof 1), n, the values and their seeds, and the 95% t interval of
    the mean (``ci``: [low, high]; None below two values) of the non-None values."""
    seeds = [s for s, v in per_seed.items() if v is not None]
    x = np.array([per_seed[s] for s in seeds], dtype=float)
    out: dict[str, Any] = {
        "mean": float(x.mean()) if x.size else None,
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        "n": int(x.size),
        "values": x.tolist(),
        "seeds": seeds,
        "ci": None,
    }
    if x.size > 1:
        half = t_critical(x.size) * out["std"] / math.sqrt(x.size)
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """:func:`summarize` of values without seed labels (numbered in order)."""
    return summarize({str(i): v for i, v in enumerate(values)})


def per_seed_values(stat: Mapping[str, Any]) -> dict[str, float]:
    """``{seed: value}`` of a :func:`summarize` result."""
    return dict(zip(stat["seeds"], stat["values"], strict=True))


def paired_difference(
    a: Mapping[str, float | None], b: Mapping[str, float | None]
) -> dict[str, Any]:
    """:func:`summarize` of ``a[s] - b[s]`` over the seeds ``s`` both have."""
    return summarize({s: a[s] - b[s] for s in a if a[s] is not None and b.get(s) is not None})


def verdict_at_least(stat: Mapping[str, Any], threshold: float) -> str:
    """Whether the quantity is >= ``threshold``: holds if its 95% interval lies at or above
    it, fails if the interval lies below it, else not separated."""
    ci = stat.get("ci")
    if ci is None:
        return NOT_SEPARATED
    if ci[0] >= threshold:
        return HOLDS
    if ci[1] < threshold:
        return FAILS
    return NOT_SEPARATED


def verdict_at_most(stat: Mapping[str, Any], threshold: float) -> str:
    """Whether the quantity is <= ``threshold`` (the mirror of :func:`verdict_at_least`)."""
    ci = stat.get("ci")
    if ci is None:
        return NOT_SEPARATED
    if ci[1] <= threshold:
        return HOLDS
    if ci[0] > threshold:
        return FAILS
    return NOT_SEPARATED


def format_ci(stat: Mapping[str, Any], digits: int = 1) -> str:
    """``mean [low, high]`` (``mean (n=1)`` with one value, ``-`` with none)."""
    if stat.get("mean") is None:
        return "-"
    if stat.get("ci") is None:
        return f"{stat['mean']:.{digits}f} (n={stat['n']})"
    low, high = stat["ci"]
    return f"{stat['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


# --------------------------------------------------------------------------- ranking


def ranking_scores(
    ma: dict[tuple[str, str], float | None],
    ba: dict[tuple[str, str], float | None],
    defenses: Sequence[str],
    attacks: Sequence[str],
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """The ranking score of Huang et al. (ICCV 2023) of each defense against ``baseline``.

    ``score(d) = sum_a (MA[d,a] - MA[b,a]) / MA[b,a] - (BA[d,a] - BA[b,a]) / BA[b,a]`` over
    the attacks that are not no-attack baselines (:func:`is_no_attack`) where the
    baseline's MA and BA are known and non-zero (the others are listed in ``excluded``
    with the reason); a defense missing one of those attacks has no score. ``ma`` and
    ``ba`` map (defense, attack) to an accuracy in any one unit. Returns ``{"attacks",
    "excluded", "scores": [{"defense", "score", "rank"}]}`` sorted best first (unscored
    last).
    """

    def grid(table: dict) -> np.ndarray:
        return np.array(
            [
                [np.nan if table.get((d, a)) is None else table[(d, a)] for a in attacks]
                for d in defenses
            ],
            dtype=float,
        ).reshape(len(defenses), len(attacks))

    m, b = grid(ma), grid(ba)
    base = list(defenses).index(baseline)
    excluded: dict[str, str] = {}
    use = np.zeros(len(attacks), dtype=bool)
    for j, a in enumerate(attacks):
        if is_no_attack(a):
            continue
        if not (np.isfinite(m[base, j]) and np.isfinite(b[base, j])):
            excluded[a] = f"no {baseline} result"
        elif m[base, j] == 0 or b[base, j] == 0:
            excluded[a] = f"{baseline}'s {'MA' if m[base, j] == 0 else 'BA'} is 0"
        else:
            use[j] = True
    terms = (m[:, use] - m[base, use]) / m[base, use] - (b[:, use] - b[base, use]) / b[base, use]
    score = terms.sum(axis=1) if use.any() else np.full(len(defenses), np.nan)
    return {
        "attacks": [a for a, u in zip(attacks, use, strict=True) if u],
        "excluded": excluded,
        "scores": ranked(
            {d: None if np.isnan(s) else float(s) for d, s in zip(defenses, score, strict=True)}
        ),
    }


def ranked(scores: dict[str, float | None]) -> list[dict[str, Any]]:
    """Entries sorted by score (best first, None last) with competition ranks (1, 2, 2, 4)."""
    order = sorted(scores, key=lambda d: (scores[d] is None, -(scores[d] or 0.0)))
    out, rank = [], 0
    for i, d in enumerate(order):
        if scores[d] is not None and (i == 0 or scores[d] != scores[order[i - 1]]):
            rank = i + 1
        out.append(
            {"defense": d, "score": scores[d], "rank": rank if scores[d] is not None else None}
        )
    return out


def seed_rankings(
    ma: Mapping[tuple[str, str], Mapping[str, float | None]],
    ba: Mapping[tuple[str, str], Mapping[str, float | None]],
    defenses: Sequence[str],
    attacks: Sequence[str],
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """The ranking score per seed, each defense's per-seed ranks, and whether the first
    defense is separated from each other one.

    ``ma`` and ``ba`` map (defense, attack) to {seed: value}. Each seed's score is
    :func:`ranking_scores` on that seed's values over ``attacks`` (the attacks the mean
    ranking uses); a seed where the baseline's BA or MA is 0 on one of them has no score.
    For every defense: its per-seed scores and ranks, and the paired difference of its
    score from the leader's (the best mean score) with its 95% interval. ``first`` says
    whether the leader ranks first: ``holds`` if every other defense is separated below
    it, else ``not separated`` with the defenses it cannot be told from (the leader has
    the best mean, so it is never separated below another).
    """
    seeds = sorted(
        {s for table in (ma, ba) for v in table.values() for s in v},
        key=lambda s: (0, int(s), "") if str(s).isdigit() else (1, 0, str(s)),
    )
    per_seed: dict[str, dict[str, float | None]] = {d: {} for d in defenses}
    ranks: dict[str, dict[str, int | None]] = {d: {} for d in defenses}
    used_seeds = []
    for s in seeds:
        one = ranking_scores(
            {k: v.get(s) for k, v in ma.items()},
            {k: v.get(s) for k, v in ba.items()},
            defenses,
            attacks,
            baseline,
        )
        if one["excluded"] or one["attacks"] != list(attacks):
            continue  # this seed cannot be scored on the same attacks
        used_seeds.append(s)
        for e in one["scores"]:
            per_seed[e["defense"]][s] = e["score"]
            ranks[e["defense"]][s] = e["rank"]
    means = {d: summarize(per_seed[d]) for d in defenses}
    scored = [d for d in defenses if means[d]["mean"] is not None]
    leader = max(scored, key=lambda d: means[d]["mean"]) if scored else None
    entries = []
    tied = []
    for d in defenses:
        entry = {"defense": d, "scores": per_seed[d], "ranks": ranks[d], "score": means[d]}
        if leader is not None and d != leader and d in scored:  # an unscored one ties no one
            gap = paired_difference(per_seed[leader], per_seed[d])
            entry["behind_leader"] = gap
            if gap["ci"] is None or gap["ci"][0] <= 0:  # separated: the interval above 0
                tied.append(d)
        entries.append(entry)
    first = None
    if leader is not None:
        first = {
            "defense": leader,
            "verdict": HOLDS if not tied else NOT_SEPARATED,
            "not_separated_from": tied,
        }
    return {"seeds": used_seeds, "defenses": entries, "first": first}


def paper_ranking(name: str, attacks: Sequence[str] | None = None) -> dict[str, Any]:
    """The ranking score of the paper's own table ``name`` over ``attacks`` (default: all)."""
    table = paper_mod.paper_table(name)
    attacks = list(paper_mod.ATTACKS if attacks is None else attacks)
    cells = {(d, a): table[d].get(a) for d in paper_mod.DEFENSES for a in attacks}
    return ranking_scores(
        {k: v and v[0] for k, v in cells.items()},
        {k: v and v[1] for k, v in cells.items()},
        list(paper_mod.DEFENSES),
        attacks,
    )
