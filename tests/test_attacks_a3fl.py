"""``a3fl`` (attacks/a3fl.py) and the server-side stage that holds its trigger between
rounds (attacks/stages.py's TriggerStage): the trigger search's direction, mask and
range, the unlearned copy, the trigger's way server -> attacker -> server -> evaluator ->
checkpoint, and the config errors. Digits + MLP throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from torch.nn import functional as F

from attacks.a3fl import A3FL, apply_trigger_values, optimise_trigger, unlearned_copy
from attacks.stages import TriggerStage
from attacks.triggers import stamp
from fedsec.adversary import round_adversary
from fedsec.checkpoint import load_checkpoint
from fedsec.cli import DEFAULT_EXPERIMENT, main
from fedsec.config import load_config
from fedsec.results import read_metrics
from fedsec.server import CentralEvaluator
from fedsec.task import get_task
from fedsec_core.errors import ConfigError
from fedsec_core.protocol import TRIGGER, AttackerFacts
from fedsec_core.training import evaluate, flatten_params, train
from tests.runs import rounds_without_time, sigkill_when, tiny_digits

# 8x8 digits: the bars of size 2, gap 1 (rows 0 and 2, columns 0-1 and 3-4: 8 pixels)
SMALL_TRIGGER = ["attack.trigger_size=2", "attack.trigger_gap=1"]
A3FL_DIGITS = [*tiny_digits(rounds=4, seed=4), "attack.name=a3fl", *SMALL_TRIGGER]
# two attackers in every round, so the lowest-id rule and the carried trigger matter
TWO_A_ROUND = ["attack.num_attackers=2", "attack.attackers_per_round=2", "attack.every=1"]
# a cheaper search for the end-to-end runs (the defaults run in the unit tests)
QUICK = ["attack.trigger_epochs=3", "attack.adv_epochs=2"]
NODE = 100  # node id of partition p in the hand-built replies


def task_for(*overrides: str):
    return get_task(load_config(None, [*A3FL_DIGITS, *overrides]))


def target_loss(model, x, trigger, mask, target: int) -> float:
    """Mean cross-entropy of ``model`` on ``x`` stamped with ``trigger``, labelled target."""
    model.eval()
    with torch.no_grad():
        logits = model(apply_trigger_values(x, trigger, mask))
    return float(F.cross_entropy(logits, torch.full((len(x),), target)))


@pytest.fixture(scope="module")
def clean_model():
    """An MLP trained on the clean digits training split (a fixed model to search on)."""
    task = task_for()
    model = task.new_model()
    x, y = task.train_data()
    train(model, x, y, epochs=10, batch_size=32, lr=0.05, seed=1)
    return model


@pytest.fixture(scope="module")
def backdoored_model():
    """An MLP trained on the digits training split with the pixel pattern stamped on 30%
    of it, relabelled 2: its backdoor accuracy is high."""
    task = task_for()
    x, y = (t.numpy().copy() for t in task.train_data())
    rows = np.random.default_rng(0).choice(len(y), size=round(0.3 * len(y)), replace=False)
    mask = task.attack.trigger_mask((1, 8, 8)).numpy()
    x[rows], y[rows] = stamp(x[rows], mask), 2
    model = task.new_model()
    train(
        model, torch.from_numpy(x), torch.from_numpy(y), epochs=15, batch_size=32, lr=0.05, seed=2
    )
    bx, by = task.attack.backdoor_test_set(task.dataset)
    assert evaluate(model, bx, by).accuracy > 0.9
    return model


# ---------------------------------------------------------------- the trigger search
@pytest.mark.parametrize("adv_weight", [0.0, 0.01], ids=["global-only", "with-copy"])
def test_the_search_lowers_the_target_loss_and_keeps_the_trigger_in_its_mask_and_range(
    clean_model, adv_weight
):
    task = task_for()
    attack, pid = task.attack, task.schedule.pool[0]
    x, y = task.client_data(pid)
    mask = attack.trigger_mask((1, 8, 8))
    start = attack.initial_trigger((1, 8, 8))
    w0 = flatten_params(clean_model).clone()
    found = optimise_trigger(
        clean_model,
        x,
        y,
        torch.full_like(y, 2),
        start,
        mask,
        epochs=10,
        lr=0.01,
        adv_epochs=5,
        adv_every=1,
        adv_lr=0.01,
        adv_weight=adv_weight,
        batch_size=32,
        seed=7,
    )
    assert target_loss(clean_model, x, found, mask, 2) < target_loss(clean_model, x, start, mask, 2)
    assert found.shape == (1, 8, 8) and found.dtype == torch.float32
    assert torch.all(found[:, ~mask] == 0)  # nothing outside the bars
    assert torch.all((found >= 0) & (found <= 1))  # valid pixels
    assert not torch.equal(found, start)
    assert torch.equal(flatten_params(clean_model), w0)  # the global model is not trained


def test_the_search_is_deterministic_and_its_steps_are_signed_steps_of_trigger_lr(clean_model):
    task = task_for()
    x, y = task.client_data(task.schedule.pool[0])
    mask = task.attack.trigger_mask((1, 8, 8))
    start = torch.where(mask, torch.tensor(0.5), 0.0).reshape(1, 8, 8)
    kwargs = dict(
        epochs=1, lr=0.01, adv_epochs=1, adv_every=1, adv_lr=0.01, adv_weight=0.01, batch_size=32
    )
    target = torch.full_like(y, 2)
    a = optimise_trigger(clean_model, x, y, target, start, mask, seed=3, **kwargs)
    b = optimise_trigger(clean_model, x, y, target, start, mask, seed=3, **kwargs)
    assert torch.equal(a, b)
    # one pass of ceil(n / 32) steps of +-0.01 (or 0) from 0.5, nowhere near the bounds
    steps = (len(y) + 31) // 32
    moved = (a - start)[:, mask] / 0.01
    assert torch.allclose(moved, moved.round(), atol=1e-3)
    assert moved.abs().max() <= steps


def test_the_unlearned_copy_has_lower_backdoor_accuracy_than_its_source(backdoored_model):
    task = task_for()
    attack, pid = task.attack, task.schedule.pool[0]
    x, y = task.client_data(pid)
    w0 = flatten_params(backdoored_model).clone()
    copy = unlearned_copy(
        backdoored_model,
        x,
        y,
        attack.initial_trigger((1, 8, 8)),
        attack.trigger_mask((1, 8, 8)),
        epochs=5,
        lr=0.01,
        batch_size=32,
        seed=0,
    )
    bx, by = attack.backdoor_test_set(task.dataset)
    before = evaluate(backdoored_model, bx, by).accuracy
    after = evaluate(copy, bx, by).accuracy
    assert after < before - 0.3, (before, after)
    assert torch.equal(flatten_params(backdoored_model), w0)  # a copy: the source is kept


# ------------------------------------------------------------- the attacker's round
def test_the_attacker_poisons_with_the_trigger_it_found_and_replies_with_it():
    task = task_for()
    attack, pid = task.attack, task.schedule.pool[0]
    stage = TriggerStage(attack, task.dataset)
    stage.trigger = attack.valid_trigger(torch.full((1, 8, 8), 0.6), (1, 8, 8))
    told = {p: f.to_config() for p, f in task.attacker_facts([pid], [pid]).items()}
    ctx = task.attack_context(pid, 1, AttackerFacts.from_config(stage.facts(told)[pid]))
    assert torch.equal(ctx.trigger, stage.trigger)  # exact through the ConfigRecord list
    model = task.new_model()
    reply = attack.update(model, ctx, task.train_kwargs(1, pid))
    assert reply.trigger is not None and not torch.equal(reply.trigger, stage.trigger)
    # the poisoned rows carry the found trigger, the others are its clean examples
    from dataclasses import replace

    x, y = attack.attacker_data(replace(ctx, trigger=reply.trigger))
    rows = attack.poisoned_rows(len(y), ctx.data_seed)
    mask = attack.trigger_mask((1, 8, 8))
    assert torch.equal(x[rows][:, :, mask], reply.trigger[:, mask].expand(len(rows), 1, -1))
    assert torch.all(y[rows] == 2)
    clean = np.setdiff1d(np.arange(len(y)), rows)
    assert torch.equal(x[clean], ctx.examples[0][clean])
    assert torch.equal(y[clean], ctx.examples[1][clean])


def test_no_search_is_the_plain_pixel_trigger():
    # trigger_epochs = 0: the attacker trains on exactly pixel-replacement's poisoned
    # data (the ablation A3FL is compared with), and measures BA on the same inputs
    task = task_for("attack.trigger_epochs=0")
    plain = get_task(
        load_config(
            None, [*tiny_digits(rounds=4, seed=4), "attack.name=pixel-replacement", *SMALL_TRIGGER]
        )
    )
    pid = task.schedule.pool[0]
    x, y = task.attack.attacker_data(task.pool_context(pid))
    px, py = plain.attack.attacker_data(plain.pool_context(pid))
    assert torch.equal(x, px) and torch.equal(y, py)
    reply = task.attack.update(task.new_model(), task.pool_context(pid), task.train_kwargs(1, pid))
    assert torch.equal(reply.trigger, task.attack.initial_trigger((1, 8, 8)))
    for a, b in zip(
        task.attack.backdoor_test_set(task.dataset),
        plain.attack.backdoor_test_set(plain.dataset),
        strict=True,
    ):
        assert torch.equal(a, b)


# ------------------------------------------------- the server's stage, hand-built
def reply(pid: int, trigger: np.ndarray | None) -> Message:
    instruction = Message(RecordDict(), dst_node_id=NODE + pid, message_type=MessageType.TRAIN)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    if trigger is not None:
        content[TRIGGER] = ArrayRecord({"trigger": Array(trigger.astype(np.float32))})
    return Message(content, reply_to=instruction)


def test_the_stage_takes_every_trigger_out_and_keeps_the_lowest_usable_attackers(
    server_identity,
):
    task = task_for()
    stage = TriggerStage(task.attack, task.dataset)
    mask = task.attack.trigger_mask((1, 8, 8)).numpy()
    triggers = {p: np.where(mask, 0.1 * (p + 1), 0.0)[None] for p in range(5)}
    bad_shape = np.zeros((1, 4, 4))
    instruction = Message(RecordDict(), dst_node_id=NODE + 4, message_type=MessageType.TRAIN)
    replies = [
        reply(0, triggers[0]),  # an honest client (not in malicious): never adopted
        reply(1, bad_shape),  # the lowest attacker, but its record is unusable
        reply(2, None),  # an attacker whose reply has no trigger
        reply(3, triggers[3]),  # kept
        Message(Error(code=1, reason="crashed"), reply_to=instruction),
        reply(5, triggers[4] * 3),  # a later attacker: taken out, not kept
    ]
    partition_of = {NODE + p: p for p in range(6)}
    outcome = stage(None, replies, partition_of, 6, {1, 2, 3, 4, 5})
    assert outcome.log == {"trigger_from": 3} and outcome.crafted == []
    assert np.array_equal(stage.trigger.numpy(), triggers[3].astype(np.float32))
    assert all(TRIGGER not in r.content for r in replies if not r.has_error())
    # no usable trigger: the previous one stays, and the round says so
    previous = stage.trigger
    outcome = stage(None, [reply(1, bad_shape)], partition_of, 6, {1})
    assert stage.trigger is previous and "no attacker sent a usable trigger" in outcome.note


def test_a_trigger_out_of_range_or_off_the_mask_is_projected_back():
    task = task_for()
    stage = TriggerStage(task.attack, task.dataset)
    wild = torch.linspace(-2, 3, 64).reshape(1, 8, 8)
    stage.load_state_dict({"trigger": wild})
    mask = task.attack.trigger_mask((1, 8, 8))
    assert torch.equal(stage.trigger, torch.where(mask, wild.clamp(0, 1), 0.0))
    with pytest.raises(ValueError, match="NaN or Inf"):
        task.attack.valid_trigger(torch.full((1, 8, 8), float("nan")), (1, 8, 8))


def test_backdoor_accuracy_is_measured_with_the_servers_current_trigger(backdoored_model):
    task = task_for()
    stage = round_adversary(task.attack, task.config, None, task.dataset)
    assert isinstance(stage, TriggerStage)
    evaluator = CentralEvaluator(task, stage)
    arrays = ArrayRecord(backdoored_model.state_dict())
    d = task.dataset
    mask = task.attack.trigger_mask((1, 8, 8)).numpy()

    def by_hand(values: np.ndarray) -> float:
        x = d.x_test[d.y_test != 2].copy()
        x[:, :, mask] = values[:, mask]
        with torch.no_grad():
            predicted = backdoored_model.eval()(torch.from_numpy(x)).argmax(dim=1).numpy()
        return float(np.mean(predicted == 2))

    pattern = by_hand(np.ones((1, 8, 8), dtype=np.float32))
    assert evaluator(arrays)["backdoor_accuracy"] == pytest.approx(pattern, abs=1e-12)
    dark = np.where(mask, 0.05, 0.0).astype(np.float32)[None]
    stage.trigger = torch.from_numpy(dark)  # as if an attacker's trigger had been kept
    assert evaluator(arrays)["backdoor_accuracy"] == pytest.approx(by_hand(dark), abs=1e-12)
    assert by_hand(dark) < pattern - 0.3  # the evaluator did change its inputs


# --------------------------------------------------------------------- end to end
def test_the_defense_never_sees_a_trigger(monkeypatch):
    from defenses import DefenseStrategy
    from fedsec.engines import train_inprocess

    seen, sent, kept = [], [], []
    aggregate = DefenseStrategy.aggregate_round
    stage_call = TriggerStage.__call__

    def spy_aggregate(self, server_round, replies):
        seen.extend(set(r.content.keys()) for r in replies if not r.has_error())
        return aggregate(self, server_round, replies)

    def spy_stage(self, global_arrays, replies, partition_of, num_clients, malicious):
        sent.extend(TRIGGER in r.content for r in replies)
        outcome = stage_call(self, global_arrays, replies, partition_of, num_clients, malicious)
        kept.append((outcome.log["trigger_from"], min(malicious)))
        return outcome

    monkeypatch.setattr(DefenseStrategy, "aggregate_round", spy_aggregate)
    monkeypatch.setattr(TriggerStage, "__call__", spy_stage)
    train_inprocess(load_config(DEFAULT_EXPERIMENT, [*A3FL_DIGITS, *TWO_A_ROUND, *QUICK]))
    assert sent.count(True) == 8  # 2 attackers x 4 rounds sent one
    assert seen and all(keys == {"arrays", "metrics"} for keys in seen)
    assert len(kept) == 4 and all(a == b for a, b in kept)  # the lowest id's is kept


# one attacker every other round from a pool of two: the trigger is carried over the
# rounds without an attacker, and BA moves (two attackers of three would pin it at 1)
ALTERNATE = ["attack.num_attackers=2", "attack.attackers_per_round=1", "attack.every=2"]


def argv(out: Path, *extra: str) -> list[str]:
    args = ["run", str(DEFAULT_EXPERIMENT), "--out", str(out)]
    for item in [*A3FL_DIGITS, *ALTERNATE, *QUICK, "train.rounds=8", *extra]:
        args += ["--set", item]
    return args


def test_rounds_log_the_kept_trigger_and_a_sigkilled_run_resumes_to_the_same_metrics(tmp_path):
    assert main(argv(tmp_path / "whole")) == 0
    rounds = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    for r in rounds:
        assert r.get("trigger_from") == (r["malicious_clients"] or [None])[0]
    assert [r["round"] for r in rounds if r["malicious_clients"]] == [1, 3, 5, 7]
    assert len({r["backdoor_accuracy"] for r in rounds}) > 2
    state = load_checkpoint(tmp_path / "whole").adversary
    assert state["trigger"].shape == (1, 8, 8)
    assert not torch.equal(state["trigger"], task_for().attack.initial_trigger((1, 8, 8)))

    killed = tmp_path / "killed"
    sigkill_when(argv(killed), killed / "metrics.jsonl", rounds=3, timeout=120)
    done = len(read_metrics(killed / "metrics.jsonl"))
    assert 3 <= done < 8 and not (killed / "summary.json").exists()
    assert main(["run", "--resume", str(killed)]) == 0
    assert rounds_without_time(killed) == rounds_without_time(tmp_path / "whole")


@pytest.mark.slow
def test_flower_engine_gives_identical_a3fl_rounds_to_inprocess(tmp_path):
    from fedsec.engines.processes import marked_pids

    small = ["train.rounds=3"]
    assert main(argv(tmp_path / "inprocess", *small)) == 0
    assert main(argv(tmp_path / "flower", *small, "engine.name=flower")) == 0
    rounds = rounds_without_time(tmp_path / "inprocess")
    assert [r["trigger_from"] for r in rounds if "trigger_from" in r] == [1, 5]
    assert rounds_without_time(tmp_path / "flower") == rounds
    triggers = [load_checkpoint(tmp_path / e).adversary["trigger"] for e in ("inprocess", "flower")]
    assert torch.equal(*triggers)
    assert marked_pids(str(tmp_path / "flower" / ".flwr")) == []


# ------------------------------------------------------------------ config errors
def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*A3FL_DIGITS, *overrides])
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "override,expected",
    [
        ("attack.trigger_epochs=-1", "attack.trigger_epochs must be >= 0"),
        ("attack.trigger_lr=0", "attack.trigger_lr must be > 0"),
        ("attack.adv_epochs=0", "attack.adv_epochs must be >= 1"),
        ("attack.adv_every=0", "attack.adv_every must be >= 1"),
        ("attack.adv_lr=-0.1", "attack.adv_lr must be > 0"),
        ("attack.adv_weight=-1", "attack.adv_weight must be >= 0"),
        ("attack.adv_weight=lots", "attack.adv_weight must be >= 0"),
        ("attack.trigger=blended", "a3fl optimises the pixels of the pattern trigger's bars"),
        ("attack.poison_fraction=0", "attack.poison_fraction must be in (0, 1]"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(override, expected):
    assert expected in config_error(override)


def test_a_trigger_too_big_for_the_images_fails_before_training(tmp_path, capsys):
    args = ["run", str(DEFAULT_EXPERIMENT), "--out", str(tmp_path / "run")]
    for item in [*tiny_digits(rounds=2, seed=0), "attack.name=a3fl"]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs 4x10 px but digits images are 8x8" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a3fl_is_registered_and_pairs_with_the_pixel_trigger_s_no_attack_baseline():
    from attacks import ATTACKS

    assert ATTACKS["a3fl"] is A3FL
    # a no-attack run measures the pixel pattern, A3FL's start: the report pairs them
    assert A3FL.backdoor_key(-1, {}) == ATTACKS["pixel-replacement"].backdoor_key(-1, {})
    assert A3FL.backdoor_key(-1, {"trigger_size": 3}) != A3FL.backdoor_key(-1, {})
