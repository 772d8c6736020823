"""Aggregation rules on hand-made inputs whose right answer is known."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import defenses.rules.base as rules_base
import defenses.rules.dnc as dnc_module
from defenses.rules import (
    AggregationRule,
    BulyanRule,
    CenteredClippingRule,
    DeepSightRule,
    DnCRule,
    FedAvgRule,
    FLAMERule,
    FLDetectorRule,
    FLTrustRule,
    FoolsGoldRule,
    KrumRule,
    MedianRule,
    MultiKrumRule,
    MultiMetricsRule,
    NormClippingRule,
    RFARule,
    RLRRule,
    SignGuardRule,
    TrimmedMeanRule,
    WeakDPRule,
)
from fedsec_core.errors import ConfigError


def honest_and_outlier(n: int = 10, d: int = 200, outlier: int = 3, seed: int = 0):
    """``n`` models: honest ones share an update direction, ``outlier`` goes elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=gen, dtype=torch.float64)
    direction = 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)
    models = base + direction + 0.02 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    models[outlier] = base + 2.0 * torch.randn(d, generator=gen, dtype=torch.float64)
    return models.float(), base.float()


def run(rule: AggregationRule, models, global_model, weights=None, **kwargs):
    rule.validate()
    weights = torch.ones(models.shape[0]) if weights is None else weights
    return rule.aggregate(models, weights, global_model, list(range(models.shape[0])), **kwargs)


@pytest.mark.parametrize(
    "rule",
    [KrumRule(), MultiKrumRule(), MultiMetricsRule(variant="paper"), FLAMERule()],
    ids=lambda r: r.name,
)
def test_a_clear_outlier_is_rejected(rule):
    models, base = honest_and_outlier()
    result = run(rule, models, base)
    assert not result.accepted[3]
    assert result.accepted.any()
    assert torch.isfinite(result.model).all()


def test_krum_picks_one_model_and_multi_krum_averages_n_minus_f():
    models, base = honest_and_outlier()
    krum = run(KrumRule(num_malicious=1), models, base)
    assert int(krum.accepted.sum()) == 1
    assert torch.equal(krum.model, models[krum.accepted][0])
    assert int(krum.scores.argmax()) == 3
    multi = run(MultiKrumRule(num_malicious=1), models, base)
    assert multi.accepted.tolist() == [i != 3 for i in range(10)]
    torch.testing.assert_close(multi.model, models[multi.accepted].mean(dim=0))


def test_krum_score_is_the_sum_of_the_nearest_squared_distances():
    models = torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0]])
    # n - f - 2 = 2 nearest others; squared distances to the others:
    # 0: 1, 9, 49, 225 -> 10; 1: 1, 4, 36, 196 -> 5; 3: 9, 4, 16, 144 -> 13
    # 7: 49, 36, 16, 64 -> 52; 15: 225, 196, 144, 64 -> 208
    result = run(KrumRule(num_malicious=1), models, torch.zeros(1))
    assert result.scores.tolist() == [10.0, 5.0, 13.0, 52.0, 208.0]
    assert result.accepted.tolist() == [False, True, False, False, False]


def test_krum_keeps_the_model_with_too_few_clients():
    result = run(KrumRule(num_malicious=1), torch.randn(4, 3), torch.zeros(3))
    assert result.model is None and "at least 5" in result.note


def test_median_of_known_vectors():
    models = torch.tensor([[1.0, -5.0], [3.0, 0.0], [2.0, 9.0], [100.0, 1.0]])
    result = run(MedianRule(), models, torch.zeros(2))
    assert result.model.tolist() == [2.5, 0.5]
    odd = run(MedianRule(), models[:3], torch.zeros(2))
    assert odd.model.tolist() == [2.0, 0.0]


