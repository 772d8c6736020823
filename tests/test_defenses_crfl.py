"""CRFL (Xie et al., ICML 2021): the aggregation, the certified radius and the
certification on hand-made inputs whose answer is known, its config errors, and the
certification in a federation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from scipy.stats import binomtest, norm

from defenses.rules import CRFLRule
from defenses.rules.crfl import (
    RadiusConstants,
    certified_radius,
    certify,
    clopper_pearson,
    lipschitz_constant,
    parse_radii,
    run_constants,
)
from fedsec.cli import DEFAULT_EXPERIMENT, main
from fedsec.config import load_config
from fedsec.results import read_metrics
from fedsec.server import final_model
from fedsec.task import get_task
from fedsec_core.errors import ConfigError
from tests.runs import run_cli, tiny_digits


def aggregate(rule: CRFLRule, models, weights, global_model):
    rule.validate()
    return rule.aggregate(models, weights, global_model, list(range(models.shape[0])))


# ------------------------------------------------------------------ aggregation


def test_weighted_mean_is_clipped_to_exactly_the_bound_when_above_it():
    models = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    weights = torch.tensor([1.0, 3.0])
    mean = torch.tensor([0.75, 3.0])  # (1 * [3, 0] + 3 * [0, 4]) / 4
    result = aggregate(CRFLRule(norm_bound=1.0, noise_std=0.0), models, weights, torch.zeros(2))
    torch.testing.assert_close(result.model, mean / math.sqrt(0.75**2 + 3.0**2))
    assert torch.linalg.vector_norm(result.model).item() == pytest.approx(1.0, rel=1e-6)
    assert result.accepted.all() and result.scores is None


def test_a_mean_inside_the_bound_is_unchanged_and_zero_noise_is_exact():
    models = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    result = aggregate(
        CRFLRule(norm_bound=10.0, noise_std=0.0), models, torch.tensor([1.0, 3.0]), torch.ones(2)
    )
    assert torch.equal(result.model, torch.tensor([0.75, 3.0]))


def test_noise_is_seeded_of_the_given_std_and_resumes_from_a_checkpoint():
    d = 200_000
    models = torch.zeros(3, d)
    weights, start = torch.ones(3), torch.zeros(d)
    first = aggregate(CRFLRule(noise_std=0.01, seed=7), models, weights, start).model
    again = aggregate(CRFLRule(noise_std=0.01, seed=7), models, weights, start).model
    other = aggregate(CRFLRule(noise_std=0.01, seed=8), models, weights, start).model
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.std().item() == pytest.approx(0.01, rel=0.01)
    assert first.mean().item() == pytest.approx(0.0, abs=1e-4)

    straight = CRFLRule(seed=1)
    rounds = [aggregate(straight, models[:, :10], weights, start[:10]).model for _ in range(3)]
    assert not torch.equal(rounds[0], rounds[1])  # each round draws a new noise
    resumed = CRFLRule(seed=1)
    aggregate(resumed, models[:, :10], weights, start[:10])
    fresh = CRFLRule(seed=1)
    fresh.load_state_dict(resumed.state_dict())
    assert torch.equal(aggregate(fresh, models[:, :10], weights, start[:10]).model, rounds[1])


def test_a_huge_mean_is_clipped_without_overflow():
    models = torch.tensor([[3e38, 3e38], [3e38, 3e38]])  # norm 4.2e38 in float64
    result = aggregate(CRFLRule(noise_std=0.0), models, torch.ones(2), torch.zeros(2))
    torch.testing.assert_close(result.model, torch.full((2,), 15.0 / math.sqrt(2)))


# ------------------------------------------------------------------ the radius


CONSTANTS = RadiusConstants(
    noise_std=0.01,
    smoothing_std=0.02,
    norm_bound=0.05,
    rounds_after_attack=2,
    attacker_weights=(0.1, 0.2),
    local_steps=(10, 5),
    lr=0.1,
    lipschitz=2.0,
    attack_scale=5.0,
    poison_fraction=0.1,
)


def test_radius_matches_the_theorem_computed_by_hand():
    # the reference's way: products of 2 Phi(rho / sigma) - 1, 2 rounds at sigma = 0.01
    # (rho / sigma = 5) and the smoothing step at sigma_T = 0.02 (rho / sigma_T = 2.5)
    contraction = (2 * norm.cdf(5.0) - 1) ** 2 * (2 * norm.cdf(2.5) - 1)
    assert CONSTANTS.contraction() == pytest.approx(contraction, rel=1e-12)
    # R sum (p_i tau_i)^2 = 2 (1^2 + 1^2) = 4; L gamma eta q = 2 * 5 * 0.1 * 0.1 = 0.1
    denominator = 2 * 4 * 0.1**2 * contraction
    # p_A = 0.81, p_B = 0.01: sqrt(p_A) - sqrt(p_B) = 0.8, 1 - 0.64 = 0.36
    expected = 0.01 * math.sqrt(math.log(1 / 0.36)) / math.sqrt(denominator)
    assert CONSTANTS.scale() == pytest.approx(0.01 / math.sqrt(denominator), rel=1e-12)
    radius = certified_radius(np.array([0.81, 0.5, 0.3]), np.array([0.01, 0.5, 0.4]), CONSTANTS)
    assert radius[0] == pytest.approx(expected, rel=1e-12)
    assert np.isnan(radius[1]) and np.isnan(radius[2])  # p_A <= p_B: no certificate
    assert certified_radius(1.0, 0.0, CONSTANTS) == np.inf


def test_the_paper_form_with_equal_local_steps_and_the_default_lipschitz_constant():
    rule = CRFLRule(norm_bound=3.0, noise_std=0.01, attack_scale=10.0, poison_fraction=0.05)
    constants = rule.radius_constants(
        rounds_after_attack=90, attacker_weights=[1 / 20], local_steps=[30], lr=0.001
    )
    assert constants.lipschitz == lipschitz_constant(3.0) == math.sqrt(17.0)
    assert constants.smoothing_std == 0.01  # None: the training noise
    assert constants.contraction() == 1.0  # rho / sigma = 300: no contraction in floats
    # the reference's MNIST setting: 2 R tau^2 L_Z^2 sum p_i^2 gamma^2 eta^2 (q/n)^2
    denominator = 2 * 1 * 30**2 * 17.0 * (1 / 20) ** 2 * 10**2 * 0.001**2 * 0.05**2
    assert constants.scale() == pytest.approx(0.01 / math.sqrt(denominator), rel=1e-12)


def test_clopper_pearson_bounds_are_the_exact_binomial_interval():
    counts = np.array([0, 3, 50, 97, 100])
    lower, upper = clopper_pearson(counts, 100, 0.0005)
    for k, lo, hi in zip(counts, lower, upper, strict=True):
        interval = binomtest(int(k), 100).proportion_ci(confidence_level=0.999, method="exact")
        assert lo == pytest.approx(interval.low, abs=1e-12)
        assert hi == pytest.approx(interval.high, abs=1e-12)
    assert lower[-1] == pytest.approx(0.0005 ** (1 / 100))  # all successes
    assert upper[0] == pytest.approx(1 - 0.0005 ** (1 / 100))  # none


def test_radii_are_parsed_sorted_and_checked():
    assert parse_radii("0.1, 0,1,0.1") == (0.0, 0.1, 1.0)
    for bad in ("", "0,-1", "a", "inf"):
        with pytest.raises(ValueError):
            parse_radii(bad)


# ------------------------------------------------------------------ certification


def linear_classifier() -> tuple[torch.nn.Module, torch.Tensor]:
    """A 2-class linear model: class 1 iff x0 > x1; and its flat parameters."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        model.bias.zero_()
    flat = torch.cat([model.weight.reshape(-1), model.bias]).detach().clone()
    return model, flat


