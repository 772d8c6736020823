"""Defense-aware backdoors (attack.evasion): the scale search against a rule with a known
boundary, the multi-metrics penalty's features and pull, the full-knowledge stage, and a
short federation per evasion."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar
from unittest.mock import patch

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from attacks.backdoor import BackdoorAttack
from attacks.evasion import (
    SCALE_STEPS,
    benign_metric_bounds,
    benign_metrics_constraint,
    benign_metrics_scale,
    constrain_to_benign,
    largest_kept_scale,
    metric_features,
    multi_metrics_penalty,
)
from attacks.stages import ScalingStage
from defenses.rules.base import AggregationResult, AggregationRule
from defenses.rules.fldetector import FLDetectorRule
from defenses.rules.foolsgold import FoolsGoldRule
from defenses.rules.median import MedianRule
from fedsec.adversary import round_adversary
from fedsec.config import load_config
from fedsec.results import read_metrics
from fedsec_core.errors import ConfigError
from fedsec_core.protocol import BENIGN_STATE
from fedsec_core.training import assign_flat_params, flatten_params, train
from tests.runs import run_cli, tiny_digits


@dataclass(kw_only=True)
class NormBoundRule(AggregationRule):
    """Keeps the clients whose update norm is at most ``bound``: a known boundary."""

    name = "norm-bound"
    bound: float = 1.0

    def _aggregate(self, batch):
        norms = torch.linalg.vector_norm(batch.models - batch.global_model, dim=1)
        kept = norms <= self.bound
        return AggregationResult(batch.global_model, kept)


def test_the_scale_search_finds_a_known_boundary_to_its_resolution():
    w0 = torch.zeros(3, dtype=torch.float64)
    benign = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    candidate = torch.tensor(
        [0.5, 4.0, 0.0], dtype=torch.float64
    )  # |u(lam)| = sqrt(.25 + 16 lam^2)
    view = torch.tensor([[0.3, 0.1, 0.0], [0.2, -0.1, 0.1]], dtype=torch.float64)
    weights = torch.ones(2, dtype=torch.float64)
    lam = largest_kept_scale(NormBoundRule(), view, weights, benign, candidate, 1.0, w0)
    exact = math.sqrt(1.0 - 0.25) / 4.0  # |u(lam)| = 1
    assert exact - 2.0**-SCALE_STEPS <= lam <= exact
    # inside the bound already: unscaled; not even the benign update kept: 0
    assert (
        largest_kept_scale(NormBoundRule(bound=5.0), view, weights, benign, candidate, 1, w0) == 1
    )
    assert (
        largest_kept_scale(NormBoundRule(bound=0.1), view, weights, benign, candidate, 1, w0) == 0
    )


def test_against_a_rule_that_keeps_everyone_the_scale_matches_the_median_benign_norm():
    w0 = torch.zeros(2, dtype=torch.float64)
    view = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], dtype=torch.float64)  # median 2
    benign, candidate = torch.zeros(2, dtype=torch.float64), torch.tensor([8.0, 0.0]).double()
    lam = largest_kept_scale(MedianRule(), view, torch.ones(3).double(), benign, candidate, 1, w0)
    assert 0.25 - 2.0**-SCALE_STEPS <= lam <= 0.25  # |8 lam| = 2


@pytest.mark.parametrize("rule", [FoolsGoldRule(), FLDetectorRule()], ids=lambda r: r.name)
def test_the_scale_search_gives_a_rule_with_histories_client_ids(rule):
    # regression: the simulated round passed no client_ids, and both rules raise without them
    gen = torch.Generator().manual_seed(0)
    w0 = torch.zeros(6, dtype=torch.float64)
    view = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    benign, candidate = torch.randn(6, generator=gen).double(), view[0].clone()
    weights = torch.ones(4, dtype=torch.float64)
    lam = largest_kept_scale(rule, view, weights, benign, candidate, 1.0, w0)

    def kept(scale: float) -> bool:
        models = torch.cat([view, (benign + scale * (candidate - benign))[None]])
        result = copy.deepcopy(rule).aggregate(
            models, torch.ones(5).double(), w0, [7, 8, 9, 10, 11]
        )
        return bool(result.accepted[-1])

    if rule.name == "fldetector":  # no history yet: it keeps every client, so no scaling
        assert lam == 1.0
    else:  # a copy of the view's first update is rejected; the search stops at the boundary
        assert 0.0 < lam < 1.0
        assert kept(lam) and not kept(lam + 2.0**-SCALE_STEPS)
    assert not rule._history if rule.name == "foolsgold" else rule._round == 0  # copies only
    with pytest.raises(ValueError, match="client_ids has 2 ids for 5 updates"):
        largest_kept_scale(rule, view, weights, benign, candidate, 1.0, w0, client_ids=[1, 2])


def test_metric_features_are_the_three_quantities_multi_metrics_scores():
    w0 = torch.tensor([3.0, 4.0], dtype=torch.float64)
    u = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    l1, l2, distance = metric_features(u, w0).tolist()
    w = w0 + u
    cosine = float(w @ w0 / (w.norm() * w0.norm()))
    assert (l1, l2) == pytest.approx((3.0, math.sqrt(5.0)))
    assert distance == pytest.approx(1.0 - cosine, rel=1e-12)
    # a tiny angle in float32 weights still gives its distance (no cancellation)
    w0 = torch.ones(100_000)
    u = torch.zeros(100_000)
    u[0] = 1e-3
    assert metric_features(u, w0)[2].item() == pytest.approx(5e-12, rel=1e-3)


def test_the_penalty_pulls_training_towards_the_benign_metrics():
    torch.manual_seed(0)
    x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    torch.manual_seed(1)
    model = torch.nn.Linear(10, 2)
    free = torch.nn.Linear(10, 2)
    free.load_state_dict(model.state_dict())
    w0 = flatten_params(model).clone()
    # a benign update far smaller than the one the data ask for (about 17x in its norm)
    benign = 0.01 * torch.randn(w0.numel(), generator=torch.Generator().manual_seed(2))
    kwargs = {"epochs": 10, "batch_size": 16, "lr": 0.05, "seed": 1}
    train(free, x, y, **kwargs)
    penalty = multi_metrics_penalty(w0, benign, weight=1.0)
    train(model, x, y, **kwargs, penalty=penalty)
    target = metric_features(benign, w0)

    def gap(m):
        return ((metric_features(flatten_params(m) - w0, w0) - target) / target).abs()

    assert (gap(model) < 0.4 * gap(free)).all()  # every feature at least 2.5x closer
    at_benign = torch.nn.Linear(10, 2)
    assign_flat_params(at_benign, w0 + benign)
    assert penalty(at_benign).item() == pytest.approx(0.0, abs=1e-9)  # zero at the target


def test_the_constraint_takes_the_benign_shrink_along_w0_and_bounds_the_rest():
    w0 = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    benign = torch.tensor([-0.1, 0.03, 0.04], dtype=torch.float64)  # along w0 -0.1, across 0.05
    bounds = benign_metric_bounds(benign, w0).tolist()
    assert bounds == pytest.approx([0.17, math.sqrt(0.0125), 0.05])
    # across w0 (0.3, 0.4) has norm 0.5: shrunk 10x onto the benign radius
    outside = constrain_to_benign(torch.tensor([0.5, 0.3, 0.4]).double(), benign, w0)
    assert outside.tolist() == pytest.approx([-0.1, 0.03, 0.04])
    inside = constrain_to_benign(torch.tensor([0.2, 0.0, 0.02]).double(), benign, w0)
    assert inside.tolist() == pytest.approx([-0.1, 0.0, 0.02])  # only the part along w0 moved
    # projecting twice changes nothing
    assert constrain_to_benign(outside, benign, w0).tolist() == pytest.approx(outside.tolist())


def test_the_scale_brings_the_tightest_feature_to_its_bound():
    w0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    update = torch.tensor([0.0, 4.0], dtype=torch.float64)  # features (4, 4, 4)
    bounds = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    assert benign_metrics_scale(update, bounds, w0) == pytest.approx(0.25)
    assert benign_metrics_scale(update, torch.tensor([9.0, 8.0, 12.0]).double(), w0) == 2.0
    assert benign_metrics_scale(torch.zeros(2).double(), bounds, w0) == 0.0


def test_constrained_training_ends_with_every_feature_at_most_the_benign_ones():
    torch.manual_seed(0)
    x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    torch.manual_seed(1)
    model = torch.nn.Linear(10, 2)
    w0 = flatten_params(model).clone()
    benign = 0.01 * torch.randn(w0.numel(), generator=torch.Generator().manual_seed(2))
    train(
        model,
        x,
        y,
        epochs=10,
        batch_size=16,
        lr=0.05,
        seed=1,
        constraint=benign_metrics_constraint(w0, benign),
    )
    update = flatten_params(model) - w0
    bounds = benign_metric_bounds(benign, w0)
    features = benign_metric_bounds(update, w0)
    unit = w0.double() / w0.double().norm()
    assert float(update.double() @ unit) == pytest.approx(float(benign.double() @ unit), rel=1e-4)
    assert features[2] == pytest.approx(float(bounds[2]), rel=1e-4)  # the data push it out
    assert (features[1:] <= bounds[1:] * (1 + 1e-5)).all()
    gamma = benign_metrics_scale(update, bounds, w0)
    assert float((benign_metric_bounds(gamma * update, w0) / bounds).max()) == pytest.approx(1.0)


NODE = 100


def model_record(values: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"w": Array(values.astype(np.float32))})


def reply(pid: int, values: np.ndarray, benign: np.ndarray | None = None) -> Message:
    instruction = Message(RecordDict(), dst_node_id=NODE + pid, message_type=MessageType.TRAIN)
    content = RecordDict(
        {"arrays": model_record(values), "metrics": MetricRecord({"num-examples": 10})}
    )
    if benign is not None:
        content[BENIGN_STATE] = model_record(benign)
    return Message(content, reply_to=instruction)


@pytest.mark.usefixtures("server_identity")
def test_full_knowledge_scaling_runs_the_rule_on_the_honest_updates_and_strips_the_benign_model():
    w0 = np.zeros(3)
    honest = [np.array([0.3, 0.1, 0.0]), np.array([0.2, -0.1, 0.1])]
    benign, candidate = np.array([0.5, 0.0, 0.0]), np.array([0.5, 4.0, 0.0])
    replies = [reply(0, honest[0]), reply(1, honest[1]), reply(2, candidate, benign)]
    stage = ScalingStage(attack=None, rule=NormBoundRule())
    outcome = stage(model_record(w0), replies, {NODE + p: p for p in range(3)}, 3, {2})
    assert outcome.crafted == [2] and outcome.view == 2 and 0 < outcome.scales[2] < 1
    sent = replies[2].content["arrays"]["w"].numpy()
    assert np.linalg.norm(sent) <= 1.0 and np.linalg.norm(sent) > 1.0 - 4 * 2.0**-SCALE_STEPS
    assert all(BENIGN_STATE not in r.content for r in replies)
    np.testing.assert_array_equal(
        replies[0].content["arrays"]["w"].numpy(), honest[0].astype(np.float32)
    )


@dataclass(kw_only=True)
class IdRecordingRule(NormBoundRule):
    """A norm bound that records the client ids of every round it is shown, in a list
    its copies share (the search aggregates on copies of the rule)."""

    seen: ClassVar[list] = []

    def _aggregate(self, batch):
        self.seen.append(list(batch.client_ids))
        return super()._aggregate(batch)


@pytest.mark.usefixtures("server_identity")
def test_full_knowledge_scaling_shows_the_rule_the_rounds_partition_ids():
    honest = [np.array([0.3, 0.1, 0.0]), np.array([0.2, -0.1, 0.1])]
    benign, candidate = np.array([0.5, 0.0, 0.0]), np.array([0.5, 4.0, 0.0])
    replies = [reply(4, honest[0]), reply(2, candidate, benign), reply(9, honest[1])]
    IdRecordingRule.seen.clear()
    stage = ScalingStage(attack=None, rule=IdRecordingRule())
    stage(model_record(np.zeros(3)), replies, {NODE + p: p for p in (2, 4, 9)}, 10, {2})
    seen = IdRecordingRule.seen
    assert seen and all(ids == [4, 9, 2] for ids in seen)  # the honest ones, then the attacker


@dataclass(kw_only=True)
class ShrinkingBoundRule(NormBoundRule):
    """A norm bound that halves with every round the rule has aggregated: a rule whose
    state decides whom it keeps."""

    rounds: int = 0

    def _aggregate(self, batch):
        kept = torch.linalg.vector_norm(batch.models - batch.global_model, dim=1)
        kept = kept <= self.bound / 2**self.rounds
        self.rounds += 1
        return AggregationResult(batch.global_model, kept)


@pytest.mark.usefixtures("server_identity")
@pytest.mark.parametrize(("rule_state", "bound"), [("fresh", 1.0), ("server", 0.25)])
def test_with_the_servers_rule_the_search_sees_its_state_and_leaves_it(rule_state, bound):
    server_rule = ShrinkingBoundRule(rounds=2)  # two rounds aggregated: bound 1/4
    attack = BackdoorAttack(evasion="scaling", knowledge="full", rule_state=rule_state)
    config = load_config(None, DIGITS)
    with patch("defenses.build_rule", return_value=ShrinkingBoundRule()):
        stage = round_adversary(attack, config, server_rule=server_rule)
    assert (stage.rule is server_rule) == (rule_state == "server")
    honest = [np.array([0.1, 0.0, 0.0]), np.array([0.0, 0.1, 0.0])]
    benign, candidate = np.array([0.1, 0.0, 0.0]), np.array([0.1, 4.0, 0.0])
    replies = [reply(0, honest[0]), reply(1, honest[1]), reply(2, candidate, benign)]
    outcome = stage(model_record(np.zeros(3)), replies, {NODE + p: p for p in range(3)}, 3, {2})
    exact = math.sqrt(bound**2 - 0.01) / 4.0  # |(0.1, 4 lam, 0)| = bound
    assert exact - 2.0**-SCALE_STEPS <= outcome.scales[2] <= exact
    assert server_rule.rounds == 2  # the trials ran on copies


DIGITS = [
    *tiny_digits(rounds=2, seed=3),
    "attack.name=pixel-replacement",
    "attack.trigger_size=2",
    "attack.trigger_gap=1",
    "attack.every=1",
    "train.clients_per_round=5",
    "defense.name=multi-krum",
]


@pytest.mark.parametrize(
    "evasion",
    [
        ["attack.evasion=scaling"],
        ["attack.evasion=scaling", "attack.knowledge=full"],
        ["attack.evasion=multi-metrics"],
    ],
)
def test_each_evasion_runs_a_federation_and_sends_a_valid_update(tmp_path, evasion):
    run_cli(tmp_path / "run", [*DIGITS, *evasion])
    rounds = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for r in rounds:
        assert r["malicious_clients"] and "invalid_clients" not in r
        assert "backdoor_accuracy" in r
        if evasion[0] == "attack.evasion=scaling":  # each attacker's scale, in [0, 1]
            scales = r["evasion_scales"]
            assert set(scales) == {str(c) for c in r["malicious_clients"]}
            assert all(0.0 <= v <= 1.0 for v in scales.values())
        else:
            assert "evasion_scales" not in r


@pytest.mark.parametrize(
    "knowledge",
    [["partial"], ["full"], ["full", "attack.rule_state=server"]],
    ids=["partial", "full", "full-server-state"],
)
@pytest.mark.parametrize("defense", ["foolsgold", "fldetector"])
def test_scaling_gets_past_a_rule_with_histories_without_an_error(tmp_path, defense, knowledge):
    # regression: the attacker's simulated round lacked client ids, so against these rules
    # its reply was an error that the server refused (partial) or the run stopped (full)
    overrides = [
        f"defense.name={defense}",
        "attack.evasion=scaling",
        f"attack.knowledge={knowledge[0]}",
        *knowledge[1:],
    ]
    run_cli(tmp_path / "run", [*DIGITS, *overrides])
    for r in read_metrics(tmp_path / "run" / "metrics.jsonl"):
        assert r["malicious_clients"] and "invalid_clients" not in r
        assert set(r["evasion_scales"]) == {str(c) for c in r["malicious_clients"]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack.knowledge=full"], "only changes attack.evasion = 'scaling'"),
        (
            ["attack.evasion=scaling", "attack.knowledge=full", "engine.name=deployment"],
            "attack.knowledge = 'full' needs other clients' updates",
        ),
        (["attack.evasion=hide"], "attack.evasion must be one of 'none', 'scaling'"),
        (["attack.evasion_estimates=1"], "attack.evasion_estimates must be >= 2"),
        (["attack.rule_state=last"], "attack.rule_state must be one of 'fresh', 'server'"),
        (["attack.evasion=scaling", "attack.rule_state=server"], "needs attack.evasion = 'sc"),
        (["attack.rule_state=server"], "got evasion 'none', knowledge 'partial'"),
    ],
)
def test_evasion_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*DIGITS, *overrides])
