"""Attack procedures on tiny models: PGD projection, model replacement, DBA triggers,
Neurotoxin's mask, sign flip, Gaussian noise, label flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import AttackContext, procedures
from attacks.dba import DBA
from attacks.gaussian import gaussian_noise
from attacks.procedures import project_to_ball, projected_train, scale_update
from attacks.triggers import blend_pattern, stamp, trigger_box, trigger_parts
from fedsec.config import load_config
from fedsec.task import get_task
from fedsec_core.errors import ConfigError
from fedsec_core.protocol import AttackerFacts
from fedsec_core.training import assign_flat_params, flatten_params, train
from tests.runs import tiny_digits

# 8x8 digits, a 200-unit MLP, 6 clients; small triggers so that they fit 8x8 images.
BASE = tiny_digits(rounds=4, seed=3)
TRIGGER = ["attack.trigger_size=2", "attack.trigger_gap=1"]


def task_for(*overrides: str):
    return get_task(load_config(None, [*BASE, *overrides]))


def malicious_round(task) -> tuple[int, int]:
    """(round, partition id) of the first scheduled attack."""
    schedule = task.schedule
    for r in range(1, task.config.train.rounds + 1):
        _, bad = schedule.sample(r)
        if bad:
            return r, bad[0]
    raise AssertionError("no attack scheduled")


def round_context(task, r: int, pid: int) -> AttackContext:
    """Attacker ``pid``'s context in round ``r``, from the facts the server sends it."""
    return task.attack_context(pid, r, task.attacker_facts(*task.schedule.sample(r))[pid])


def run_attack(task):
    """The global model, the attacker's sent model, its context and stats."""
    r, pid = malicious_round(task)
    model = task.new_model()
    w0 = flatten_params(model).clone()
    ctx = round_context(task, r, pid)
    stats = task.attack.local_update(model, ctx, task.train_kwargs(r, pid))
    return w0, flatten_params(model), ctx, stats, (r, pid)


def honest_copy(task, r: int, pid: int, data=None) -> torch.Tensor:
    """What plain training from the global model on ``data`` gives (the same seed)."""
    model = task.new_model()
    x, y = data if data is not None else task.attack.attacker_data(task.pool_context(pid))
    train(model, x, y, **task.train_kwargs(r, pid))
    return flatten_params(model)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


