"""Statistics that tell defenses apart: t intervals, paired differences, verdicts,
per-seed ranking, attacker acceptance, no-attack baselines and heatmaps of a regime map
read from two sweep directories."""

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsec.cli import main
from fedsec.report.plot import heatmap_data
from fedsec.report.stats import (
    FAILS,
    HOLDS,
    NOT_SEPARATED,
    format_ci,
    holm,
    paired_difference,
    past_threshold,
    seed_rankings,
    seeds_needed,
    sign_flip_p,
    summarize,
    t_test_p,
    verdict_at_least,
    verdict_at_most,
)

T3 = 4.302652729911275  # Student's t, 0.975 quantile, 2 degrees of freedom


ROOT = Path(__file__).resolve().parents[1]


def load_experiment_script(monkeypatch, name):
    """A script of experiments/ (not a package module), loaded by path."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def claims(monkeypatch):
    return load_experiment_script(monkeypatch, "claims")


def test_summarize_gives_the_t_interval_of_the_mean():
    stat = summarize({"0": 1.0, "1": 2.0, "2": 3.0, "3": None})
    assert stat["mean"] == 2.0 and stat["std"] == 1.0 and stat["n"] == 3
    assert stat["seeds"] == ["0", "1", "2"] and stat["values"] == [1.0, 2.0, 3.0]
    assert stat["ci"] == pytest.approx([2.0 - T3 / math.sqrt(3), 2.0 + T3 / math.sqrt(3)])
    assert summarize({"0": 5.0})["ci"] is None
    assert format_ci(stat) == "2.0 [-0.5, 4.5]"
    assert format_ci(summarize({"0": 5.0})) == "5.0 (n=1, no interval)"


def test_identical_seeds_give_no_interval_and_no_verdict():
    # three identical seeds say nothing about the spread: never a zero-width interval
    stat = summarize({"0": 19.0, "1": 19.0, "2": 19.0})
    assert stat["identical"] and stat["ci"] is None and stat["std"] == 0.0
    assert format_ci(stat) == "19.0 (3 identical seeds, no interval)"
    assert verdict_at_least(stat, 5.0) == NOT_SEPARATED
    assert verdict_at_most(stat, 20.0) == NOT_SEPARATED
    assert t_test_p(stat["values"], 5.0) is None
    assert seeds_needed(stat["std"], 5.0) is None


def test_the_sign_flip_test_counts_the_sign_patterns_exactly():
    # the 2^3 patterns of (+-1, +-2, +-3) have |sum| 6, 0, 2, 4, 4, 2, 0, 6
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # |sum| >= 6
    assert sign_flip_p([1.0, -2.0, 3.0]) == pytest.approx(6 / 8)  # |sum| >= 2
    assert sign_flip_p([3.0, 3.0, 3.0], center=2.0) == pytest.approx(0.25)  # 2/2^n at best
    assert sign_flip_p([5.0, 5.0, 5.0], center=5.0) == 1.0  # no difference at all
    assert sign_flip_p([]) is None
    # ten seeds all on one side: 2 / 1024
    assert sign_flip_p(np.arange(1.0, 11.0)) == pytest.approx(2 / 1024)
    # above the exact limit: a seeded Monte Carlo, close to the exact value of a subset
    many = np.r_[np.full(21, 1.0), -np.full(3, 1.0)]  # sum 18 of 24 unit values
    from scipy.stats import binom

    exact = 2 * binom.sf(20, 24, 0.5)  # |sum| >= 18 <=> at most 3 or at least 21 plus signs
    assert sign_flip_p(many) == pytest.approx(exact, abs=2e-3)


def test_the_t_test_p_matches_the_interval():
    values = [10.0, 11.0, 12.0]
    # the 95% interval [8.5, 13.5] touches 8.515...: p at its lower end is 0.05
    low = summarize(dict(enumerate(values)))["ci"][0]
    assert t_test_p(values, low) == pytest.approx(0.05)
    assert t_test_p([1.0], 0.0) is None


def test_holm_adjusts_step_down_and_keeps_the_order():
    # sorted 0.01, 0.03, 0.04 of m = 3: 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.04, 0.01, None, 0.03]) == pytest.approx([0.06, 0.03, None, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_past_threshold_counts_the_claims_side():
    assert past_threshold([4.0, 5.0, 6.0], 5.0, above=True) == 1  # strictly more than 5
    assert past_threshold([4.0, 5.0, 6.0], 5.0, above=False) == 2  # at most 5


def test_seeds_needed_follows_the_noncentral_t_power():
    from scipy.stats import nct
    from scipy.stats import t as student

    def power(n, std, effect, alpha):
        c = student.ppf(1 - alpha / 2, n - 1)
        shift = effect / (std / math.sqrt(n))
        return nct.sf(c, n - 1, shift) + nct.cdf(-c, n - 1, shift)

    # effect = one standard deviation at 5%: the textbook 10 pairs for 80% power
    n = seeds_needed(5.0, 5.0)
    assert n == 10
    assert power(n, 5.0, 5.0, 0.05) >= 0.8 > power(n - 1, 5.0, 5.0, 0.05)
    assert seeds_needed(5.0, 10.0) < n < seeds_needed(10.0, 5.0)
    assert seeds_needed(5.0, 5.0, alpha=0.05 / 30) > n  # a Holm family asks for more
    assert seeds_needed(1000.0, 0.1) is None  # more than max_seeds


def test_a_paired_difference_uses_only_the_seeds_both_have():
    diff = paired_difference(
        {"0": 10.0, "1": 12.0, "2": 11.0, "3": 50.0}, {"0": 9.0, "1": 10.0, "2": 10.0}
    )
    assert diff["seeds"] == ["0", "1", "2"] and diff["values"] == [1.0, 2.0, 1.0]


@pytest.mark.parametrize(
    "values, threshold, at_least, at_most",
    [
        ([10.0, 11.0, 12.0], 5.0, HOLDS, FAILS),  # the interval [8.5, 13.5] above 5
        ([10.0, 11.0, 12.0], 20.0, FAILS, HOLDS),  # ... below 20
        ([10.0, 11.0, 12.0], 11.0, NOT_SEPARATED, NOT_SEPARATED),
        ([0.0, 10.0, 20.0], 5.0, NOT_SEPARATED, NOT_SEPARATED),  # a mean above 5, spread too wide
        ([7.0], 5.0, NOT_SEPARATED, NOT_SEPARATED),  # one seed cannot separate anything
    ],
)
def test_a_verdict_holds_only_beyond_the_seed_spread(values, threshold, at_least, at_most):
    stat = summarize({str(i): v for i, v in enumerate(values)})
    assert verdict_at_least(stat, threshold) == at_least
    assert verdict_at_most(stat, threshold) == at_most


def _tables(ba_good, ba_close):
    """MA 90 everywhere; FedAvg's BA 80; per seed BA of 'good' and 'close' under one attack."""
    seeds = ["0", "1", "2"]
    ma = {(d, "mr"): dict.fromkeys(seeds, 90.0) for d in ("fedavg", "good", "close")}
    ba = {
        ("fedavg", "mr"): dict.fromkeys(seeds, 80.0),
        ("good", "mr"): dict(zip(seeds, ba_good, strict=True)),
        ("close", "mr"): dict(zip(seeds, ba_close, strict=True)),
    }
    return ma, ba