def test_trimmed_mean_of_known_vectors():
    models = torch.tensor([[1.0], [2.0], [3.0], [4.0], [100.0]])
    assert run(TrimmedMeanRule(beta=0.2), models, torch.zeros(1)).model.tolist() == [3.0]
    assert run(TrimmedMeanRule(beta=0.0), models, torch.zeros(1)).model.tolist() == [22.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sorted_columns_is_torch_sort_bit_for_bit(dtype):
    """numpy's sort on the CPU (float32, float64) and torch's otherwise give the same
    tensor as ``torch.sort(dim=0)``: on a column slice of a wider matrix (strided), with
    ties (values rounded to quarters) and a NaN, which goes last in both; a tensor that
    needs its graph keeps torch's (and its graph)."""
    generator = torch.Generator().manual_seed(5)
    wide = (torch.randn(37, 300, generator=generator) * 4).round() / 4
    wide[3, 120] = torch.nan
    block = wide.to(dtype)[:, 100:250]
    expected = torch.sort(block, dim=0).values
    got = rules_base.sorted_columns(block)
    assert got.dtype == dtype and got.shape == (37, 150)
    assert torch.equal(got.nan_to_num(7.5), expected.nan_to_num(7.5))
    assert bool(got[-1, 20].isnan()) and int(got.isnan().sum()) == 1
    leaf = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    ordered = rules_base.sorted_columns(leaf)
    ordered.sum().backward()
    assert torch.equal(leaf.grad, torch.ones(5, 4, dtype=torch.float64))


def test_bulyan_ignores_an_outlier_and_needs_4f_plus_3_clients():
    models, base = honest_and_outlier(n=7)
    result = run(BulyanRule(num_malicious=1), models, base)
    assert not result.accepted[3] and int(result.accepted.sum()) == 5
    honest = torch.cat([models[:3], models[4:]])
    assert (result.model - honest.mean(dim=0)).norm() < 0.1 * (models[3] - base).norm()
    assert run(BulyanRule(num_malicious=1), models[:6], base).model is None


def test_bulyan_averages_the_values_closest_to_the_median():
    models = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [1000.0]])
    result = run(BulyanRule(num_malicious=1), models, torch.zeros(1))
    # Repeated Krum drops 1000 and one extreme (0 or 5); beta = 3 values around the median.
    assert not result.accepted[6]
    assert result.model.item() in (2.0, 3.0)


def test_fedavg_is_the_weighted_mean():
    models = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    result = run(FedAvgRule(), models, torch.zeros(2), weights=torch.tensor([3.0, 1.0]))
    assert result.model.tolist() == [1.0, 3.0]


def test_fedavg_equal_weighting_is_the_plain_mean_as_the_dba_authors_server():
    models = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    result = run(
        FedAvgRule(weighting="equal"), models, torch.zeros(2), weights=torch.tensor([3.0, 1.0])
    )
    assert result.model.tolist() == [2.0, 4.0]
    assert result.coefficients.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="'weighting' must be one of 'examples', 'equal'"):
        FedAvgRule(weighting="uniform").validate()


def test_norm_clipping_clips_to_exactly_the_bound():
    start = torch.tensor([1.0, 1.0, 1.0])
    models = start + torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.3, 0.4]])
    one = run(NormClippingRule(norm_bound=1.5), models[:1], start)
    assert torch.linalg.vector_norm(one.model - start).item() == pytest.approx(1.5, rel=1e-6)
    torch.testing.assert_close(one.model, start + torch.tensor([0.9, 1.2, 0.0]))
    both = run(NormClippingRule(norm_bound=1.5), models, start)
    torch.testing.assert_close(both.model, start + torch.tensor([0.45, 0.75, 0.2]))
    assert both.scores.tolist() == pytest.approx([5.0, 0.5])


def test_centered_clipping_clips_around_the_previous_aggregate():
    start = torch.tensor([1.0, 1.0], dtype=torch.float64)
    updates = torch.tensor([[0.5, 0.0], [0.0, 0.5], [10.0, 0.0]], dtype=torch.float64)
    rule = CenteredClippingRule(tau=1.0)
    first = run(rule, start + updates, start)
    # center 0: the outlier (norm 10) counts with factor 0.1, the others in full
    v1 = torch.tensor([0.5 + 0.0 + 1.0, 0.0 + 0.5 + 0.0], dtype=torch.float64) / 3
    torch.testing.assert_close(first.model, start + v1)
    assert first.accepted.all() and first.scores.tolist() == pytest.approx([0.5, 0.5, 10.0])
    # the next round starts from v1: distances and the step are taken around it
    second = run(rule, start + updates, start)
    gaps = updates - v1
    factors = (1.0 / gaps.norm(dim=1)).clamp(max=1)
    v2 = v1 + (factors[:, None] * gaps).mean(dim=0)
    torch.testing.assert_close(second.model, start + v2)
    # two iterations in one round are two steps from the same start
    twice = run(CenteredClippingRule(tau=1.0, iterations=2), start + updates, start)
    torch.testing.assert_close(twice.model, second.model)


def test_centered_clipping_resumes_its_center_from_a_checkpoint():
    start = torch.zeros(4)
    models = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    whole = CenteredClippingRule(tau=0.5)
    run(whole, models, start)
    resumed = CenteredClippingRule(tau=0.5)
    resumed.load_state_dict(whole.state_dict())
    assert torch.equal(run(resumed, models, start).model, run(whole, models, start).model)
    assert CenteredClippingRule().state_dict() == {"center": None}


