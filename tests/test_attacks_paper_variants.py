"""Attacks as their papers and their authors' code run them (issue 30, item 1): DBA's
backdoor key, PGD's projection schedule, the attacker's own local training, and the
code variants of ALIE's z_max and Min-Sum's bound. Known answers on digits + mlp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attacks import ATTACKS, backdoor_key
from attacks import procedures as procedures_module
from attacks.alie import ALIE
from attacks.crafted import alie, alie_z, min_sum
from attacks.dba import DBA
from attacks.min_sum import MinSum
from attacks.pixel_replacement import PixelReplacement
from attacks.procedures import projected_train, projects_after, scale_update, step_lr_factor
from fedsec_core.errors import ConfigError
from fedsec_core.training import flatten_params, train
from tests.test_attacks_config import config_error
from tests.test_attacks_procedures import (
    BASE,
    TRIGGER,
    malicious_round,
    round_context,
    task_for,
    tiny_model,
)

REPO = Path(__file__).resolve().parents[1]
#: The pixel pattern's key as the committed reports store it (target -1: the default).
PATTERN_KEY = ("PatternTriggerAttack", -1, 4, 2, "pattern", 0.2, "all-to-one")


# ------------------------------------------------------------------ DBA's key
def test_a_dba_of_other_than_four_parts_has_a_key_of_its_own():
    two = DBA.backdoor_key(2, {"num_parts": 2})
    assert two != PixelReplacement.backdoor_key(2, {})  # the old code returned it
    assert two == ("PatternTriggerAttack", 2, 4, 2, "pattern", 0.2, "all-to-one", ("num_parts", 2))
    assert DBA.backdoor_key(2, {"num_parts": 3}) not in (two, PixelReplacement.backdoor_key(2, {}))
    # the default 4 parts: exactly the pixel pattern's key, as before
    assert DBA.backdoor_key(-1, {}) == DBA.backdoor_key(-1, {"num_parts": 4}) == PATTERN_KEY
    assert PixelReplacement.backdoor_key(-1, {}) == PATTERN_KEY
    assert backdoor_key({"name": "dba", "num_attackers": 4}) == PATTERN_KEY
    assert backdoor_key({"name": "dba", "num_parts": 2}) == (*PATTERN_KEY, ("num_parts", 2))


def test_every_committed_dba_cell_keeps_its_key_and_its_baseline():
    """The committed reports' DBA cells (all 4 parts) have the key the code gives their
    config, so regenerating a report pairs them with the same baseline."""
    stored = json.loads((REPO / "experiments/results/cpu-table/report.json").read_text())
    keys = {
        tuple(g["backdoor_key"])
        for s in stored["sets"]
        for g in s["groups"]
        if g["labels"].get("attack") == "dba"
    }
    assert keys == {tuple(json.dumps(v) for v in PATTERN_KEY)}
    assert any(
        g["labels"].get("attack") == "dba" and g.get("baseline")
        for s in stored["sets"]
        for g in s["groups"]
    )


@pytest.mark.parametrize(
    "first,second",
    [
        (("pixel-replacement",), ("dba",)),
        (("pixel-replacement",), ("dba", "attack.num_parts=2")),
        (("dba", "attack.num_parts=2"), ("dba", "attack.num_parts=3")),
        (("dba", "attack.num_parts=2"), ("dba", "attack.num_parts=2", "attack.scale=3")),
        (("pgd",), ("dba", "attack.num_parts=4")),
    ],
)
def test_equal_backdoor_keys_iff_the_same_backdoor_test_set(first, second):
    sets, keys = [], []
    for name, *extra in (first, second):
        task = task_for(f"attack.name={name}", "attack.num_attackers=2", *TRIGGER, *extra)
        params = {k.split("=")[0][7:]: int(k.split("=")[1]) for k in [*TRIGGER, *extra]}
        keys.append(backdoor_key({"name": name, **params}))
        sets.append(task.attack.backdoor_test_set(task.dataset))
    same_inputs = torch.equal(sets[0][0], sets[1][0]) and torch.equal(sets[0][1], sets[1][1])
    assert (keys[0] == keys[1]) == same_inputs


@pytest.mark.parametrize(
    "pool,lone,full", [(1, "part", False), (1, "full", True), (2, "full", False)]
)
def test_a_lone_dba_attacker_stamps_the_full_trigger_only_when_asked(pool, lone, full):
    task = task_for(
        "attack.name=dba", f"attack.num_attackers={pool}", f"attack.lone_attacker={lone}", *TRIGGER
    )
    pid = task.schedule.pool[0]
    ctx = task.pool_context(pid)
    x, y = task.attack.attacker_data(ctx)
    clean_x, _ = task.client_data(pid)
    parts = torch.from_numpy(task.attack.parts(8, 8))
    poisoned = torch.from_numpy(task.attack.poisoned_rows(len(y), ctx.data_seed))
    assert torch.all(x[poisoned][:, 0][:, parts[0]] == 1.0)  # its own part, always
    other = x[poisoned][:, 0][:, parts[1:].any(dim=0)]
    if full:
        assert torch.all(other == 1.0)
    else:
        assert torch.equal(other, clean_x[poisoned][:, 0][:, parts[1:].any(dim=0)])


# ------------------------------------------------------------- PGD's projection
def test_the_projection_schedules_project_at_the_batches_they_name():
    # 7 batches an epoch, 2 epochs, every 3: fedsec at global steps 3, 6, 9, 12 (and
    # after the last); the authors' code at batch indices 0, 3, 6 of each epoch
    def projected(projection):
        return [s for s in range(1, 15) if projects_after(s, 7, 3, projection)]

    assert projected("global-steps") == [3, 6, 9, 12]
    assert projected("per-epoch") == [1, 4, 7, 8, 11, 14]
    # every 1: every step, both
    for projection in ("global-steps", "per-epoch"):
        assert all(projects_after(s, 7, 1, projection) for s in range(1, 15))
    with pytest.raises(ValueError, match="unknown projection 'x'"):
        projects_after(1, 7, 1, "x")


@pytest.mark.parametrize(
    "projection,every,expected",
    [
        ("global-steps", 4, [4, 8, 12, 14]),  # 14: the final projection
        # batch indices 0, 4 and the last (6) of each epoch, and the final projection
        ("per-epoch", 4, [1, 5, 7, 8, 12, 14, 14]),
        ("per-epoch", 10, [1, 7, 8, 14, 14]),
    ],
)
def test_projected_training_projects_exactly_after_those_steps(
    monkeypatch, projection, every, expected
):
    calls, step = [], [0]
    real = procedures_module.project_to_ball
    monkeypatch.setattr(
        procedures_module,
        "project_to_ball",
        lambda model, center, eps: calls.append(step[0]) or real(model, center, eps),
    )
    original_train = procedures_module.train

    def counting_train(*a, after_step, **k):
        def hook(s):
            step[0] = s
            after_step(s)

        return original_train(*a, **k, after_step=hook)

    monkeypatch.setattr(procedures_module, "train", counting_train)
    model = tiny_model()
    x, y = torch.rand(50, 1, 4, 4), torch.randint(0, 3, (50,))
    kwargs = dict(epochs=2, batch_size=8, lr=0.1, seed=0)  # 7 steps an epoch, 14 in all
    projected_train(model, x, y, flatten_params(model), 0.01, every, kwargs, projection)
    assert calls == expected


def _pgd_update(projection, *overrides):
    """The global model and the update PGD sends with ``projection`` (eps 0.05, 2 epochs)."""
    task = task_for(
        "attack.name=pgd",
        "attack.every=2",
        "attack.eps=0.05",
        f"attack.projection={projection}",
        "train.local_epochs=2",
        *overrides,
        *TRIGGER,
    )
    r, pid = malicious_round(task)
    model = task.new_model()
    w0 = flatten_params(model)
    task.attack.local_update(model, round_context(task, r, pid), task.train_kwargs(r, pid))
    return w0, flatten_params(model)


def test_the_two_schedules_are_the_same_attack_at_frequency_one():
    _, global_steps = _pgd_update("global-steps", "attack.project_every=1")
    _, per_epoch = _pgd_update("per-epoch", "attack.project_every=1")
    assert torch.equal(global_steps, per_epoch)


def test_at_frequency_ten_the_schedules_differ_and_both_stay_in_the_ball():
    sent = {}
    for projection in ("global-steps", "per-epoch"):
        w0, sent[projection] = _pgd_update(projection)
        assert torch.linalg.vector_norm(sent[projection] - w0) <= 0.05 * (1 + 1e-5)
    assert not torch.equal(sent["global-steps"], sent["per-epoch"])


# ------------------------------------------------- the attacker's own training
def _attack_round(*overrides):
    task = task_for(*overrides)
    r, pid = malicious_round(task)
    return task, r, pid, round_context(task, r, pid)


def _sent(task, r, pid, ctx):
    model = task.new_model()
    task.attack.local_update(model, ctx, task.train_kwargs(r, pid))
    return flatten_params(model)


def test_an_attacker_with_its_own_lr_and_epochs_trains_as_train_would_with_them():
    own = ["attack.poison_lr=0.02", "attack.poison_local_epochs=3"]
    task, r, pid, ctx = _attack_round(
        "attack.name=pixel-replacement", "attack.every=2", *TRIGGER, *own
    )
    sent = _sent(task, r, pid, ctx)
    expected = task.new_model()
    w0 = flatten_params(expected)
    x, y = task.attack.attacker_data(ctx)
    stats = train(expected, x, y, **{**task.train_kwargs(r, pid), "lr": 0.02, "epochs": 3})
    scale_update(expected, w0, ctx.round_examples / stats.num_examples)
    assert torch.equal(sent, flatten_params(expected))
    assert not torch.equal(
        sent,
        _sent(task_for("attack.name=pixel-replacement", "attack.every=2", *TRIGGER), r, pid, ctx),
    )


def test_poison_lr_decays_by_its_own_factor_per_round():
    attack = PixelReplacement(poison_lr=0.02, poison_lr_decay=0.5, poison_local_epochs=4)
    task, r, pid, ctx = _attack_round("attack.name=pixel-replacement", *TRIGGER)
    from dataclasses import replace

    kwargs = attack.poison_train_kwargs(replace(ctx, server_round=3), task.train_kwargs(3, pid))
    assert kwargs["lr"] == 0.02 * 0.25 and kwargs["epochs"] == 4
    assert {k: v for k, v in kwargs.items() if k not in ("lr", "epochs")} == {
        k: v for k, v in task.train_kwargs(3, pid).items() if k not in ("lr", "epochs")
    }


@pytest.mark.parametrize(
    "attack",
    [
        ["attack.name=pixel-replacement", *TRIGGER],
        ["attack.name=dba", "attack.num_attackers=2", *TRIGGER],
        ["attack.name=pgd", "attack.eps=0.05", *TRIGGER],
        ["attack.name=neurotoxin", *TRIGGER],
        ["attack.name=label-flip"],
        ["attack.name=edge-case-pgd", "attack.edge_case=tail", "attack.num_clean=20"],
    ],
)
def test_the_defaults_are_todays_update_and_equal_the_round_settings_given_explicitly(attack):
    task, r, pid, ctx = _attack_round(*attack, "attack.every=2")
    assert task.attack.poison_train_kwargs(ctx, task.train_kwargs(r, pid)) == task.train_kwargs(
        r, pid
    )
    default = _sent(task, r, pid, ctx)
    t = task.config.train
    explicit = task_for(
        *attack,
        "attack.every=2",
        f"attack.poison_lr={t.lr}",
        f"attack.poison_lr_decay={t.lr_decay}",
        f"attack.poison_local_epochs={t.local_epochs}",
    )
    assert torch.equal(default, _sent(explicit, r, pid, ctx))
    if attack[0] == "attack.name=pixel-replacement":  # today's update, computed by hand
        expected = task.new_model()
        w0 = flatten_params(expected)
        stats = train(expected, *task.attack.attacker_data(ctx), **task.train_kwargs(r, pid))
        scale_update(expected, w0, ctx.round_examples / stats.num_examples)
        assert torch.equal(default, flatten_params(expected))


def test_the_step_schedules_known_answers():
    # DBA's code: MultiStepLR([0.2 E, 0.8 E], 0.1) stepped after every epoch; E = 10
    assert [step_lr_factor(10)(e) for e in range(10)] == [1, 1] + [0.1] * 6 + [0.1**2] * 2
    # Bagdasaryan et al.'s: stepped before every epoch (retrain_poison = 15)
    ahead = [step_lr_factor(15, ahead=True)(e) for e in range(15)]
    assert ahead == [1, 1] + [0.1] * 9 + [0.1**2] * 4
    # DBA's CIFAR-10 6 epochs: fractional milestones 1.2 and 4.8 (closed form)
    assert [step_lr_factor(6)(e) for e in range(6)] == [1, 1, 0.1, 0.1, 0.1, 0.1**2]


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("epochs", [5, 10, 15, 20])
@pytest.mark.parametrize("ahead", [False, True])
def test_the_step_schedule_is_torchs_multisteplr_for_whole_epoch_milestones(epochs, ahead):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[0.2 * epochs, 0.8 * epochs], gamma=0.1
    )
    factor = step_lr_factor(epochs, ahead)
    for e in range(epochs):
        if ahead:
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(factor(e), rel=1e-12)
        if not ahead:
            scheduler.step()


def test_train_with_the_step_schedule_matches_an_sgd_loop_with_multisteplr():
    """An independent loop: torch's SGD and MultiStepLR, the batches in train's order."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    model = tiny_model()
    train(model, x, y, epochs=5, batch_size=8, lr=0.5, seed=7, lr_factor=step_lr_factor(5))

    loop = tiny_model()
    optimizer = torch.optim.SGD(loop.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1, 4], gamma=0.1)
    order_rng = torch.Generator().manual_seed(7)
    for _ in range(5):
        order = torch.randperm(40, generator=order_rng)
        for start in range(0, 40, 8):
            index = order[start : start + 8]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(loop(x[index]), y[index]).backward()
            optimizer.step()
        scheduler.step()
    torch.testing.assert_close(flatten_params(model), flatten_params(loop), rtol=1e-6, atol=1e-7)
    constant = tiny_model()
    train(constant, x, y, epochs=5, batch_size=8, lr=0.5, seed=7)
    assert not torch.allclose(flatten_params(model), flatten_params(constant))