def test_the_leader_ranks_first_only_when_every_gap_is_beyond_the_seed_spread():
    # score = -(BA - 80) / 80; 'good' leads on every seed by 20 / 80 = 0.25
    ma, ba = _tables([10.0, 12.0, 11.0], [30.0, 33.0, 31.0])
    ranking = seed_rankings(ma, ba, ["fedavg", "good", "close"], ["mr"])
    assert ranking["first"] == {"defense": "good", "verdict": HOLDS, "not_separated_from": []}
    by = {e["defense"]: e for e in ranking["defenses"]}
    assert by["good"]["scores"]["0"] == pytest.approx(0.875)
    assert by["close"]["behind_leader"]["values"] == pytest.approx([0.25, 0.2625, 0.25])
    assert ranking["dropped_seeds"] == {}
    # the same gap on every seed gives no interval: not separated, never certain
    ma, ba = _tables([10.0, 12.0, 11.0], [30.0, 32.0, 31.0])
    ranking = seed_rankings(ma, ba, ["fedavg", "good", "close"], ["mr"])
    assert ranking["first"]["verdict"] == NOT_SEPARATED
    assert by["good"]["ranks"] == {"0": 1, "1": 1, "2": 1}
    assert by["fedavg"]["ranks"] == {"0": 3, "1": 3, "2": 3}
    # 'close' beats 'good' on one seed: the mean still leads, the gap is inside the noise
    ma, ba = _tables([2.0, 4.0, 25.0], [12.0, 14.0, 11.0])
    ranking = seed_rankings(ma, ba, ["fedavg", "good", "close"], ["mr"])
    assert ranking["first"]["verdict"] == NOT_SEPARATED
    assert ranking["first"]["not_separated_from"] == ["close"]
    by = {e["defense"]: e for e in ranking["defenses"]}
    assert by["close"]["ranks"] == {"0": 2, "1": 2, "2": 1}
    # a defense without a score on any seed is not "not separated" from the leader
    ma[("unscored", "mr")], ba[("unscored", "mr")] = {}, {}
    ranking = seed_rankings(ma, ba, ["fedavg", "good", "close", "unscored"], ["mr"])
    assert ranking["first"]["not_separated_from"] == ["close"]