def test_dnc_removes_the_update_that_projects_far_on_the_top_singular_vector():
    start = torch.zeros(4, dtype=torch.float64)
    honest = torch.tensor(
        [
            [1.0, 0.1, 0.0, 0.0],
            [1.1, 0.0, 0.1, 0.0],
            [0.9, -0.1, 0.0, 0.1],
            [1.0, 0.0, -0.1, -0.1],
            [1.0, 0.0, 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    attacker = torch.tensor([[1.0, 3.0, 3.0, 0.0]], dtype=torch.float64)
    models = torch.cat([honest[:2], attacker, honest[2:]])
    result = run(DnCRule(num_malicious=1, subsample=100), models, start)  # b >= d: all columns
    assert result.accepted.tolist() == [True, True, False, True, True, True]
    torch.testing.assert_close(result.model, honest.mean(dim=0))
    assert int(result.scores.argmax()) == 2
    # filter_fraction * num_malicious clients go: 2 of them with c = 2
    two = run(DnCRule(num_malicious=1, filter_fraction=2.0, subsample=100), models, start)
    assert int((~two.accepted).sum()) == 2 and not bool(two.accepted[2])
    assert "at least 3 valid clients" in DnCRule(num_malicious=2).round_problem(2, 1)


def test_dnc_gram_route_gives_the_svd_direction():
    """The route DnC takes off the CPU (top eigenvector of the Gram matrix, because
    cuSOLVER's SVD rejects VGG-9-wide matrices) finds the SVD's top right singular vector
    up to sign, and a matrix of equal rows (centred: zero) gives a finite unit-or-zero
    vector instead of NaN."""
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(10, 5000, generator=gen, dtype=torch.float64)
    matrix[3] += 5 * torch.randn(5000, generator=gen, dtype=torch.float64)  # a clear top
    matrix -= matrix.mean(dim=0)
    svd = torch.linalg.svd(matrix, full_matrices=False).Vh[0]
    gram = dnc_module._top_right_singular_vector_gram(matrix)
    assert abs(float(svd @ gram)) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(dnc_module.top_right_singular_vector(matrix), svd)  # CPU: the SVD
    zero = dnc_module._top_right_singular_vector_gram(torch.zeros(4, 7, dtype=torch.float64))
    assert torch.isfinite(zero).all()


def test_signguard_drops_the_sign_flipper_and_the_huge_update_then_clips_to_the_median():
    gen = torch.Generator().manual_seed(0)
    d = 2_000
    start = torch.zeros(d, dtype=torch.float64)
    magnitudes = torch.rand(6, d, generator=gen, dtype=torch.float64) * 0.01
    signs = torch.where(torch.rand(6, d, generator=gen) < 0.8, 1.0, -1.0).double()
    updates = magnitudes * signs
    updates[4] = -updates[4]  # mostly negative: another sign profile, the same norm
    updates[5] *= 40.0  # same signs, 40x the norm
    result = run(SignGuardRule(coordinate_fraction=0.5), start + updates, start)
    assert result.accepted.tolist() == [True, True, True, True, False, False]
    norms = updates.norm(dim=1)
    median = norms.quantile(0.5)
    clipped = updates[:4] * (median / norms[:4]).clamp(max=1)[:, None]
    torch.testing.assert_close(result.model, clipped.mean(dim=0))
    assert result.scores[5] > 3.0 > result.scores[:5].max()


def test_lbfgs_product_meets_the_secant_equation_and_is_exact_for_a_scaled_identity():
    from defenses.rules.fldetector import lbfgs_product

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = q @ q.T + 6 * torch.eye(6, dtype=torch.float64)  # symmetric positive definite
    steps = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    pairs = [(steps[:, j], a @ steps[:, j]) for j in range(4)]
    torch.testing.assert_close(lbfgs_product(pairs, steps[:, -1]), pairs[-1][1])  # B s_k = y_k
    scaled = [(s_, 2.5 * s_) for s_, _ in pairs]
    v = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(lbfgs_product(scaled, v), 2.5 * v)


def test_gap_statistic_finds_an_outlying_group_and_no_group_in_a_smooth_spread():
    from defenses.rules.fldetector import gap_statistic_clusters

    assert gap_statistic_clusters(np.array([1.0] * 8 + [4.0, 4.1]), seed=0) > 1
    assert gap_statistic_clusters(np.linspace(0.8, 1.2, 10), seed=0) == 1
    assert gap_statistic_clusters(np.ones(10), seed=0) == 1


def test_kmeans_1d_is_the_best_split_into_runs_of_the_sorted_values():
    import itertools

    from defenses.rules.fldetector import kmeans_1d

    x = np.random.default_rng(3).normal(size=9)
    v = np.sort(x)
    for k in (1, 2, 3, 4):
        labels, centers = kmeans_1d(x, k)
        got = float(np.square(x - centers[labels]).sum())
        brute = min(
            sum(float(np.square(part - part.mean()).sum()) for part in np.split(v, list(cut)))
            for cut in itertools.combinations(range(1, 9), k - 1)
        )
        assert got == pytest.approx(brute) and len(centers) == k
        assert np.all(np.diff(centers) > 0)


def _fldetector_rounds(rule, rounds: int, attacker: int = 7, n: int = 8, d: int = 30):
    """Rounds in which every honest client's update is an affine function of the global
    model (what the L-BFGS prediction can learn) and the attacker's is fresh noise."""
    gen = torch.Generator().manual_seed(1)
    targets = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.zeros(d, dtype=torch.float64)
    results = []
    for _ in range(rounds):
        updates = 0.2 * (targets - w)  # a step towards each client's own optimum
        updates[attacker] = 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
        result = run(rule, w + updates, w)
        results.append(result)
        w = result.model if result.model is not None else w
    return results


def test_fldetector_flags_the_unpredictable_client_for_good_and_no_honest_one():
    rule = FLDetectorRule(window=3, start_round=6)
    results = _fldetector_rounds(rule, 12)
    assert all(r.accepted.all() for r in results[:5])  # before start_round: learns only
    assert not results[-1].accepted[7] and results[-1].accepted[:7].all()
    first = next(i for i, r in enumerate(results) if not r.accepted[7])
    assert all(not r.accepted[7] for r in results[first:])  # rejected from then on
    assert all(r.accepted[:7].all() for r in results)
    assert results[-1].scores[7] > results[-1].scores[:7].max()


def test_fldetector_resumes_from_a_checkpoint():
    whole = FLDetectorRule(window=3, start_round=6)
    results = _fldetector_rounds(whole, 8)
    resumed = FLDetectorRule(window=3, start_round=6)
    resumed.load_state_dict(whole.state_dict())
    w = results[-1].model
    models = w + 0.1 * torch.randn(8, 30, generator=torch.Generator().manual_seed(5)).double()
    a, b = run(whole, models, w), run(resumed, models, w)
    assert torch.equal(a.model, b.model) and torch.equal(a.accepted, b.accepted)
    assert torch.allclose(a.scores, b.scores, equal_nan=True)


def _mlp_probe():
    from defenses.rules.deepsight import ModelProbe
    from fedsec.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    return model, ModelProbe(model, (1, 8, 8))


def test_model_probe_finds_the_output_layer_and_runs_flat_models():
    model, probe = _mlp_probe()
    flat = torch.cat([v.reshape(-1) for v in model.state_dict().values()])
    weights, biases = probe.output_layer(flat[None])
    assert torch.equal(weights[0], model.net[5].weight.detach())
    assert torch.equal(biases[0], model.net[5].bias.detach())
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1)
    torch.testing.assert_close(probe.probabilities(flat, x), expected)


def test_deepsight_drops_the_models_trained_towards_one_class_and_clips_the_rest():
    model, probe = _mlp_probe()
    w0 = torch.cat([v.reshape(-1) for v in model.state_dict().values()]).double()
    gen = torch.Generator().manual_seed(1)
    updates = 0.01 * torch.randn(10, w0.numel(), generator=gen, dtype=torch.float64)
    out_w, out_b = probe.weight_slice, probe.bias_slice
    for attacker in (3, 7):  # their output layer moved almost only for class 2
        row = updates[attacker]
        row[out_w] = row[out_w] * 0.01
        row[out_b] = row[out_b] * 0.01
        target = torch.zeros(10, 200, dtype=torch.float64)
        target[2] = 0.05
        row[out_w] += target.reshape(-1)
        row[out_b.start + 2] += 0.5
    rule = DeepSightRule(num_samples=200, seed=0)
    rule.probe = probe
    result = run(rule, w0 + updates, w0)
    honest = torch.ones(10, dtype=torch.bool)
    honest[[3, 7]] = False
    assert torch.equal(result.accepted, honest)
    assert result.scores[[3, 7]].max() < result.scores[honest].min()  # fewer exceedings
    norms = updates.norm(dim=1)
    bound = norms.quantile(0.5)
    clipped = updates[honest] * (bound / norms[honest]).clamp(max=1)[:, None]
    torch.testing.assert_close(result.model, w0 + clipped.mean(dim=0))


def test_weak_dp_adds_seeded_noise_of_the_given_std():
    start = torch.zeros(20_000)
    models = torch.zeros(2, 20_000)
    first = run(WeakDPRule(noise_std=0.025, seed=7), models, start).model
    again = run(WeakDPRule(noise_std=0.025, seed=7), models, start).model
    other = run(WeakDPRule(noise_std=0.025, seed=8), models, start).model
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.std().item() == pytest.approx(0.025, rel=0.05)


def test_seeded_rules_resume_their_noise_stream_from_a_checkpoint():
    start, models = torch.zeros(50), torch.zeros(3, 50)
    straight = WeakDPRule(seed=1)
    run(straight, models, start)
    second = run(straight, models, start).model
    resumed = WeakDPRule(seed=1)
    resumed.load_state_dict(straight.state_dict() | {"calls": 1})
    assert torch.equal(run(resumed, models, start).model, second)


def test_rfa_of_symmetric_points_is_the_centre():
    centre = torch.tensor([1.0, -2.0, 0.5])
    offsets = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 2.0, 0], [0, -2.0, 0]])
    result = run(RFARule(), centre + offsets, torch.zeros(3))
    torch.testing.assert_close(result.model, centre)