def test_an_attacker_with_a_step_schedule_trains_with_it():
    own = [
        "attack.poison_lr=0.05",
        "attack.poison_local_epochs=5",
        "attack.poison_lr_schedule=step",
    ]
    task, r, pid, ctx = _attack_round("attack.name=dba", "attack.every=2", *TRIGGER, *own)
    sent = _sent(task, r, pid, ctx)
    expected = task.new_model()
    kwargs = {**task.train_kwargs(r, pid), "lr": 0.05, "epochs": 5}
    train(expected, *task.attack.attacker_data(ctx), **kwargs, lr_factor=step_lr_factor(5))
    assert torch.equal(sent, flatten_params(expected))


def test_per_batch_poisoning_stamps_the_first_share_of_every_batch():
    task, r, pid, ctx = _attack_round(
        "attack.name=dba",
        "attack.every=2",
        "attack.num_attackers=2",
        "attack.poison_scope=batch",
        "attack.poison_fraction=0.25",
        *TRIGGER,
    )
    attack = task.attack
    assert attack.attacker_data(ctx) is ctx.examples  # clean: poisoned batch by batch
    poison = attack.poison_batch(ctx, batch_size=8)  # 0.25 x 8 = 2 a batch
    x, y = ctx.examples
    mask = torch.from_numpy(attack.client_trigger(ctx))
    xb, yb = poison(x[:5], y[:5])
    assert torch.all(xb[:2][:, :, mask] == 1.0) and torch.all(yb[:2] == attack.target)
    assert torch.equal(xb[2:], x[2:5]) and torch.equal(yb[2:], y[2:5])
    assert torch.equal(xb[:2][:, :, ~mask], x[:2][:, :, ~mask])
    assert not torch.equal(x[:2], xb[:2])  # the inputs passed in are not changed
    xb, yb = poison(x[:1], y[:1])  # a short last batch: all of it up to the share
    assert torch.all(xb[:, :, mask] == 1.0) and yb.tolist() == [attack.target]
    # through training: every batch the model sees has its first 2 rows triggered
    seen = []
    model = task.new_model()
    model.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].clone()))
    attack.local_update(model, ctx, task.train_kwargs(r, pid))
    kwargs = task.train_kwargs(r, pid)
    assert len(seen) == task.config.train.local_epochs * -(-len(y) // kwargs["batch_size"])
    for batch in seen:
        assert torch.all(batch[:2][:, :, mask] == 1.0)
    assert PixelReplacement(poison_fraction=0.3).poison_batch(ctx, 8) is None  # default


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["attack.poison_lr=0"],
            "attack.poison_lr must be > 0 (the attacker's own learning rate) or -1 (the round's), "
            "got 0",
        ),
        (
            ["attack.poison_local_epochs=0"],
            "attack.poison_local_epochs must be >= 1 (the attacker's local epochs) or -1",
        ),
        (
            ["attack.poison_lr_schedule=cosine"],
            "attack.poison_lr_schedule must be one of 'constant', 'step', 'step-ahead'",
        ),
        (
            ["attack.poison_lr_decay=0.9"],
            "attack.poison_lr_decay decays attack.poison_lr, but poison_lr is -1",
        ),
        (
            ["attack.poison_scope=rows"],
            "attack.poison_scope must be one of 'examples', 'batch', got 'rows'",
        ),
        (
            ["attack.projection=epoch"],
            "attack.projection must be one of 'global-steps', 'per-epoch'",
        ),
    ],
)
def test_attacker_training_config_errors(overrides, message):
    name = "pgd" if "projection" in overrides[0] else "dba"
    assert config_error(*BASE, f"attack.name={name}", *TRIGGER, *overrides).startswith(message)