# ------------------------------------------------------------------------ PGD
def test_projection_is_a_no_op_inside_the_ball_and_lands_on_the_sphere_outside():
    model = tiny_model()
    center = flatten_params(model) + 0.01
    before = [p.detach().clone() for p in model.parameters()]
    assert not project_to_ball(model, center, eps=10.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    w = flatten_params(model)
    moved = project_to_ball(model, center, eps=0.05)
    projected = flatten_params(model)
    assert moved
    assert torch.linalg.vector_norm(projected - center).item() == pytest.approx(0.05, rel=1e-5)
    # same direction from the center
    cos = torch.nn.functional.cosine_similarity(projected - center, w - center, dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)


def test_projected_training_ends_inside_the_ball_and_projects_every_k_steps():
    model = tiny_model()
    center = flatten_params(model).clone()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    kwargs = dict(
        epochs=3, batch_size=8, lr=0.5, momentum=0.9, weight_decay=0.0, seed=0, device="cpu"
    )
    stats = projected_train(model, x, y, center, eps=0.02, project_every=5, train_kwargs=kwargs)
    assert stats.num_steps == 24
    assert torch.linalg.vector_norm(flatten_params(model) - center).item() <= 0.02 * (1 + 1e-5)
    # without projection the same training leaves the ball by far
    free = tiny_model()
    train(free, x, y, **kwargs)
    assert torch.linalg.vector_norm(flatten_params(free) - center).item() > 0.1


def test_projection_runs_every_k_steps_and_after_the_last(monkeypatch):
    import attacks.procedures as procedures

    calls = []
    real = procedures.project_to_ball
    monkeypatch.setattr(
        procedures,
        "project_to_ball",
        lambda model, center, eps: calls.append(steps[0]) or real(model, center, eps),
    )
    steps = [0]
    model = tiny_model()
    x, y = torch.rand(50, 1, 4, 4), torch.randint(0, 3, (50,))

    def count(step):
        steps[0] = step

    kwargs = dict(epochs=2, batch_size=8, lr=0.1, seed=0)  # 7 steps an epoch, 14 in all
    original_train = procedures.train
    monkeypatch.setattr(
        procedures,
        "train",
        lambda *a, after_step, **k: original_train(
            *a, **k, after_step=lambda s: (count(s), after_step(s))
        ),
    )
    procedures.projected_train(model, x, y, flatten_params(model), 0.01, 4, kwargs)
    assert calls == [4, 8, 12, 14]


@pytest.mark.parametrize("attack", ["pgd", "edge-case-pgd"])
def test_pgd_attacks_send_a_model_within_eps_of_the_global_model(attack):
    extra = TRIGGER if attack == "pgd" else ["attack.edge_case=tail", "attack.num_clean=20"]
    task = task_for(f"attack.name={attack}", "attack.eps=0.01", "attack.every=2", *extra)
    w0, w, *_ = run_attack(task)
    distance = torch.linalg.vector_norm(w - w0).item()
    assert 0.01 * 0.99 < distance <= 0.01 * (1 + 1e-5)  # training alone would leave the ball


@pytest.mark.parametrize("multiple", [0.5, 2.0])
def test_a_radius_in_benign_norms_is_that_multiple_of_the_attackers_clean_update(
    multiple, monkeypatch
):
    # eps_unit = "benign-norm": the attacker first trains honestly on its own partition
    # (what it would have sent, same seed); the radius is eps times that update's norm.
    radii = []
    real = procedures.projected_train
    monkeypatch.setattr(
        procedures,
        "projected_train",
        lambda model, x, y, center, eps, *a: (
            radii.append(eps) or real(model, x, y, center, eps, *a)
        ),
    )
    task = task_for(
        "attack.name=edge-case-pgd",
        "attack.eps_unit=benign-norm",
        f"attack.eps={multiple}",
        "attack.every=2",
        "attack.edge_case=tail",
        "attack.num_clean=20",
    )
    w0, w, ctx, stats, (r, pid) = run_attack(task)
    clean_norm = torch.linalg.vector_norm(
        honest_copy(task, r, pid, task.client_data(pid)) - w0
    ).item()
    assert clean_norm > 0
    assert radii == [pytest.approx(multiple * clean_norm, rel=1e-5)]
    assert torch.linalg.vector_norm(w - w0).item() <= multiple * clean_norm * (1 + 1e-5)


def test_an_unknown_eps_unit_is_a_config_error():
    with pytest.raises(
        ConfigError, match="attack.eps_unit must be one of 'absolute', 'benign-norm'"
    ):
        task_for("attack.name=pgd", "attack.eps_unit=norm", *TRIGGER)


# -------------------------------------------------------------- model replacement
def test_scale_update_is_exact():
    model = tiny_model()
    w0 = flatten_params(model).clone()
    w = w0 + torch.linspace(-1, 1, w0.numel())
    assign_flat_params(model, w)
    scale_update(model, w0, 7.5)
    torch.testing.assert_close(flatten_params(model) - w0, 7.5 * (w - w0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("attack", ["pixel-replacement", "edge-case-pgd-replacement"])
def test_model_replacement_scales_the_trained_update_by_n_round_over_n_attacker(attack):
    extra = (
        TRIGGER if attack == "pixel-replacement" else ["attack.edge_case=tail", "attack.eps=0.5"]
    )
    task = task_for(f"attack.name={attack}", "attack.every=2", *extra)
    w0, sent, ctx, stats, (r, pid) = run_attack(task)
    n_attacker = len(task.attack.attacker_data(ctx)[1])
    assert stats.num_examples == n_attacker
    clients, bad = task.schedule.sample(r)
    # N_round: every sampled client's training set, the attackers' poisoned ones included
    assert ctx.round_examples == sum(
        len(task.attack.attacker_data(task.pool_context(c))[1])
        if c in bad
        else len(task.partitions[c])
        for c in clients
    )
    factor = ctx.round_examples / n_attacker
    assert factor > 2
    trained = task.new_model()
    x, y = task.attack.attacker_data(ctx)
    task.attack.train(trained, x, y, w0, ctx, task.train_kwargs(r, pid))  # deterministic: same seed
    torch.testing.assert_close(
        sent - w0, factor * (flatten_params(trained) - w0), rtol=1e-5, atol=1e-6
    )


# --------------------------------------------------------------------- triggers
@pytest.mark.parametrize("parts,size,gap", [(4, 4, 2), (4, 2, 1), (3, 3, 0), (1, 5, 2), (6, 2, 2)])
def test_dba_parts_are_disjoint_and_union_to_the_global_trigger(parts, size, gap):
    masks = trigger_parts(12, 12, parts, size, gap)
    assert masks.shape == (parts, 12, 12)
    assert (masks.sum(axis=0) <= 1).all()  # disjoint
    assert all(m.sum() == size for m in masks)  # one bar of `size` pixels each
    height, width = trigger_box(parts, size, gap)
    union = masks.any(axis=0)
    assert union.sum() == parts * size
    assert not union[height:].any() and not union[:, width:].any()  # inside the box


def test_default_trigger_is_dbas_four_bars():
    masks = trigger_parts(28, 28)
    rows_cols = [sorted(zip(*np.nonzero(m), strict=True)) for m in masks]
    assert rows_cols == [
        [(0, c) for c in range(4)],
        [(0, c) for c in range(6, 10)],
        [(3, c) for c in range(4)],
        [(3, c) for c in range(6, 10)],
    ]


def test_dba_attacker_stamps_its_own_part_and_ba_uses_the_full_trigger():
    task = task_for("attack.name=dba", "attack.num_attackers=3", "attack.num_parts=2", *TRIGGER)
    attack: DBA = task.attack
    parts = attack.parts(8, 8)
    pool = task.schedule.pool
    for i, pid in enumerate(pool):
        x, y = attack.attacker_data(task.pool_context(pid))
        clean_x, clean_y = task.client_data(pid)
        changed = (x != clean_x).any(dim=(1, 2, 3)) | (y != clean_y)
        poisoned = y == attack.target
        on = torch.from_numpy(parts[i % 2])
        other = torch.from_numpy(parts[1 - i % 2])
        stamped = x[:, 0][:, on]
        assert changed.sum() > 0
        assert torch.all(stamped[changed] == 1.0)  # own part stamped where poisoned
        assert torch.equal(
            x[changed][:, 0][:, other], clean_x[changed][:, 0][:, other]
        )  # other part untouched
        assert torch.all(poisoned[changed])
    bx, by = attack.backdoor_test_set(task.dataset)
    full = torch.from_numpy(parts.any(axis=0))
    assert torch.all(bx[:, 0][:, full] == 1.0) and torch.all(by == attack.target)
    assert len(by) == int((task.dataset.y_test != attack.target).sum())


def test_stamp_copies_and_sets_every_channel():
    x = np.zeros((2, 3, 5, 5), dtype=np.float32)
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 2] = True
    out = stamp(x, mask)
    assert x.sum() == 0 and out.sum() == 6 and (out[:, :, 1, 2] == 1).all()


def test_blended_trigger_mixes_one_fixed_noise_image_into_the_whole_input():
    task = task_for("attack.name=pixel-replacement", "attack.trigger=blended", "attack.blend=0.25")
    pid = task.schedule.pool[0]
    x, y = task.attack.attacker_data(task.pool_context(pid))
    clean_x, _ = task.client_data(pid)
    noise = torch.from_numpy(blend_pattern((1, 8, 8)))
    poisoned = y == task.attack.target
    changed = (x != clean_x).any(dim=(1, 2, 3))
    assert changed.sum() > 0 and torch.all(poisoned[changed])
    torch.testing.assert_close(x[changed], 0.75 * clean_x[changed] + 0.25 * noise)
    bx, by = task.attack.backdoor_test_set(task.dataset)
    kept = task.dataset.y_test != task.attack.target
    clean_test = torch.from_numpy(task.dataset.x_test[kept])
    torch.testing.assert_close(bx, 0.75 * clean_test + 0.25 * noise)
    assert torch.all(by == task.attack.target)
    assert np.array_equal(blend_pattern((1, 8, 8)), blend_pattern((1, 8, 8)))  # one image


def test_all_to_all_sends_each_class_to_the_next():
    task = task_for("attack.name=pixel-replacement", "attack.target_mode=all-to-all", *TRIGGER)
    pid = task.schedule.pool[0]
    x, y = task.attack.attacker_data(task.pool_context(pid))
    clean_x, clean_y = task.client_data(pid)
    changed = (x != clean_x).any(dim=(1, 2, 3))
    assert changed.sum() > 0
    assert torch.equal(y[changed], (clean_y[changed] + 1) % 10)
    assert torch.equal(y[~changed], clean_y[~changed])
    bx, by = task.attack.backdoor_test_set(task.dataset)
    y_test = torch.from_numpy(task.dataset.y_test)
    assert len(by) == len(y_test) and torch.equal(by, (y_test + 1) % 10)  # every class


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack.name=dba", "attack.trigger=blended"], "dba splits the pattern trigger"),
        (
            ["attack.name=pgd", "attack.target_mode=all-to-all", "attack.target_label=3"],
            "attack.target_label has no meaning with attack.target_mode = 'all-to-all'",
        ),
        (["attack.name=pgd", "attack.blend=0"], r"attack.blend must be in \(0, 1\]"),
        (["attack.name=pgd", "attack.trigger=star"], "attack.trigger must be one of"),
    ],
)
def test_trigger_and_target_mode_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        task_for(*overrides, *TRIGGER)


