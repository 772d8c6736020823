"""The colluding attacks (alie, ipm, min-max, min-sum) and the round-level stage that
crafts their update (attacks/stages.py): who is in the attackers' view, what lands in
their replies, and the config errors that stop an impossible threat model before training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict

from attacks.alie import ALIE
from attacks.crafted import alie, min_max
from attacks.ipm import IPM
from attacks.min_max import MinMax
from attacks.stages import CraftingStage
from fedsec.adversary import round_adversary
from fedsec.cli import DEFAULT_EXPERIMENT
from fedsec.config import load_config
from fedsec_core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("server_identity")  # tests/conftest.py

NODE = 100  # node id of partition p is NODE + p


def model(values: np.ndarray, counter: int = 0) -> ArrayRecord:
    """A two-array float model holding ``values`` (6 numbers) and an integer counter."""
    return ArrayRecord(
        {
            "w": Array(values[:4].reshape(2, 2).astype(np.float32)),
            "b": Array(values[4:].astype(np.float32)),
            "count": Array(np.array(counter, dtype=np.int64)),
        }
    )


def flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record["w"].numpy().ravel(), record["b"].numpy().ravel()])


def reply(pid: int, arrays: ArrayRecord) -> Message:
    instruction = Message(RecordDict(), dst_node_id=NODE + pid, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10})})
    return Message(content, reply_to=instruction)


def error_reply(pid: int) -> Message:
    instruction = Message(RecordDict(), dst_node_id=NODE + pid, message_type=MessageType.TRAIN)
    return Message(Error(code=1, reason="client crashed"), reply_to=instruction)


def round_of(n: int, seed: int = 0) -> tuple[ArrayRecord, np.ndarray, list[Message]]:
    """A global model and ``n`` replies, partition ids 0..n-1; returns their updates."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=6).astype(np.float32)
    updates = rng.normal(size=(n, 6)).astype(np.float32)
    replies = [reply(p, model(w0 + updates[p], counter=p)) for p in range(n)]
    return model(w0), updates, replies


PARTITION_OF = {NODE + p: p for p in range(10)}


def test_full_knowledge_crafts_from_every_valid_reply_and_rewrites_only_the_attackers():
    global_arrays, updates, replies = round_of(5)
    honest_before = [flat(r.content["arrays"]) for r in replies[:3]]
    outcome = CraftingStage(IPM(eps=2.0, knowledge="full"))(
        global_arrays, replies, PARTITION_OF, 5, {3, 4}
    )
    assert outcome.crafted == [3, 4] and outcome.view == 5 and outcome.note == ""
    expected = flat(global_arrays) - 2.0 * updates.mean(axis=0)
    for r in replies[3:]:
        np.testing.assert_allclose(flat(r.content["arrays"]), expected, rtol=1e-5, atol=1e-6)
    # the attacker's own integer arrays stay its own; honest replies are untouched
    assert [int(r.content["arrays"]["count"].numpy()) for r in replies] == [0, 1, 2, 3, 4]
    for before, r in zip(honest_before, replies[:3], strict=True):
        np.testing.assert_array_equal(flat(r.content["arrays"]), before)


def test_the_stage_logs_where_the_crafted_update_lies_against_the_honest_ones():
    """Measured against the round's honest updates (not the attackers' view), in numpy:
    z, the norm ratio to the honest rms spread, the shift and the cosine to their mean."""
    global_arrays, updates, replies = round_of(5)
    outcome = CraftingStage(IPM(eps=0.5))(global_arrays, replies, PARTITION_OF, 5, {1, 4})
    crafted = -0.5 * updates[[1, 4]].mean(axis=0).astype(np.float64)
    honest = updates[[0, 2, 3]].astype(np.float64)
    mu, sd = honest.mean(axis=0), honest.std(axis=0, ddof=1)
    rms = np.sqrt(((honest - mu) ** 2).sum(axis=1).mean())
    gap = np.linalg.norm(crafted - mu)
    expected = {
        "crafted_z": np.mean(np.abs(crafted - mu)[sd > 0] / sd[sd > 0]),
        "crafted_norm_ratio": gap / rms,
        "crafted_shift": gap / np.linalg.norm(mu),
        "crafted_cos": crafted @ mu / (np.linalg.norm(crafted) * np.linalg.norm(mu)),
    }
    assert outcome.log == pytest.approx(expected, rel=1e-5)