def test_every_backdoor_takes_the_attackers_training_and_only_pattern_triggers_a_scope():
    for name, cls in ATTACKS.items():
        params = cls.parameters()
        backdoor = cls.default_target is not None or name == "label-flip"
        has = {"poison_lr", "poison_lr_decay", "poison_local_epochs", "poison_lr_schedule"}
        assert has <= set(params) if backdoor else not has & set(params), name
        assert ("poison_scope" in params) == ("poison_fraction" in params), name


# ------------------------------------------------------------- ALIE, Min-Sum
def test_alie_z_by_the_papers_formula_and_by_the_benign_share():
    # n = 10, m = 2: s = floor(6) - 2 = 4; paper Phi^-1(6/10), benign share Phi^-1(4/8)
    assert alie_z(10, 2) == pytest.approx(0.2533471031357997, abs=1e-12)
    assert alie_z(10, 2, "benign-share") == pytest.approx(0.0, abs=1e-12)
    # n = 13, m = 5: s = 2; benign share Phi^-1(6/8) = Phi^-1(0.75)
    assert alie_z(13, 5, "benign-share") == pytest.approx(0.6744897501960817, abs=1e-12)
    benign = torch.tensor([[0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)  # std (sqrt 2, 0)
    crafted = alie(benign, 13, 5, "benign-share")
    assert crafted.tolist() == pytest.approx([1 - 0.6744897501960817 * 2**0.5, 1.0])
    assert torch.equal(ALIE(z_formula="benign-share").craft(benign, 13, 5), crafted)
    assert torch.equal(ALIE().craft(benign, 10, 2), alie(benign, 10, 2))
    with pytest.raises(ValueError, match="needs n - m - s > 0"):
        alie_z(2, 1, "benign-share")  # s = 1, n - m - s = 0
    assert "n - m - s > 0" in ALIE(z_formula="benign-share").check_round(2, 1)
    assert ALIE().check_round(2, 1) == ""


def test_alie_with_a_fixed_z_as_the_authors_code_runs_it():
    # the ALIE code's -z 1.5: mean - 1.5 std whatever n and m (even a majority)
    benign = torch.tensor([[0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)  # std (sqrt 2, 0)
    attack = ALIE(z_formula="fixed", z=1.5)
    assert attack.craft(benign, 51, 12).tolist() == pytest.approx([1 - 1.5 * 2**0.5, 1.0])
    assert attack.check_round(3, 2) == ""
    with pytest.raises(ValueError, match="needs z"):
        alie(benign, 51, 12, "fixed")


@pytest.mark.parametrize(
    "overrides",
    [
        ["attack.z_formula=fixed"],
        ["attack.z=1.5"],
        ["attack.z_formula=benign-share", "attack.z=0.7"],
    ],
    ids=["fixed-without-z", "z-without-fixed", "z-with-a-formula"],
)
def test_alie_z_goes_with_the_fixed_formula_only(overrides):
    error = config_error("attack.name=alie", *overrides)
    assert error.startswith("attack.z goes with attack.z_formula = 'fixed' and only with it")


def test_min_sum_bound_by_the_largest_or_the_smallest_benign_sum():
    # benign 0, 1, 3: sums of squared distances 10, 5, 13; mean 4/3, p = -1 (unit);
    # the update 4/3 - g has sum 3 g^2 + 14/3: g = 5/3 under 13 (max), 1/3 under 5 (min)
    benign = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    assert min_sum(benign, "unit").item() == pytest.approx(4 / 3 - 5 / 3, abs=1e-4)
    assert min_sum(benign, "unit", bound="min").item() == pytest.approx(4 / 3 - 1 / 3, abs=1e-4)
    attack = MinSum(direction="unit", bound="min")
    assert torch.equal(attack.craft(benign, 5, 2), min_sum(benign, "unit", bound="min"))
    assert torch.equal(MinSum(direction="unit").craft(benign, 5, 2), min_sum(benign, "unit"))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["attack.name=alie", "attack.z_formula=code"],
            "attack.z_formula must be one of 'paper', 'benign-share', 'fixed', got 'code'",
        ),
        (
            ["attack.name=min-sum", "attack.bound=median"],
            "attack.bound must be one of 'max', 'min'",
        ),
        (
            ["attack.name=min-max", "attack.bound=min"],
            "unknown key attack.bound for attack 'min-max'",
        ),
    ],
)
def test_crafted_variant_config_errors(overrides, message):
    error = config_error(
        *BASE, "attack.attackers_per_round=2", "attack.num_attackers=2", *overrides
    )
    assert error.startswith(message)


def test_a_config_error_is_raised_before_training():
    with pytest.raises(ConfigError):
        task_for("attack.name=dba", "attack.poison_lr=-2", *TRIGGER)