# ------------------------------------------------------------------ neurotoxin
def test_neurotoxin_leaves_the_masked_coordinates_bit_equal_to_the_global_model():
    task = task_for(
        "attack.name=neurotoxin", "attack.mask_fraction=0.3", "attack.every=2", *TRIGGER
    )
    w0, w, *_ = run_attack(task)
    mask = task.attack.last_mask
    assert mask.sum().item() == round(0.3 * w0.numel())
    assert torch.equal(w[mask], w0[mask])  # bit-equal
    assert (w[~mask] != w0[~mask]).float().mean() > 0.5  # the rest trained


# -------------------------------------------------------- untargeted transforms
def test_sign_flip_sends_the_negated_scaled_honest_update():
    task = task_for("attack.name=sign-flip", "attack.scale=2.5", "attack.every=2")
    w0, sent, ctx, stats, (r, pid) = run_attack(task)
    honest = honest_copy(task, r, pid, task.client_data(pid))
    torch.testing.assert_close(sent, w0 - 2.5 * (honest - w0), rtol=1e-5, atol=1e-6)
    assert stats.num_examples == len(task.partitions[pid])


def test_gaussian_replaces_the_update_by_seeded_noise():
    task = task_for("attack.name=gaussian", "attack.sigma=0.3", "attack.every=2")
    w0, sent, ctx, stats, _ = run_attack(task)
    expected = w0 + gaussian_noise(w0.numel(), 0.3, ctx.seed, torch.device("cpu"))
    assert torch.equal(sent, expected)
    assert (sent - w0).std().item() == pytest.approx(0.3, rel=0.02)
    assert task.attack.backdoor_test_set(task.dataset) is None