def test_partial_knowledge_sees_only_the_attackers_own_updates():
    global_arrays, updates, replies = round_of(5)
    outcome = CraftingStage(IPM(eps=0.5))(global_arrays, replies, PARTITION_OF, 5, {1, 4})
    assert outcome.view == 2
    expected = flat(global_arrays) - 0.5 * updates[[1, 4]].mean(axis=0)
    for r in (replies[1], replies[4]):
        np.testing.assert_allclose(flat(r.content["arrays"]), expected, rtol=1e-5, atol=1e-6)


def test_honest_knowledge_sees_every_valid_reply_but_the_attackers_own():
    """The NDSS'21 code's full knowledge: the n - m benign updates, not the attackers'."""
    global_arrays, updates, replies = round_of(5)
    outcome = CraftingStage(IPM(eps=0.5, knowledge="honest"))(
        global_arrays, replies, PARTITION_OF, 5, {1, 4}
    )
    assert outcome.view == 3 and outcome.crafted == [1, 4]
    expected = flat(global_arrays) - 0.5 * updates[[0, 2, 3]].mean(axis=0)
    for r in (replies[1], replies[4]):
        np.testing.assert_allclose(flat(r.content["arrays"]), expected, rtol=1e-5, atol=1e-6)


def test_alie_and_min_max_through_the_stage_are_the_crafted_math_on_the_view():
    global_arrays, updates, replies = round_of(8, seed=1)
    CraftingStage(ALIE(knowledge="full"))(global_arrays, replies, PARTITION_OF, 8, {6, 7})
    view = torch.from_numpy(updates)
    expected = flat(global_arrays) + alie(view, 8, 2).numpy()
    np.testing.assert_allclose(flat(replies[6].content["arrays"]), expected, rtol=1e-5, atol=1e-6)

    global_arrays, updates, replies = round_of(8, seed=2)
    CraftingStage(MinMax(knowledge="partial", direction="unit"))(
        global_arrays, replies, PARTITION_OF, 8, {2, 5, 7}
    )
    view = torch.from_numpy(updates[[2, 5, 7]])
    expected = flat(global_arrays) + min_max(view, "unit").numpy()
    np.testing.assert_allclose(flat(replies[5].content["arrays"]), expected, rtol=1e-5, atol=1e-6)


def test_failed_and_non_finite_replies_are_in_no_view():
    global_arrays, updates, replies = round_of(4)
    bad = updates[1].copy()
    bad[0] = np.nan
    replies[1] = reply(1, model(flat(global_arrays) + bad))
    replies[2] = error_reply(2)
    outcome = CraftingStage(IPM(eps=1.0, knowledge="full"))(
        global_arrays, replies, PARTITION_OF, 4, {3}
    )
    assert outcome.view == 2 and outcome.crafted == [3]
    expected = flat(global_arrays) - updates[[0, 3]].mean(axis=0)
    np.testing.assert_allclose(flat(replies[3].content["arrays"]), expected, rtol=1e-5, atol=1e-6)


def test_a_view_too_small_leaves_the_honest_updates_and_says_why():
    global_arrays, updates, replies = round_of(4)
    replies[3] = error_reply(3)  # one of the two attackers failed: ALIE has one update
    before = flat(replies[2].content["arrays"])
    outcome = CraftingStage(ALIE())(global_arrays, replies, PARTITION_OF, 4, {2, 3})
    assert outcome.crafted == [] and "1 benign updates in view, 2 needed" in outcome.note
    np.testing.assert_array_equal(flat(replies[2].content["arrays"]), before)


def test_only_colluding_attacks_get_a_stage():
    assert round_adversary(None) is None
    assert isinstance(round_adversary(IPM()), CraftingStage)


SMALL = [
    "data.name=digits",
    "model.name=mlp",
    "data.num_clients=10",
    "train.clients_per_round=6",
    "train.rounds=3",
    "attack.every=1",
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack.name=alie"], "needs at least 2 benign updates in its view, but round 1 has 1"),
        (["attack.name=min-sum"], "needs at least 2 benign updates"),
        (
            ["attack.name=ipm", "attack.knowledge=full", "engine.name=deployment"],
            "attack.knowledge = 'full' needs other clients' updates",
        ),
        (
            ["attack.name=min-max", "attack.knowledge=honest", "engine.name=deployment"],
            "attack.knowledge = 'honest' needs other clients' updates",
        ),
        (
            [
                "attack.name=alie",
                "attack.num_attackers=4",
                "attack.attackers_per_round=4",
                "attack.knowledge=full",
            ],
            "4 attackers of 6 clients are a majority already",
        ),
        (["attack.name=min-max", "attack.direction=up"], "attack.direction must be one of"),
        (["attack.name=ipm", "attack.eps=0"], "attack.eps must be > 0"),
        (
            ["attack.name=min-sum", "attack.space=gradients"],
            "attack.space must be one of 'update', 'gradient', got 'gradients'",
        ),
    ],
)
def test_impossible_threat_models_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT_EXPERIMENT, [*SMALL, *overrides])