def test_rfa_resists_one_far_point_unlike_the_mean():
    models = torch.tensor([[0.0], [1.0], [2.0], [1000.0]])
    result = run(RFARule(max_iter=50), models, torch.zeros(1))
    assert 1.0 <= result.model.item() <= 2.0
    assert int(result.scores.argmax()) == 3


def test_foolsgold_down_weights_two_identical_clients_over_rounds():
    gen = torch.Generator().manual_seed(0)
    rule = FoolsGoldRule()
    start = torch.zeros(50)
    for _ in range(3):
        honest = torch.randn(3, 50, generator=gen)
        sybil = torch.randn(50, generator=gen)
        models = torch.cat([honest, sybil.expand(2, 50)])
        result = run(rule, models, start)
    assert result.scores[3:].tolist() == [0.0, 0.0]
    assert (result.scores[:3] > 0.5).all()
    assert result.accepted.tolist() == [True, True, True, False, False]
    assert sorted(rule.state_dict()["history"]) == [0, 1, 2, 3, 4]


def test_foolsgold_history_is_keyed_by_client_id_and_survives_a_checkpoint():
    rule = FoolsGoldRule()
    start = torch.zeros(4)
    rule.aggregate(torch.eye(4)[:2], torch.ones(2), start, [10, 20])
    rule.aggregate(torch.eye(4)[2:], torch.ones(2), start, [20, 30])
    history = rule.state_dict()["history"]
    assert history[20].tolist() == [0.0, 1.0, 1.0, 0.0]
    copy = FoolsGoldRule()
    copy.load_state_dict(rule.state_dict())
    assert copy.state_dict()["history"][30].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_flame_keeps_the_bigger_of_two_separated_groups():
    gen = torch.Generator().manual_seed(1)
    start = torch.zeros(100)
    big = torch.randn(100, generator=gen) + 0.01 * torch.randn(6, 100, generator=gen)
    small = torch.randn(100, generator=gen) + 0.01 * torch.randn(4, 100, generator=gen)
    models = torch.cat([small[:2], big[:3], small[2:], big[3:]])
    result = run(FLAMERule(noise_lambda=0.0), models, start)
    assert result.accepted.tolist() == [False] * 2 + [True] * 3 + [False] * 2 + [True] * 3