def test_without_smoothing_noise_every_correct_prediction_gets_the_formula_radius():
    model, flat = linear_classifier()
    inputs = torch.tensor([[2.0, 1.0], [1.0, 2.0], [3.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([1, 0, 1, 1])  # the model is wrong on the last one
    rule = CRFLRule(norm_bound=10.0, noise_std=0.01, smoothing_std=0.0)
    constants = rule.radius_constants(
        rounds_after_attack=3, attacker_weights=[0.1], local_steps=[10], lr=0.01
    )
    result = certify(
        model, flat, inputs, labels, constants=constants, num_samples=50, alpha=0.001, seed=0
    )
    # every draw votes the same: p_A >= (alpha/2)^(1/M), p_B <= 1 - (alpha/2)^(1/M)
    p_a = 0.0005 ** (1 / 50)
    radius = certified_radius(p_a, 1 - p_a, constants)
    assert np.allclose(result.p_a_lower, p_a) and np.allclose(result.p_b_upper, 1 - p_a)
    assert result.votes.tolist() == [1, 0, 1, 0] and result.abstained == 0.0
    np.testing.assert_allclose(result.radius, radius, rtol=1e-12)
    assert result.smoothed_accuracy == 0.75
    accuracy = result.certified_accuracy([0.0, float(radius) * (1 - 1e-9), float(radius) * 1.01])
    assert list(accuracy.values()) == [0.75, 0.75, 0.0]


def test_heavy_noise_abstains_and_certified_accuracy_never_grows_with_the_radius():
    model, flat = linear_classifier()
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(500, 2, generator=gen)
    labels = (inputs[:, 0] > inputs[:, 1]).long()
    constants = CRFLRule(norm_bound=10.0, smoothing_std=1.0).radius_constants(
        rounds_after_attack=0, attacker_weights=[0.1], local_steps=[10], lr=0.01
    )
    kwargs = dict(constants=constants, num_samples=40, alpha=0.001, batch_size=64)
    result = certify(model, flat, inputs, labels, seed=3, **kwargs)
    again = certify(model, flat, inputs, labels, seed=3, **kwargs)
    assert np.array_equal(result.radius, again.radius, equal_nan=True)
    assert 0 < result.abstained < 1  # inputs near the boundary x0 = x1 get no certificate
    assert np.all(result.predictions[np.isnan(result.radius)] == -1)
    values = list(result.certified_accuracy([0, 1e-4, 1e-3, 1e-2, 0.1, 1, 10]).values())
    assert all(0 <= v <= 1 for v in values)
    assert values == sorted(values, reverse=True)
    assert values[0] <= result.smoothed_accuracy


def test_certification_clips_the_model_first():
    model, flat = linear_classifier()  # norm sqrt(2)
    inputs, labels = torch.tensor([[2.0, 1.0]]), torch.tensor([1])
    constants = CRFLRule(norm_bound=0.5, smoothing_std=0.0).radius_constants(
        rounds_after_attack=0, attacker_weights=[0.1], local_steps=[1], lr=0.01
    )
    certify(model, flat, inputs, labels, constants=constants, num_samples=2, alpha=0.1, seed=0)
    loaded = torch.cat([model.weight.reshape(-1), model.bias]).detach()
    torch.testing.assert_close(loaded, flat * 0.5 / math.sqrt(2))


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "override, message",
    [
        ("defense.norm_bound=0", "'norm_bound' must be a number > 0, got 0"),
        ("defense.noise_std=-0.01", "'noise_std' must be a number >= 0"),
        ("defense.num_samples=-1", "'num_samples' must be an int >= 0"),
        ("defense.alpha=1", "'alpha' must be a number in (0, 1)"),
        ("defense.smoothing_std=-1", "'smoothing_std' must be a number >= 0 or None"),
        ("defense.poison_fraction=2", "'poison_fraction' must be a number in (0, 1]"),
        ("defense.attack_scale=0", "'attack_scale' must be a number > 0"),
        ("defense.lipschitz=0", "'lipschitz' must be a number > 0 or None"),
        ('defense.radii="0,-0.1"', "'radii' must be comma-separated numbers >= 0"),
        ("defense.sigma=0.1", "defense 'crfl': unknown parameter 'sigma'"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["defense.name=crfl", override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_parameter_exits_2_before_training(tmp_path, capsys):
    argv = ["run", str(DEFAULT_EXPERIMENT), "--out", str(tmp_path / "run")]
    argv += ["--set", "defense.name=crfl", "--set", "defense.norm_bound=-1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'norm_bound' must be a number > 0" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------ in a federation


def test_the_last_round_of_a_crfl_run_holds_its_certification(tmp_path):
    out = tmp_path / "run"
    overrides = tiny_digits(rounds=2, seed=0) + [
        "defense.name=crfl",
        "defense.num_samples=20",
        "attack.name=pixel-replacement",
        "attack.trigger_size=2",
        "attack.trigger_gap=1",
    ]
    run_cli(out, overrides)
    rounds = read_metrics(out / "metrics.jsonl")
    assert "certified_accuracy" not in rounds[0]
    last = rounds[-1]
    certified = last["certified_accuracy"]
    assert list(certified) == ["0", "0.0001", "0.0003", "0.001", "0.003", "0.01", "0.1", "1"]
    values = list(certified.values())
    assert all(0 <= v <= 1 for v in values) and values == sorted(values, reverse=True)
    assert 0 <= last["smoothed_accuracy"] <= 1
    facts = last["certification"]
    assert facts["samples"] == 20 and facts["attack_round"] == 1 and facts["attackers"] == 1
    assert 0 < facts["attacker_weights"][0] < 1 and facts["local_steps"][0] >= 1
    assert facts["lr"] == pytest.approx(0.05 / (1 - 0.9))  # round 1: no decay yet
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_certified_accuracy"] == certified


def test_without_an_attack_the_certificate_assumes_one_attacker_in_the_last_round():
    task = get_task(load_config(None, tiny_digits(rounds=3, seed=0) + ["defense.name=crfl"]))
    facts = run_constants(final_model(task, ArrayRecord(task.new_model().state_dict())))
    sampled, _ = task.schedule.sample(3)
    sizes = [len(task.partitions[c]) for c in sampled]
    assert facts["rounds_after_attack"] == 0
    assert facts["attacker_weights"] == [max(sizes) / sum(sizes)]
    assert facts["local_steps"] == [math.ceil(max(sizes) / 32)]  # 1 local epoch, batch 32
    assert facts["lr"] == pytest.approx(0.05 * 0.998**2 / 0.1)