# ------------------------------------------------------------- a two-sweep regime map
EDGE = {"name": "edge-case-pgd", "edge_case": "ardis", "edge_case_dir": "x"}
NONE_EDGE = {**EDGE, "start_round": 21}

# (regime, defense, attack) -> final BA per seed (fractions); MA 0.9 everywhere
BA = {
    ("base", "fedavg", "none-edge"): [0.02, 0.04, 0.03],
    ("base", "fedavg", "edge-case-pgd"): [0.62, 0.64, 0.63],
    ("base", "multi-krum", "none-edge"): [0.01, 0.01, 0.01],
    ("base", "multi-krum", "edge-case-pgd"): [0.01, 0.02, 0.03],
    ("interval-2", "fedavg", "edge-case-pgd"): [0.32, 0.34, 0.33],
    ("interval-2", "multi-krum", "edge-case-pgd"): [0.21, 0.41, 0.31],
}


def _write_sweep(root, regime):
    runs = []
    for (reg, defense, attack), bas in BA.items():
        if reg != regime:
            continue
        for seed, ba in enumerate(bas):
            rel = f"regime={reg}/defense={defense}/attack={attack}/seed={seed}"
            path = root / rel
            path.mkdir(parents=True)
            attacked = attack != "none-edge"
            # 4 attack rounds; multi-krum keeps the attacker in `seed` of them
            rounds = [
                {
                    "round": r,
                    "main_accuracy": 0.9,
                    "backdoor_accuracy": ba,
                    "malicious_clients": [0] if attacked else [],
                    "accepted_clients": [0, 1] if defense == "fedavg" or r <= seed else [1],
                }
                for r in (1, 2, 3, 4)
            ]
            (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
            config = {"defense": {"name": defense}, "attack": EDGE if attacked else NONE_EDGE}
            (path / "summary.json").write_text(
                json.dumps(
                    {
                        "final_main_accuracy": 0.9,
                        "best_main_accuracy": 0.9,
                        "final_backdoor_accuracy": ba,
                        "max_backdoor_accuracy": ba,
                        "config": config,
                    }
                )
            )
            runs.append(
                {
                    "id": rel,
                    "dir": rel,
                    "labels": {
                        "regime": reg,
                        "defense": defense,
                        "attack": attack,
                        "seed": str(seed),
                    },
                }
            )
    axes = {
        k: list(dict.fromkeys(r["labels"][k] for r in runs))
        for k in ("regime", "defense", "attack", "seed")
    }
    (root / "sweep.json").write_text(
        json.dumps({"name": f"map-{regime}", "axes": axes, "runs": runs})
    )
    return root


@pytest.fixture
def regime_report(tmp_path, capsys):
    base, axes = (
        _write_sweep(tmp_path / "base", "base"),
        _write_sweep(tmp_path / "axes", "interval-2"),
    )
    out = tmp_path / "report"
    assert main(["report", str(base), str(axes), "--out", str(out)]) == 0
    capsys.readouterr()
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), out


def _cell(report, regime, defense, attack):
    (s,) = [s for s in report["sets"] if s["extra"] == {"regime": regime}]
    (g,) = [g for g in s["groups"] if (g["row"], g["col"]) == (defense, attack)]
    return g


def test_two_sweeps_are_one_report_and_left_out_cells_are_not_cells(regime_report):
    report, md, _ = regime_report
    assert report["name"] == "map-base + map-interval-2"
    assert report["axes"]["regime"] == ["base", "interval-2"]
    assert report["counts"]["finished"] == 6 * 3
    (interval,) = [s for s in report["sets"] if s["extra"] == {"regime": "interval-2"}]
    assert {g["col"] for g in interval["groups"]} == {"edge-case-pgd"}  # no none-edge runs there
    assert "## regime=interval-2" in md


def test_the_baseline_is_the_same_defenses_no_attack_run_here_or_at_the_base(regime_report):
    report, md, _ = regime_report
    here = _cell(report, "base", "fedavg", "edge-case-pgd")
    assert here["baseline"] == {"col": "none-edge", "set": {"regime": "base"}}
    assert here["ba_above_baseline"]["values"] == pytest.approx([60.0, 60.0, 60.0])
    # interval-2 has no no-attack runs: the base's honest federation serves, seed by seed
    there = _cell(report, "interval-2", "multi-krum", "edge-case-pgd")
    assert there["baseline"] == {"col": "none-edge", "set": {"regime": "base"}}
    assert there["ba_above_baseline"]["values"] == pytest.approx([20.0, 40.0, 30.0])
    assert there["ba_above_baseline"]["ci"] == pytest.approx(
        [30 - T3 * 10 / math.sqrt(3), 30 + T3 * 10 / math.sqrt(3)]
    )
    assert "30.0 [5.2, 54.8]" in md


