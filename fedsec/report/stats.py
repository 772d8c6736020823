"""Statistics over seeds: means with 95% intervals, paired differences, verdicts, rankings.

With a handful of seeds a mean alone says little: two defenses whose means differ by
less than the spread between seeds cannot be told apart. Every comparison here is paired
by seed (runs with the same seed share the partition, the pre-trained model and the
attacker's data), and its 95% interval is Student's t over the per-seed differences:
``mean ± t(0.975, n-1) · sd / sqrt(n)``. A claim holds only when the whole interval is on
its side of the threshold, fails when the whole interval is on the other side, and is
*not separated* otherwise (including when fewer than two seeds are paired, and when the
seeds are identical: a zero-width interval is no estimate of the spread, never a
certainty).

A table of many claims judged at once (``experiments/claims.py``) adds, per claim, an
exact sign-flip (permutation) test of the per-seed values against the threshold, the
number of seeds past the threshold ("k of n"), the two-sided paired t test's p-value,
and a family-wise correction (Holm) over the table; and, from the per-seed spread, the
number of seeds a 5- and a 10-point effect would need (:func:`seeds_needed`).
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
    the mean (``ci``: [low, high]) of the non-None values.

    ``ci`` is None below two values and when every value is the same (``identical``):
    identical seeds say nothing about the spread, so they give no interval, never one of
    zero width."""
    seeds = [s for s, v in per_seed.items() if v is not None]
    x = np.array([per_seed[s] for s in seeds], dtype=float)
    out: dict[str, Any] = {
        "mean": float(x.mean()) if x.size else None,
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        "n": int(x.size),
        "values": x.tolist(),
        "seeds": seeds,
        "ci": None,
        "identical": bool(x.size > 1 and identical(x)),
    }
    if x.size > 1 and not out["identical"]:
        half = t_critical(x.size) * out["std"] / math.sqrt(x.size)
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


def identical(values: Sequence[float] | np.ndarray) -> bool:
    """Whether the values are equal up to float noise (a spread below 1e-9 of their
    magnitude): differences of percentages such as 90.4 - 90.6 on every seed differ in
    their last bits, which a t test would read as near-certainty."""
    x = np.asarray(values, dtype=float)
    return bool(x.size and np.ptp(x) <= 1e-9 * max(1.0, float(np.abs(x).max())))


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
    it, fails if the interval lies below it, else not separated (also with no interval:
    fewer than two seeds, or identical ones)."""
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
    """``mean [low, high]``; ``mean (n=1, no interval)`` with one value, ``mean (n
    identical seeds, no interval)`` when all values are equal, ``-`` with none."""
    if stat.get("mean") is None:
        return "-"
    if stat.get("ci") is None:
        if stat.get("identical"):
            return f"{stat['mean']:.{digits}f} ({stat['n']} identical seeds, no interval)"
        return f"{stat['mean']:.{digits}f} (n={stat['n']}, no interval)"
    low, high = stat["ci"]
    return f"{stat['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


# --------------------------------------------------------------------------- tests

EXACT_SIGN_FLIP_MAX_N = 20  # 2^20 sign patterns; above, a seeded Monte Carlo of them
SIGN_FLIP_SAMPLES = 200_000


def sign_flip_p(values: Sequence[float], center: float = 0.0) -> float | None:
    """Two-sided p-value of the exact sign-flip (permutation) test that the per-seed values
    are symmetric around ``center``: the share of the ``2^n`` sign patterns of ``values -
    center`` whose sum is at least as far from 0 as the observed one. Distribution-free
    (it needs no normality and no spread estimate), and its smallest p is ``2 / 2^n``:
    with 3 seeds 0.25, so 3 seeds can never decide a claim at 5%. Above
    ``EXACT_SIGN_FLIP_MAX_N`` values, ``SIGN_FLIP_SAMPLES`` patterns drawn with a fixed seed
    (the observed pattern counted once). None with no values."""
    d = np.asarray(values, dtype=float) - center
    n = d.size
    if n == 0:
        return None
    observed = abs(d.sum())
    # float noise in the sums must not split ties: compare with a relative tolerance
    tolerance = 1e-9 * max(np.abs(d).sum(), 1e-300)
    if n <= EXACT_SIGN_FLIP_MAX_N:
        # every pattern, 2^16 at a time (all 2^20 at once would take 160 MB)
        hits, step = 0, 2**16
        for start in range(0, 2**n, step):
            codes = np.arange(start, min(start + step, 2**n))
            patterns = ((codes[:, None] >> np.arange(n)) & 1) * 2 - 1
            hits += int(np.sum(np.abs(patterns @ d) >= observed - tolerance))
        return hits / 2**n
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 2, size=(SIGN_FLIP_SAMPLES, n)) * 2 - 1
    hits = int(np.sum(np.abs(patterns @ d) >= observed - tolerance))
    return (hits + 1) / (SIGN_FLIP_SAMPLES + 1)


def t_test_p(values: Sequence[float], center: float = 0.0) -> float | None:
    """Two-sided p-value of the one-sample (paired) Student's t test of mean == ``center``;
    None below two values or with no spread (identical values: the t statistic is not
    defined, the sign-flip test is the one to read)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2 or identical(x):
        return None
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(x, center).pvalue)