def test_flame_clips_to_the_median_norm_and_adds_scaled_noise():
    start = torch.zeros(3)
    models = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])
    result = run(FLAMERule(noise_lambda=0.0), models, start)
    assert result.accepted.all()
    torch.testing.assert_close(result.model, torch.tensor([5.0 / 3, 0, 0]))
    noisy = run(FLAMERule(noise_lambda=0.1), torch.ones(3, 20_000), torch.zeros(20_000))
    norm = math.sqrt(20_000)
    assert (noisy.model - 1).std().item() == pytest.approx(0.1 * norm, rel=0.05)


def test_fltrust_gives_zero_weight_to_an_update_opposite_to_the_root_update():
    start = torch.zeros(3)
    root = torch.tensor([1.0, 0.0, 0.0])
    models = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [-5.0, 0.0, 0.0]])
    result = run(FLTrustRule(), models, start, root_update=root)
    assert result.scores.tolist() == [1.0, 0.0, 0.0]
    assert result.accepted.tolist() == [True, False, False]
    torch.testing.assert_close(result.model, root)  # rescaled to ||g_0||


def test_fltrust_keeps_the_model_when_it_trusts_nobody():
    result = run(FLTrustRule(), -torch.ones(2, 3), torch.zeros(3), root_update=torch.ones(3))
    assert result.model is None and not result.accepted.any()


def test_rlr_flips_the_learning_rate_where_signs_disagree():
    start = torch.zeros(2)
    # coordinate 0: four clients agree (+); coordinate 1: signs cancel (2 vs 2)
    updates = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, -1.0], [1.0, -3.0]])
    result = run(RLRRule(threshold=4, server_lr=1.0), start + updates, start)
    assert result.model.tolist() == [1.0, 0.5]  # mean is [1, -0.5]; lr -1 on coordinate 1
    relaxed = run(RLRRule(threshold=0), start + updates, start)
    assert relaxed.model.tolist() == [1.0, -0.5]