def test_attacker_acceptance_only_for_defenses_that_select_clients(regime_report):
    report, md, _ = regime_report
    kept = _cell(report, "base", "multi-krum", "edge-case-pgd")["metrics"]["acceptance"]
    assert kept["values"] == pytest.approx([0.0, 25.0, 50.0])  # seed s: kept in s of 4 rounds
    assert _cell(report, "base", "fedavg", "edge-case-pgd")["metrics"]["acceptance"]["n"] == 0
    assert "Attacker kept" in md


def test_a_heatmap_per_attack_of_regime_by_defense(regime_report):
    report, md, out = regime_report
    assert (out / "heatmap_edge-case-pgd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![edge-case-pgd](heatmap_edge-case-pgd.png)" in md
    data = heatmap_data(report)["edge-case-pgd"]
    assert data["sets"] == ["regime=base", "regime=interval-2"]
    assert data["rows"] == ["fedavg", "multi-krum"]
    np.testing.assert_allclose(data["gain"], [[60.0, 1.0], [30.0, 30.0]])
    np.testing.assert_allclose(data["kept"], [[np.nan, 25.0], [np.nan, 25.0]])


def test_a_cell_with_no_finished_run_yet_is_left_out_of_the_heatmap(regime_report):
    # A sweep still running: a defense's edge-case-pgd cell has no finished run, so it
    # has no BA (it looks untargeted) and must neither break nor enter the heatmap.
    report, _, _ = regime_report
    report = copy.deepcopy(report)
    (s,) = [s for s in report["sets"] if s["extra"] == {"regime": "base"}]
    empty = copy.deepcopy(_cell(report, "base", "multi-krum", "edge-case-pgd"))
    empty.update(row="krum", n=0, runs=[])
    empty.pop("ba_above_baseline")
    for stat in empty["metrics"].values():
        stat.update(n=0, mean=None, values=[])
    empty["ma_drop"] = {"n": 0, "mean": None, "values": []}
    s["groups"].append(empty)
    data = heatmap_data(report)["edge-case-pgd"]
    assert data["rows"] == ["fedavg", "multi-krum"]


def test_the_claims_checker_gives_each_regime_its_verdicts(regime_report, claims):
    report, _, _ = regime_report
    base, interval = claims.check_report(report)
    # identical seeds (60, 60, 60 above the baseline) give no interval: only the sign-flip
    # test speaks, and its 2 / 2^3 = 0.25 cannot decide. Multi-Krum's gains 0, 1, 2 are
    # below 5 with t-test p 0.0202, which Holm over the 4 claims of the table makes 0.0808.
    assert [f"{claims.LABEL[c.verdict]}  {c.text}" for c in base] == [
        "NOT SEPARATED  fedavg: the edge-case-pgd backdoor gets in "
        "(BA > 5 points above none-edge): 60.0 (3 identical seeds, no interval)",
        "NOT SEPARATED  multi-krum: the edge-case-pgd backdoor gets in "
        "(BA > 5 points above none-edge): 1.0 [-1.5, 3.5]",
    ]
    assert [c.adjusted_p for c in base + interval] == pytest.approx(
        [0.5, 4 * 0.020204102886728758, 0.5, 3 * 0.04941362421328314]
    )
    assert base[1].details(4) == (
        "0/3 seeds above 5; sign-flip p 0.25; Holm p 0.0808; seeds for 5/10 points: 4/3"
    )
    # identical seeds plan no seed count (their spread, exact or float noise, is none)
    assert base[0].details(4).endswith("seeds for 5/10 points: no spread/no spread")
    noisy = copy.deepcopy(report)
    _cell(noisy, "base", "fedavg", "edge-case-pgd")["ba_above_baseline"]["values"] = [
        59.999999999999996,
        60.0,
        60.0,
    ]
    fedavg = claims.check_report(noisy)[0][0]
    assert "3 identical seeds, no interval" in fedavg.text
    assert fedavg.details(4).endswith("seeds for 5/10 points: no spread/no spread")
    assert interval[1].text == (
        "multi-krum: the edge-case-pgd backdoor gets in "
        "(BA > 5 points above none-edge): 30.0 [5.2, 54.8]"
    )
    # the same claims read across the regimes: one row per claim, one column per regime
    table = claims.verdict_table(report).splitlines()
    assert table[0].startswith("Verdicts: paired two-sided t test") and "the 4 claims" in table[0]
    assert table[2] == "| claim | base | interval-2 |"
    assert table[4:] == [
        "| fedavg: edge-case-pgd gets in | not separated: 60.0 (3 identical seeds, no interval) "
        "(3/3, p 0.5) | not separated: 30.0 (3 identical seeds, no interval) (3/3, p 0.5) |",
        "| multi-krum: edge-case-pgd gets in | not separated: 1.0 [-1.5, 3.5] (0/3, p 0.081) "
        "| not separated: 30.0 [5.2, 54.8] (3/3, p 0.15) |",
    ]


def test_the_separation_claims_pair_each_multi_metrics_variant_with_every_rival(claims):
    """--separation: per seed, the rival's BA gain minus Multi-metrics', against 5 points.
    RFA's gains 30, 24, 17 and the reference variant's 0, -7, 0 (the 3-seed lenet cells
    of issue 29) differ by 30, 31, 17; the p is scipy's one-sample t test of those
    differences against 5, computed here independently."""
    from scipy import stats as scipy_stats

    gains = {
        "rfa": [30.0, 24.0, 17.0],
        "multi-krum": [62.0, 45.0, 19.0],
        "multi-metrics": [8.0, 4.0, 9.0],
        "multi-metrics-reference": [0.0, -7.0, 0.0],
    }
    groups = [
        {
            "row": d,
            "col": "edge-case-pgd",
            "baseline": {"col": "none-edge"},
            "ba_above_baseline": summarize(dict(enumerate(v))),
        }
        for d, v in gains.items()
    ]
    report = {"name": "separation", "sets": [{"extra": {}, "groups": groups}]}
    assert [c.key for c in claims.check_report(report)[0]] == [
        "rfa: edge-case-pgd gets in",
        "multi-krum: edge-case-pgd gets in",
        "multi-metrics keeps edge-case-pgd out",
        "multi-metrics-reference keeps edge-case-pgd out",
    ]
    (judged,) = claims.check_report(report, separation=True)
    separation = {c.key: c for c in judged if c.key.startswith("separation")}
    assert list(separation) == [  # a variant is never the other's rival
        "separation: multi-metrics vs rfa under edge-case-pgd",
        "separation: multi-metrics vs multi-krum under edge-case-pgd",
        "separation: multi-metrics-reference vs rfa under edge-case-pgd",
        "separation: multi-metrics-reference vs multi-krum under edge-case-pgd",
    ]
    ref_rfa = separation["separation: multi-metrics-reference vs rfa under edge-case-pgd"]
    assert ref_rfa.tests[0].stat["values"] == pytest.approx([30.0, 31.0, 17.0])
    expected = scipy_stats.ttest_1samp([30.0, 31.0, 17.0], 5.0).pvalue
    assert ref_rfa.p() == pytest.approx(expected)
    # Holm over the 8 claims; this one alone would be 0.043, so it is not separated
    assert ref_rfa.adjusted_p >= expected and ref_rfa.verdict == NOT_SEPARATED
    # mean 26, sd sqrt(122 / 2), so 26 -+ T3 x 7.81 / sqrt(3)
    assert ref_rfa.text.endswith("multi-metrics-reference's > 5 points): 26.0 [6.6, 45.4]")
    assert ref_rfa.details(8).startswith("3/3 seeds above 5; sign-flip p 0.25;")


def test_holm_decides_a_claims_table_where_single_tests_would_not(claims):

    def claim(values, above=True):
        stat = summarize(dict(enumerate(values)))
        return claims.Claim("k", "t", "v", (claims.Test(stat, 5.0, above=above),))

    # unadjusted p: 0.0091 (above 5), 0.0202 (below 5), 0.0494 (above), 0.118 (above)
    table = [claim([10, 11, 12]), claim([0, 1, 2]), claim([20, 40, 30]), claim([7, 9, 6])]
    judged = claims.judge(table)
    # Holm: 4 x 0.0091 = 0.037 rejects; 3 x 0.0202 = 0.061 stops the steps
    assert [c.verdict for c in judged] == [HOLDS, NOT_SEPARATED, NOT_SEPARATED, NOT_SEPARATED]
    # alone, the second would fail and the third hold: the family makes them undecided
    alone = [claims.judge([c])[0].verdict for c in table[1:3]]
    assert alone == [FAILS, HOLDS]
    # an "at most" claim decided on its side holds; a ranking claim needs every gap
    assert claims.judge([claim([0, 1, 2], above=False)])[0].verdict == HOLDS
    both = claims.Claim("k", "t", "v", (table[0].tests[0], table[3].tests[0]), in_points=False)
    assert claims.judge([both])[0].adjusted_p == pytest.approx(0.11808289631180313)


def test_an_untargeted_attack_is_measured_by_the_main_accuracy_it_costs(tmp_path, capsys):
    # per seed MA: the no-attack run and the Gaussian attacker's (no backdoor accuracy)
    ma = {
        ("fedavg", "none-edge"): [0.90, 0.92, 0.94],
        ("fedavg", "gaussian"): [0.50, 0.60, 0.70],
        ("median", "none-edge"): [0.90, 0.90, 0.90],
        ("median", "gaussian"): [0.89, 0.90, 0.88],
    }
    root, runs = tmp_path / "sweep", []
    for (defense, attack), values in ma.items():
        for seed, acc in enumerate(values):
            rel = f"defense={defense}/attack={attack}/seed={seed}"
            (root / rel).mkdir(parents=True)
            attacked = attack == "gaussian"
            row = {"round": 1, "main_accuracy": acc}
            if not attacked:
                row["backdoor_accuracy"] = 0.01
            (root / rel / "metrics.jsonl").write_text(json.dumps(row) + "\n")
            summary = {
                "final_main_accuracy": acc,
                "best_main_accuracy": acc,
                "config": {
                    "defense": {"name": defense},
                    "attack": {"name": "gaussian"} if attacked else NONE_EDGE,
                },
            }
            if not attacked:
                summary.update(final_backdoor_accuracy=0.01, max_backdoor_accuracy=0.01)
            (root / rel / "summary.json").write_text(json.dumps(summary))
            labels = {"defense": defense, "attack": attack, "seed": str(seed)}
            runs.append({"id": rel, "dir": rel, "labels": labels})
    axes = {
        k: list(dict.fromkeys(r["labels"][k] for r in runs)) for k in ("defense", "attack", "seed")
    }
    (root / "sweep.json").write_text(json.dumps({"name": "untargeted", "axes": axes, "runs": runs}))
    out = tmp_path / "report"
    assert main(["report", str(root), "--out", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    (s,) = report["sets"]
    cell = {(g["row"], g["col"]): g for g in s["groups"]}
    fedavg = cell[("fedavg", "gaussian")]
    assert "ba_above_baseline" not in fedavg
    assert fedavg["ma_baseline"] == {"col": "none-edge", "set": {}}
    assert fedavg["ma_drop"]["values"] == pytest.approx([40.0, 32.0, 24.0])
    assert cell[("median", "gaussian")]["ma_drop"]["values"] == pytest.approx([1.0, 0.0, 2.0])
    (entry,) = heatmap_data(report).values()
    assert entry["measure"] == "ma_drop" and entry["rows"] == ["fedavg", "median"]
    assert entry["gain"].tolist() == [pytest.approx([32.0, 1.0])]
    assert (out / "heatmap_gaussian.png").read_bytes().startswith(b"\x89PNG")
    assert (
        "MA lost: the final MA of the same defense's no-attack run"
        in (out / "report.md").read_text()
    )


def test_seeds_equal_up_to_float_noise_count_as_identical():
    # 90.4 - 90.6 and the like: the same difference on every seed, apart from the last bits
    diffs = [90.4 - 90.6, 80.3 - 80.5, 70.7 - 70.9]
    assert len(set(diffs)) > 1
    stat = summarize(dict(enumerate(diffs)))
    assert stat["identical"] and stat["ci"] is None
    assert t_test_p(diffs, -1.0) is None
    assert sign_flip_p(diffs, -1.0) == pytest.approx(0.25)


def test_a_seed_the_ranking_cannot_score_is_named_with_its_reason():
    ma, ba = _tables([10.0, 12.0, 11.0], [30.0, 33.0, 31.0])
    ba[("fedavg", "mr")]["1"] = 0.0  # FedAvg's BA 0: no relative BA term on seed 1
    ranking = seed_rankings(ma, ba, ["fedavg", "good", "close"], ["mr"])
    assert ranking["seeds"] == ["0", "2"]
    assert ranking["dropped_seeds"] == {"1": "mr: fedavg's BA is 0"}


def test_compare_reports_finds_the_one_moved_value(tmp_path, monkeypatch, capsys):
    """The rerun checker on the committed robustness report against itself with one
    per-seed value moved: one changed cell, 377 unchanged, the change in its row."""
    module = load_experiment_script(monkeypatch, "compare_reports")
    old_path = ROOT / "experiments" / "results" / "robustness" / "report.json"
    report = json.loads(old_path.read_text())
    (krum,) = [
        g
        for g in report["sets"][0]["groups"]
        if g["labels"] == {"defense": "krum", "attack": "gaussian"}
    ]
    krum["metrics"]["final_main_accuracy"]["values"][1] -= 2.5
    new_path = tmp_path / "report.json"
    new_path.write_text(json.dumps(report))
    assert module.main([str(old_path), str(new_path)]) == 0
    out = capsys.readouterr().out
    assert "378 cells with runs in both reports; 377 unchanged in every per-seed value." in out
    (row,) = [
        line for line in out.splitlines() if line.startswith("| attack=gaussian, defense=krum |")
    ]
    assert "98.0 -> 95.5" in row and row.endswith("| 2.5 |")


def test_dba_persistence_pairs_distributed_with_centralized_by_seed(tmp_path, monkeypatch, capsys):
    """experiments/dba/persistence.py: the distributed backdoor's final BA minus the
    centralized one's, seed by seed (seed 3 only in one cell: left out), with the exact
    sign-flip p (|sum| 70 reached by 4 of the 8 sign patterns of 10, -50, -30)."""
    module = load_experiment_script(monkeypatch, "dba/persistence")

    def cell(defense, attack, ba, weight=None):
        seeds = [str(s) for s in range(len(ba))]
        metrics = {
            "final_backdoor_accuracy": {"values": ba, "seeds": seeds},
            "final_main_accuracy": {"values": [85.0] * len(ba), "seeds": seeds},
        }
        if weight:
            metrics["attacker_weight"] = {"values": weight, "seeds": seeds}
        return {"row": defense, "col": attack, "metrics": metrics}

    report = {
        "sets": [
            {
                "groups": [
                    cell("fedavg", "distributed", [90.0, 50.0, 70.0, 60.0], [100.0] * 4),
                    cell("fedavg", "centralized", [80.0, 100.0, 100.0]),
                    cell("fedavg-equal", "centralized", [20.0, 30.0, 40.0], [50.0, 80.0, 90.0]),
                ]
            }
        ]
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    out_json = tmp_path / "persistence.json"
    assert module.main([str(path), "--versus", "fedavg-equal=fedavg", "--json", str(out_json)]) == 0
    numbers = json.loads(out_json.read_text())["comparisons"]
    persistence = numbers["fedavg: distributed - centralized"]
    assert persistence["values"] == [10.0, -50.0, -30.0] and persistence["n"] == 3
    assert persistence["mean"] == pytest.approx(-70.0 / 3)
    assert persistence["sign_flip_p"] == 0.5 and persistence["above_zero"] == 1
    weighting = numbers["centralized: fedavg-equal - fedavg"]
    assert weighting["values"] == [-60.0, -70.0, -60.0]
    assert "| fedavg-equal | centralized | 20.0, 30.0, 40.0 |" in capsys.readouterr().out
    assert module.main([str(path), "--versus", "rfa=fedavg"]) == 2

    # the same cells split over two reports pair as in one; a cell in both is refused
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    groups = report["sets"][0]["groups"]
    first.write_text(json.dumps({"sets": [{"groups": groups[:2]}]}))
    second.write_text(json.dumps({"sets": [{"groups": groups[2:]}]}))
    split_json = tmp_path / "split.json"
    argv = [str(first), str(second), "--versus", "fedavg-equal=fedavg", "--json", str(split_json)]
    assert module.main(argv) == 0
    split = json.loads(split_json.read_text())
    assert split["comparisons"] == numbers
    assert split["report"] == [str(first), str(second)]
    assert module.main([str(path), str(second)]) == 2
    assert "fedavg-equal/centralized is in more than one report" in capsys.readouterr().err


def test_dba_persistence_at_a_round_reads_the_runs_metrics(tmp_path, monkeypatch, capsys):
    """--at-round R: each run's BA of round R from its metrics.jsonl (the final round's
    in report.json is ignored), paired by seed as before."""
    module = load_experiment_script(monkeypatch, "dba/persistence")
    bas = {
        ("distributed", "0"): [0.1, 0.9, 0.5],
        ("distributed", "1"): [0.2, 0.7, 0.4],
        ("centralized", "0"): [0.1, 0.05, 0.9],
        ("centralized", "1"): [0.3, 0.1, 0.8],
    }
    runs, groups = [], {}
    for (attack, seed), per_round in bas.items():
        run_id = f"defense=foolsgold/attack={attack}/seed={seed}"
        run_dir = tmp_path / run_id
        run_dir.mkdir(parents=True)
        lines = [
            json.dumps(
                {"round": r, "main_accuracy": 0.9, "backdoor_accuracy": ba, "format_version": 1}
            )
            for r, ba in enumerate(per_round, start=1)
        ]
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        labels = {"defense": "foolsgold", "attack": attack, "seed": seed}
        runs.append({"id": run_id, "dir": str(run_dir), "labels": labels})
        group = groups.setdefault(
            attack,
            {
                "row": "foolsgold",
                "col": attack,
                "runs": [],
                "metrics": {
                    "final_backdoor_accuracy": {"values": [0.0, 0.0], "seeds": ["0", "1"]},
                    "final_main_accuracy": {"values": [90.0, 90.0], "seeds": ["0", "1"]},
                },
                "ba_above_baseline": {"n": 2, "values": [0.0, 0.0]},
            },
        )
        group["runs"].append(run_id)
    report = {"seed_axis": "seed", "runs": runs, "sets": [{"groups": list(groups.values())}]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    out_json = tmp_path / "round-2.json"
    assert module.main([str(path), "--at-round", "2", "--json", str(out_json)]) == 0
    numbers = json.loads(out_json.read_text())
    assert numbers["backdoor_accuracy_at"] == 2
    cell = numbers["cells"]["foolsgold/distributed"]
    assert cell["final_backdoor_accuracy"]["values"] == pytest.approx([90.0, 70.0])
    assert "gain" not in cell
    difference = numbers["comparisons"]["foolsgold: distributed - centralized"]
    assert difference["values"] == pytest.approx([85.0, 60.0])
    assert "| foolsgold | distributed | 90.0, 70.0 |" in capsys.readouterr().out


def test_dba_shot_scale_is_scale_times_server_lr_times_the_attackers_weight(tmp_path, monkeypatch):
    """experiments/dba/shot_scale.py: a shot scaled by 100 under server lr 0.1 in a round
    of 10 clients moves the model by exactly its own update when they are weighed equally
    (1.0); weighed by examples on an IID split (every client 1/11 of the examples, to one
    example) by 10 x its share, about 1.0. The shot is where the schedule puts it (round
    2); the final BA is the report's for that seed; RFA's runs, no-attack runs and runs
    no report holds are left out."""
    module = load_experiment_script(monkeypatch, "dba/shot_scale")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        """name = "shots"
order = ["defense", "attack", "seed"]
[base]
seed = 0
data = { name = "digits", partition = "iid", num_clients = 11 }
model = { name = "mlp" }
train = { rounds = 3, clients_per_round = 10, server_lr = 0.1 }
[axes]
seed = [3, 4]
[axes.defense]
examples = { "defense.name" = "fedavg" }
equal = { "defense.name" = "fedavg", "defense.weighting" = "equal" }
rfa = { "defense.name" = "rfa" }
[axes.attack]
none = { "attack.name" = "none" }
[axes.attack.shot]
"attack.name" = "dba"
"attack.num_attackers" = 1
"attack.lone_attacker" = "full"
"attack.schedule" = "fixed-frequency"
"attack.start_round" = 2
"attack.end_round" = 2
"attack.scale" = 100.0
"attack.trigger_size" = 2
"attack.trigger_gap" = 1
"""
    )
    groups, runs = [], []
    for defense in ("examples", "equal", "rfa"):
        for attack in ("none", "shot"):
            ids = [f"defense={defense}/attack={attack}/seed={seed}" for seed in (3, 4)]
            runs += [
                {"id": i, "labels": {"defense": defense, "attack": attack, "seed": s}}
                for i, s in zip(ids, ("3", "4"), strict=True)
            ]
            ba = {"values": [62.5, None], "seeds": ["3", "4"]}  # seed 4 not run
            groups.append({"runs": ids, "metrics": {"final_backdoor_accuracy": ba}})
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"seed_axis": "seed", "runs": runs, "sets": [{"groups": groups}]}))
    out_json = tmp_path / "shots.json"
    assert module.main([str(sweep), "--report", str(report), "--json", str(out_json)]) == 0
    document = json.loads(out_json.read_text())
    numbers = document["runs"]
    assert sorted(numbers) == [
        "defense=equal/attack=shot/seed=3",
        "defense=examples/attack=shot/seed=3",
    ]
    one_seed = document["one_shot_rank_correlation"]["defense=equal/attack=shot"]
    assert one_seed["n"] == 1 and one_seed["spearman_rho"] is None
    equal = numbers["defense=equal/attack=shot/seed=3"]
    (shot,) = equal["shots"]
    assert shot["round"] == 2 and shot["effective_scale"] == pytest.approx(1.0)
    assert equal["final_backdoor_accuracy"] == 62.5 and equal["weighting"] == "equal"
    (shot,) = numbers["defense=examples/attack=shot/seed=3"]["shots"]
    assert shot["round"] == 2 and shot["effective_scale"] == pytest.approx(1.0, abs=0.01)
    assert shot["effective_scale"] == pytest.approx(10.0 * shot["share_of_examples"])
    bad = tmp_path / "bad.toml"
    bad.write_text(sweep.read_text().replace('"digits"', '"no-such-data"'))
    assert module.main([str(bad), "--report", str(report)]) == 2


def test_dba_shot_scale_rank_correlation_is_exact_over_every_pairing(monkeypatch):
    """Four seeds in the same order: rho 1, reached by 2 of the 4! = 24 pairings in
    absolute value (the same order and its reverse), so the two-sided p is 1/12."""
    module = load_experiment_script(monkeypatch, "dba/shot_scale")
    result = module.rank_correlation([0.9, 1.2, 1.5, 1.8], [13.0, 48.0, 66.0, 99.0])
    assert result["spearman_rho"] == pytest.approx(1.0)
    assert result["p"] == pytest.approx(2 / 24)
    swapped = module.rank_correlation([0.9, 1.2, 1.5, 1.8], [48.0, 13.0, 66.0, 99.0])
    assert swapped["spearman_rho"] == pytest.approx(0.8)
    constant = module.rank_correlation([1.0, 1.0, 1.0], [13.0, 63.0, 40.0])
    assert constant["spearman_rho"] is None and constant["p"] is None