def past_threshold(values: Sequence[float], threshold: float, above: bool) -> int:
    """How many values lie on a claim's side of ``threshold``: strictly above it if
    ``above`` (a claim "more than"), else at or below it (a claim "at most")."""
    x = np.asarray(values, dtype=float)
    return int(np.sum(x > threshold) if above else np.sum(x <= threshold))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error control); None stays None and
    does not count in the family. Adjusted p ``<= alpha`` rejects at family-wise level
    ``alpha``."""
    known = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(known)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(known)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def seeds_needed(
    std: float | None,
    effect: float,
    alpha: float = 1 - CONFIDENCE,
    power: float = 0.8,
    max_seeds: int = 1000,
) -> int | None:
    """The fewest seeds with which a paired two-sided t test at level ``alpha`` detects a
    true mean ``effect`` away from the threshold with probability ``power``, for per-seed
    differences of standard deviation ``std`` (from a pilot; the noncentral t
    distribution). At least 2. None without a spread estimate (fewer than two values, or
    identical ones), or if more than ``max_seeds`` would be needed."""
    if std is None or not math.isfinite(std) or std == 0 or effect == 0:
        return None  # identical seeds give no spread to plan from
    from scipy.stats import nct
    from scipy.stats import t as student

    for n in range(2, max_seeds + 1):
        critical = student.ppf(1 - alpha / 2, n - 1)
        shift = abs(effect) / (std / math.sqrt(n))
        if nct.sf(critical, n - 1, shift) + nct.cdf(-critical, n - 1, shift) >= power:
            return n
    return None


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
    the best mean, so it is never separated below another). ``dropped_seeds`` maps each
    seed that could not be scored to the reason.
    """
    seeds = sorted(
        {s for table in (ma, ba) for v in table.values() for s in v},
        key=lambda s: (0, int(s), "") if str(s).isdigit() else (1, 0, str(s)),
    )
    per_seed: dict[str, dict[str, float | None]] = {d: {} for d in defenses}
    ranks: dict[str, dict[str, int | None]] = {d: {} for d in defenses}
    used_seeds = []
    dropped: dict[str, str] = {}
    for s in seeds:
        one = ranking_scores(
            {k: v.get(s) for k, v in ma.items()},
            {k: v.get(s) for k, v in ba.items()},
            defenses,
            attacks,
            baseline,
        )
        if one["excluded"] or one["attacks"] != list(attacks):
            # this seed cannot be scored on the same attacks: say why, never drop it silently
            missing = [a for a in attacks if a not in one["attacks"] and a not in one["excluded"]]
            dropped[s] = "; ".join(
                [f"{a}: {why}" for a, why in one["excluded"].items()]
                + [f"{a}: not usable" for a in missing]
            )
            continue
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
    return {"seeds": used_seeds, "dropped_seeds": dropped, "defenses": entries, "first": first}


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