def test_rows_with_nan_or_inf_are_never_used():
    models = torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [3.0, float("inf")], [3.0, 3.0]])
    result = run(FedAvgRule(), models, torch.zeros(2))
    assert result.model.tolist() == [2.0, 2.0]
    assert result.accepted.tolist() == [True, False, False, True]
    assert run(MedianRule(), models[1:3], torch.zeros(2)).model is None


def test_an_aggregate_that_overflows_keeps_the_model():
    huge = torch.full((2, 3), 3e38)
    result = run(FedAvgRule(), huge, torch.zeros(3), weights=torch.tensor([1.0, 1.0]))
    assert torch.isfinite(result.model).all()
    result = run(TrimmedMeanRule(beta=0.0), huge, torch.zeros(3))
    assert result.model is None and result.note == "aggregate is not finite"


@pytest.mark.parametrize(
    "rule",
    [
        MedianRule(),
        TrimmedMeanRule(beta=0.2),
        BulyanRule(),
        RLRRule(threshold=2),
        KrumRule(),
        FLAMERule(),
        MultiMetricsRule(variant="paper"),
        MultiMetricsRule(variant="reference"),
        NormClippingRule(norm_bound=0.5),
        RFARule(),
        FoolsGoldRule(),
    ],
    ids=lambda r: f"{r.name}-{getattr(r, 'variant', '')}",
)
def test_column_blocks_do_not_change_the_result(rule, monkeypatch):
    models, base = honest_and_outlier(n=9, d=50)
    models, base = models.double(), base.double()
    whole = dataclasses.replace(rule).aggregate(models, torch.ones(9), base, list(range(9)))
    monkeypatch.setattr(rules_base, "BLOCK_COLUMNS", 7)
    blocked = dataclasses.replace(rule).aggregate(models, torch.ones(9), base, list(range(9)))
    assert torch.equal(blocked.accepted, whole.accepted)
    torch.testing.assert_close(blocked.model, whole.model, rtol=1e-12, atol=1e-12)


def test_a_nan_in_a_later_column_block_is_found(monkeypatch):
    monkeypatch.setattr(rules_base, "BLOCK_COLUMNS", 4)
    models = torch.ones(3, 10)
    models[1, 9] = float("nan")
    result = FedAvgRule().aggregate(models, torch.ones(3), torch.zeros(10))
    assert result.accepted.tolist() == [True, False, True]


def far_first_row(seed: int, n: int = 11, d: int = 50_000, boost: float = 200.0):
    """float32 models ``global + update``: honest updates N(mu, 1e-3) around a global model
    N(0, 0.05), row 0 a boosted update ``boost * (noise - mu)`` far from every other row."""
    gen = torch.Generator().manual_seed(seed)
    global_model = 0.05 * torch.randn(d, generator=gen, dtype=torch.float64)
    mu = 1e-3 * torch.randn(d, generator=gen, dtype=torch.float64)
    updates = mu + 1e-3 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    updates[0] = boost * (1e-3 * torch.randn(d, generator=gen, dtype=torch.float64) - mu)
    return (global_model + updates).float(), global_model.float()