def test_label_flip_relabels_exactly_the_source_class():
    task = task_for("attack.name=label-flip", "attack.source_label=3", "attack.target_label=8")
    pid = task.schedule.pool[0]
    x, y = task.attack.attacker_data(task.pool_context(pid))
    cx, cy = task.client_data(pid)
    assert torch.equal(x, cx)
    assert torch.equal(y[cy == 3], torch.full_like(y[cy == 3], 8))
    assert torch.equal(y[cy != 3], cy[cy != 3])
    assert (cy == 3).any()
    bx, by = task.attack.backdoor_test_set(task.dataset)
    assert len(bx) == int((task.dataset.y_test == 3).sum()) and torch.all(by == 8)


def test_attacker_data_is_cached_and_seeded():
    task = task_for("attack.name=pixel-replacement", *TRIGGER)
    pid = task.schedule.pool[0]
    a = task.attack.attacker_data(task.pool_context(pid))
    assert task.attack.attacker_data(task.pool_context(pid)) is a
    fresh = type(task.attack)(target_label=-1, trigger_size=2, trigger_gap=1)
    b = fresh.attacker_data(task.pool_context(pid))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    poisoned = (a[1] == 2) & (task.client_data(pid)[1] != 2)
    assert poisoned.any()


def test_the_attack_context_is_its_own_data_and_the_facts_the_server_sends():
    task = task_for(
        "attack.name=pixel-replacement",
        "attack.every=2",
        "attack.num_attackers=3",
        "attack.attackers_per_round=2",
        *TRIGGER,
    )
    r, _ = malicious_round(task)
    clients, bad = task.schedule.sample(r)
    facts = task.attacker_facts(clients, bad)
    assert sorted(facts) == sorted(bad) and len(bad) == 2  # honest clients are told nothing
    for pid in bad:
        ctx = task.attack_context(pid, r, facts[pid])
        assert isinstance(ctx, AttackContext) and ctx.target_label == 2
        assert ctx.attacker_index == task.schedule.pool.index(pid) and ctx.num_attackers == 3
        assert ctx.round_examples == sum(
            len(task.partitions[c]) for c in clients
        )  # same-size poison
        assert all(
            torch.equal(a, b) for a, b in zip(ctx.examples, task.client_data(pid), strict=True)
        )
        assert ctx.input_shape == (1, 8, 8)
    assert task.attacker_facts(clients, []) == {}


def test_only_the_attackers_train_messages_carry_the_facts(server_identity):
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from fedsec.server import _with_facts

    shared = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({"server-round": 3})})
    honest, attacker = (
        Message(content=shared, message_type="train", dst_node_id=n) for n in (1, 2)
    )
    assert _with_facts(honest, None) is honest
    facts = AttackerFacts(attacker_index=1, num_attackers=2, round_examples=90, round_clients=3)
    sent = _with_facts(attacker, facts)
    assert dict(sent.content["config"]) == {  # the wire format: the protocol's key strings
        "server-round": 3,
        "attacker-index": 1,
        "num-attackers": 2,
        "round-examples": 90,
        "round-clients": 3,
    }
    trigger = _with_facts(attacker, AttackerFacts(0, 1, 10, 2, trigger=[0.5, 1.0]))
    assert dict(trigger.content["config"])["attack-trigger"] == [0.5, 1.0]
    assert dict(honest.content["config"]) == {"server-round": 3}  # the shared record is untouched
    assert sent.metadata.dst_node_id == 2 and sent.content["arrays"] is shared["arrays"]