def test_partial_knowledge_with_two_attackers_a_round_is_valid():
    config = load_config(
        DEFAULT_EXPERIMENT,
        [*SMALL, "attack.name=alie", "attack.num_attackers=2", "attack.attackers_per_round=2"],
    )
    assert config.attack.params == {}


def test_gradient_space_shifts_along_plus_std_of_the_updates():
    """``space = "gradient"``: the formula on the gradients (-updates). ALIE's fixed z:
    ``mean + z std`` of the updates where the update space gives ``mean - z std``."""
    benign = torch.tensor([[0.0, 2.0], [2.0, 4.0]])  # mean (1, 3), std (sqrt 2, sqrt 2)
    shift = 1.5 * 2**0.5
    gradient = ALIE(z_formula="fixed", z=1.5, space="gradient")
    update = ALIE(z_formula="fixed", z=1.5)
    assert gradient.crafted_update(benign, 51, 12).tolist() == pytest.approx([1 + shift, 3 + shift])
    assert update.crafted_update(benign, 51, 12).tolist() == pytest.approx([1 - shift, 3 - shift])


def _largest_fitting_gamma(benign: np.ndarray, p: np.ndarray) -> float:
    """Brute force: the largest gamma on a 1e-4 grid whose update ``mean + gamma p`` is no
    farther from any benign update than the farthest benign pair."""
    bound = max(np.linalg.norm(a - b) for a in benign for b in benign)
    gammas = np.arange(0, 10, 1e-4)
    crafted = benign.mean(axis=0) + gammas[:, None] * p
    worst = np.linalg.norm(crafted[:, None, :] - benign[None], axis=2).max(axis=1)
    return float(gammas[worst <= bound].max())


def test_min_max_std_in_gradient_space_is_the_search_along_plus_std():
    # asymmetric on purpose: +std and -std reach the bound at different gammas
    benign = torch.tensor([[0.0, 0.0, 1.0], [3.0, 1.0, 0.0], [1.0, 4.0, 0.5], [0.5, 0.5, 3.0]])
    sd = benign.std(dim=0)
    b = benign.numpy().astype(np.float64)
    for space, sign in (("update", -1.0), ("gradient", 1.0)):
        crafted = MinMax(direction="std", space=space).crafted_update(benign, 8, 4)
        gamma = float(((crafted - benign.mean(dim=0)) / (sign * sd)).mean())
        np.testing.assert_allclose(crafted, benign.mean(dim=0) + gamma * sign * sd, rtol=1e-5)
        assert gamma == pytest.approx(_largest_fitting_gamma(b, sign * sd.numpy()), abs=2e-4)
    crafted = {
        space: MinMax(direction="std", space=space).crafted_update(benign, 8, 4)
        for space in ("update", "gradient")
    }
    assert not torch.allclose(crafted["update"], crafted["gradient"])


@pytest.mark.parametrize(
    "attack",
    [MinMax(direction="unit"), MinMax(direction="sign"), IPM(eps=0.7)],
    ids=["min-max-unit", "min-max-sign", "ipm"],
)
def test_shifts_relative_to_the_mean_are_the_same_in_both_spaces(attack):
    benign = torch.from_numpy(np.random.default_rng(3).normal(size=(6, 5)))
    expected = attack.crafted_update(benign, 9, 3)
    in_gradients = dataclasses.replace(attack, space="gradient")
    torch.testing.assert_close(in_gradients.crafted_update(benign, 9, 3), expected)


def test_the_stage_crafts_in_the_configured_space():
    global_arrays, updates, replies = round_of(8, seed=4)
    CraftingStage(ALIE(knowledge="full", space="gradient"))(
        global_arrays, replies, PARTITION_OF, 8, {6, 7}
    )
    view = torch.from_numpy(updates)
    expected = flat(global_arrays) - alie(-view, 8, 2).numpy()
    np.testing.assert_allclose(flat(replies[7].content["arrays"]), expected, rtol=1e-5, atol=1e-6)