def exact_squared_distances(models: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances by explicit float64 differences (no Gram identity)."""
    wide = models.double()
    return ((wide[:, None, :] - wide[None, :, :]) ** 2).sum(dim=2)


@pytest.mark.parametrize("seed", range(10))
def test_distance_rules_pick_the_exact_clients_when_row_0_is_far(seed):
    # A boosted row 0 once cost the Gram matrix (rows shifted by row 0, float32 blocks) the
    # honest distances' digits: Krum's pick differed from the exact one on most seeds.
    # n = 11 = 4 f + 3, the fewest clients Bulyan aggregates with f = 2.
    from defenses.rules.krum import krum_neighbours, krum_scores, sum_of_nearest

    models, global_model = far_first_row(seed)
    exact = exact_squared_distances(models)
    got = rules_base.squared_distances(models)
    torch.testing.assert_close(got, exact, rtol=1e-9, atol=0)
    f, n = 2, models.shape[0]
    exact_scores = krum_scores(exact, f)
    krum = run(KrumRule(num_malicious=f), models, global_model)
    assert krum.accepted.nonzero().flatten().tolist() == [int(exact_scores.argmin())]
    multi = run(MultiKrumRule(num_malicious=f), models, global_model)
    kept = multi.accepted.nonzero().flatten().tolist()
    assert kept == sorted(torch.argsort(exact_scores, stable=True)[: len(kept)].tolist())
    # Bulyan: theta = n - 2f clients picked one by one by Krum on the exact distances.
    remaining = exact.clone().fill_diagonal_(torch.inf)
    picked = []
    for step in range(n - 2 * f):
        scores = sum_of_nearest(remaining, krum_neighbours(n - step, f))
        scores[picked] = torch.inf
        winner = int(scores.argmin())
        picked.append(winner)
        remaining[:, winner] = torch.inf
    bulyan = run(BulyanRule(num_malicious=f), models, global_model)
    assert bulyan.accepted.nonzero().flatten().tolist() == sorted(picked)


def _alie_code_trimmed_mean(values: np.ndarray, corrupted: int) -> np.ndarray:
    """Baruch et al.'s trimmed mean, written out here per coordinate as their
    ``defences.py`` describes it: the n - f - 1 values nearest the median, averaged."""
    keep = values.shape[0] - corrupted - 1
    out = np.empty(values.shape[1])
    for j, column in enumerate(values.T):
        median = np.median(column)
        nearest = sorted(column - median, key=abs)[:keep]
        out[j] = np.mean(nearest) + median
    return out


def test_trimmed_mean_around_the_median_is_the_alie_codes():
    # one coordinate by hand: 0, 1, 2, 10, 11 with k = 1 keeps the 3 nearest 2 -> 1.0,
    # where Yin et al.'s trim keeps 1, 2, 10 -> 13 / 3
    column = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]], dtype=torch.float64)
    start = torch.zeros(1, dtype=torch.float64)
    weights = torch.ones(5, dtype=torch.float64)
    median_rule = TrimmedMeanRule(beta=0.2, around="median")
    assert median_rule.aggregate(column, weights, start).model.item() == pytest.approx(1.0)
    ends = TrimmedMeanRule(beta=0.2).aggregate(column, weights, start).model.item()
    assert ends == pytest.approx(13 / 3)
    # random continuous values (no ties), 51 clients, k = 12 as in ALIE's regime
    g = np.random.default_rng(0)
    values = g.normal(size=(51, 40))
    values[:12] += 3.0  # a shifted group
    ours = TrimmedMeanRule(beta=0.24, around="median").aggregate(
        torch.from_numpy(values), torch.ones(51, dtype=torch.float64), torch.zeros(40)
    )
    np.testing.assert_allclose(ours.model.numpy(), _alie_code_trimmed_mean(values, 12), atol=1e-12)


def _alie_code_krum_index(grads: np.ndarray, corrupted: int) -> int:
    """The index the ALIE authors' ``krum`` (``defences.py``) returns, rewritten loop for
    loop: per user, the sum of its ``n - f`` smallest L2 distances (not squared) to the
    others; the first user with the smallest sum."""
    n = len(grads)
    best, best_error = -1, 1e20
    for user in range(n):
        errors = sorted(np.linalg.norm(grads[user] - grads[j]) for j in range(n) if j != user)
        error = sum(errors[: n - corrupted])
        if error < best_error:
            best, best_error = user, error
    return best


def _ndss_code_multi_krum(updates: np.ndarray, n_attackers: int) -> tuple[np.ndarray, list[int]]:
    """The NDSS'21 authors' ``multi_krum(all_updates, n_attackers, multi_k=True)``
    (``cifar10/release-fedsgd-alexnet-mkrum.ipynb``), rewritten loop for loop in numpy:
    while more than ``2f + 2`` remain, each remaining update's score is the sum of the
    ``r - 2 - f`` smallest squared distances in its row (its own zero among them); the
    lowest moves to the candidates; the aggregate is the candidates' plain mean."""
    remaining = list(range(len(updates)))
    candidates = []
    while len(remaining) > 2 * n_attackers + 2:
        r = len(remaining)
        rows = [[np.sum((updates[i] - updates[j]) ** 2) for j in remaining] for i in remaining]
        scores = np.sort(np.array(rows), axis=1)[:, : r - 2 - n_attackers].sum(axis=1)
        best = int(np.argsort(scores, kind="stable")[0])
        candidates.append(remaining.pop(best))
    return updates[candidates].mean(axis=0), candidates


@pytest.mark.parametrize("seed", range(3))
def test_repeated_multi_krum_chooses_as_the_ndss_codes_multi_krum(seed):
    """On identical inputs (30 updates, f = 6; a colluding group of 6 identical updates
    half an honest std off the honest mean, and rounds with no group), the NDSS'21
    paper's Multi-Krum (``selection="repeated"``, ``m = n - 2f - 2``, ``"n-f-3"``)
    chooses the code's 16 candidates and averages them to its aggregate. One round of
    scores (Blanchard et al.'s) chooses other clients on these rounds."""
    g = np.random.default_rng(seed)
    n, f, d = 30, 6, 40
    grouped = g.normal(size=(n, d))
    grouped[:f] = grouped[f:].mean(axis=0) - 0.5 * grouped[f:].std(axis=0)
    spread = g.normal(size=(n, d)) * g.uniform(0.5, 2.0, size=(n, 1))
    rule = MultiKrumRule(
        num_malicious=f, num_selected=n - 2 * f - 2, neighbours="n-f-3", selection="repeated"
    )
    once = MultiKrumRule(num_malicious=f, num_selected=n - 2 * f - 2, neighbours="n-f-3")
    start = torch.zeros(d, dtype=torch.float64)
    differs = False
    for updates in (grouped, spread):
        expected_model, expected = _ndss_code_multi_krum(updates, f)
        result = run(rule, torch.from_numpy(updates), start)
        assert result.accepted.nonzero().flatten().tolist() == sorted(expected)
        np.testing.assert_allclose(result.model.numpy(), expected_model, rtol=1e-12, atol=1e-12)
        differs |= not torch.equal(
            run(once, torch.from_numpy(updates), start).accepted, result.accepted
        )
    assert set(range(f)) <= set(_ndss_code_multi_krum(grouped, f)[1])  # the group gets in
    assert differs


def _alie_like_round(seed: int, z: float = 1.5) -> np.ndarray:
    """51 updates, the first 12 the same crafted one: the attackers' own mean shifted by
    ``z`` of their own (population) standard deviations, as ALIE's code crafts it."""
    g = np.random.default_rng(seed)
    updates = g.normal(size=(51, 300))
    own = updates[:12]
    updates[:12] = own.mean(axis=0) + z * own.std(axis=0)
    return updates


@pytest.mark.parametrize("seed", range(3))
def test_krum_with_the_alie_codes_distance_and_neighbours_picks_as_its_code(seed):
    updates = _alie_like_round(seed)
    models, start = torch.from_numpy(updates), torch.zeros(300, dtype=torch.float64)
    code = KrumRule(num_malicious=12, distance="euclidean", neighbours="n-f")
    picked = run(code, models, start).accepted.nonzero().flatten().tolist()
    assert picked == [_alie_code_krum_index(updates, 12)]
    # random updates, no group: the same pick as the code's loop
    other = np.random.default_rng(100 + seed).normal(size=(20, 50))
    rule = KrumRule(num_malicious=4, distance="euclidean", neighbours="n-f")
    chosen = run(rule, torch.from_numpy(other), torch.zeros(50, dtype=torch.float64)).accepted
    assert chosen.nonzero().flatten().tolist() == [_alie_code_krum_index(other, 4)]


@pytest.mark.parametrize("neighbours", ["n-f-2", "n-f"])
def test_krum_distance_decides_whether_alies_identical_group_wins(neighbours):
    # 12 identical updates 1.5 own-stds off the honest mean, in 300 dimensions: each is at
    # about sqrt(1 + 1/12 + 1.5^2 * 11/12) = 1.8 honest stds from an honest update, where
    # two honest ones are sqrt(2) = 1.41 apart. Summing plain distances, 11 zeros and 26
    # (or 28) times 1.8 beat 37 (39) times 1.41; summing squares, 26 x 3.2 = 83 (28 x 3.2
    # = 90) loses to 37 x 2 = 74 (39 x 2 = 78).
    updates = torch.from_numpy(_alie_like_round(0))
    start = torch.zeros(300, dtype=torch.float64)
    for distance, crafted_wins in (("euclidean", True), ("squared", False)):
        rule = KrumRule(num_malicious=12, distance=distance, neighbours=neighbours)
        picked = int(run(rule, updates, start).accepted.nonzero())
        assert (picked < 12) is crafted_wins, (distance, picked)
        multi = MultiKrumRule(num_malicious=12, distance=distance, neighbours=neighbours)
        kept = run(multi, updates, start).accepted
        assert bool(kept[:12].all()) is crafted_wins


def test_krum_defaults_are_blanchard_et_als():
    models, global_model = far_first_row(0)
    exact = exact_squared_distances(models)
    from defenses.rules.krum import krum_scores

    expected = exact.clone().fill_diagonal_(torch.inf).sort(dim=1).values[:, : 11 - 2 - 2].sum(1)
    torch.testing.assert_close(krum_scores(exact, 2), expected)
    default = run(KrumRule(num_malicious=2), models, global_model)
    spelled = run(
        KrumRule(num_malicious=2, distance="squared", neighbours="n-f-2"), models, global_model
    )
    assert torch.equal(default.model, spelled.model)
    with pytest.raises(ConfigError, match="'distance' must be one of 'squared', 'euclidean'"):
        KrumRule(distance="l1").validate()
    with pytest.raises(ConfigError, match="'neighbours' must be one of 'n-f-2', 'n-f'"):
        MultiKrumRule(neighbours="n-f-1").validate()
