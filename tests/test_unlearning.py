"""Unlearning (fedsec/unlearning): datamodels, KLoM, matching, the CLI, core changes."""

import copy
import json
import math

import numpy as np
import pytest
import torch

import fedsec.task
from fedsec.cli import main
from fedsec.config import ExperimentConfig
from fedsec.results import read_rounds
from fedsec.unlearning import federated
from fedsec.unlearning.artifact import DatamodelArtifact, config_hash
from fedsec.unlearning.datamodel import Datamodel, fit_datamodel, predicted_oracle
from fedsec.unlearning.klom import klom, margins, percentile
from fedsec.unlearning.matching import MatchingConfig, match_logits
from fedsec.unlearning.subsets import (
    ExampleSubsetTrainer,
    federation_variant,
    train_datamodel,
)
from fedsec_core.errors import ConfigError, FedsecError
from fedsec_core.protocol import RoundRecord
from fedsec_core.sampling import AttackSchedule, ClientSampler
from fedsec_core.seeding import rng
from tests.runs import SMALL

TINY = {
    "data": {"name": "digits", "num_clients": 5, "alpha": 0.5},
    "model": {"name": "mlp"},
    "train": {"rounds": 3, "clients_per_round": 5, "local_epochs": 1},
    "engine": {"client_num_cpus": 1, "checkpoint_every": 0},
}


def tiny_config(**over) -> ExperimentConfig:
    raw = json.loads(json.dumps(TINY))
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return ExperimentConfig.from_dict(raw).validate()


# ------------------------------------------------------------------ datamodel
def test_ridge_recovers_a_known_linear_datamodel():
    g = torch.Generator().manual_seed(0)
    m, u, n, k = 400, 8, 5, 3
    B = torch.randn(u, n, k, generator=g)
    b = torch.randn(n, k, generator=g)
    masks = torch.rand(m, u, generator=g) < 0.7
    outputs = b + torch.einsum("mu,unk->mnk", masks.double(), B.double()).float()
    outputs += 0.01 * torch.randn(outputs.shape, generator=g)
    dm = fit_datamodel(masks, outputs, seed=1)
    assert torch.allclose(dm.B, B, atol=0.02) and torch.allclose(dm.b, b, atol=0.03)
    assert dm.val_mse < 2e-4  # the noise variance is 1e-4
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    assert torch.allclose(dm.predict(mask), b + B[mask].sum(0), atol=0.1)


def test_least_squares_keeps_a_large_effect_that_held_out_ridge_shrinks():
    # The mnist5k situation: seed-to-seed noise (std 1) above most units' effects (0),
    # one unit with a large effect on its own few outputs. With M >= 2U the datamodel is
    # least squares, whose effect estimate is unbiased; the held-out lambda shrinks it.
    g = torch.Generator().manual_seed(0)
    m, u, n, k = 100, 20, 200, 10
    B = torch.zeros(u, n, k)
    B[3, :20] = 1.5 * torch.randn(20, k, generator=g)
    masks = torch.rand(m, u, generator=g) < 0.9
    outputs = torch.einsum("mu,unk->mnk", masks.float(), B) + torch.randn(m, n, k, generator=g)
    ols = fit_datamodel(masks, outputs, seed=1)
    assert ols.lam == 0.0
    assert ols.B[3, :20].norm() / B[3, :20].norm() == pytest.approx(1.0, abs=0.15)
    # The same rows with fewer models than 2U: lambda from the held-out grid, > 0.
    ridge = fit_datamodel(masks[:30], outputs[:30], seed=1)
    assert ridge.lam > 0 and ridge.B[3, :20].norm() < ols.B[3, :20].norm()
    # forced, with all 100 models: the held-out lambda shrinks the effect
    forced = fit_datamodel(masks, outputs, seed=1, least_squares=False)
    assert forced.lam > 0 and forced.B[3, :20].norm() < 0.9 * ols.B[3, :20].norm()


def test_least_squares_gives_no_coefficient_to_a_unit_in_every_model():
    masks = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [1, 0, 0]] * 3, dtype=torch.bool)
    B = torch.tensor([5.0, 2.0, -1.0]).reshape(3, 1, 1)
    outputs = torch.einsum("mu,unk->mnk", masks.float(), B)
    dm = fit_datamodel(masks, outputs, seed=0)
    # unit 0 is always present: its effect is not identifiable, it goes into the intercept
    assert dm.lam == 0.0 and torch.isfinite(dm.B).all() and dm.B[0].abs().item() < 1e-5
    assert torch.allclose(dm.B[1:].flatten(), torch.tensor([2.0, -1.0]), atol=1e-5)
    assert dm.b.item() == pytest.approx(5.0, abs=1e-5)


def test_predicted_oracle_subtracts_the_forget_units_effects():
    B = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    dm = Datamodel(B=B, b=torch.zeros(3, 2), lam=1.0)
    logits = torch.ones(2, 2)
    rows = torch.tensor([0, 2])
    expected = logits - B[1, rows] - B[3, rows]
    assert torch.equal(predicted_oracle(logits, dm, [1, 3], rows), expected)
    assert int(dm.influence().argmax()) == 3


# ------------------------------------------------------------------ KLoM
def test_margins_known_values_and_clipping():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1000.0, 0.0], [1000.0, 0.0, 0.0]])
    m = margins(logits, torch.tensor([0, 0, 0]))
    assert m[0].item() == pytest.approx(2.0 - math.log(2.0))
    assert m[1].item() == -100.0 and m[2].item() == 100.0
    batched = margins(torch.stack([logits, logits]), torch.tensor([0, 0, 0]))  # (models, n)
    assert torch.equal(batched[1], m)


def test_klom_zero_for_identical_samples_and_known_values():
    g = torch.Generator().manual_seed(0)
    same = torch.randn(30, 7, generator=g)
    assert torch.allclose(klom(same, same), torch.zeros(7, dtype=torch.float64))
    # range [0, 1]: 0 falls in bin 0, 1 in bin 19; p = (1/2, 1/2), q = (3/4, 1/4)
    u = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    o = torch.tensor([[0.0], [0.0], [0.0], [1.0]])
    assert klom(u, o).item() == pytest.approx(0.5 * math.log(4 / 3))
    # the oracle's empty bin is floored at 1e-5: p = (1/2, 1/2), q = (1, 1e-5)
    expected = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-5)
    assert klom(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.0]])).item() == pytest.approx(
        expected
    )
    assert klom(torch.full((3, 1), 2.0), torch.full((5, 1), 2.0)).item() == 0.0  # zero range
    assert percentile(torch.arange(101.0)) == pytest.approx(95.0)


def test_klom_grows_with_the_shift():
    g = torch.Generator().manual_seed(1)
    oracle = torch.randn(200, 50, generator=g)
    values = [
        klom(torch.randn(200, 50, generator=g) + s, oracle).mean().item() for s in (0.0, 1.0, 3.0)
    ]
    assert values[0] < values[1] < values[2]


# ------------------------------------------------------------------ matching
def test_matching_reduces_the_mse_to_the_target():
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    teacher, student = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    with torch.no_grad():
        target = teacher(x)
        before = torch.nn.functional.mse_loss(student(x), target).item()
    report = match_logits(student, x, target, seed=0, settings=MatchingConfig(epochs=60, lr=0.05))
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(student(x), target).item()
    assert after < 0.05 * before and report.end_loss < report.start_loss
    assert report.steps == 60 and report.converged is None  # 60 epochs of one batch
    assert report.examples == 60 * 256  # every row of every epoch: one example-gradient each


def _matching_problem(seed: int = 0):
    """A client-sized matching set (300 examples) whose target a small MLP cannot fit
    exactly (a wider teacher plus noise), so the held-out loss has a plateau above 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 8, generator=g)
    torch.manual_seed(seed)
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        target = 3 * teacher(x) + 0.3 * torch.randn(300, 10, generator=g)
    student = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    return student, x, target


def test_default_matching_converges_to_the_plateau_of_a_far_longer_run():
    # The paper code's 5 epochs are 5 Adam steps on this set; the default runs until the
    # held-out loss stops improving (about 1,000 steps here) and must get within 5% of the
    # way from its start to the plateau that a run with 20x the patience and no minimum
    # improvement reaches (about 3,400 steps).
    student, x, target = _matching_problem()
    long_student = copy.deepcopy(student)
    paper_student = copy.deepcopy(student)
    default = match_logits(student, x, target, seed=1)
    long = match_logits(
        long_student,
        x,
        target,
        seed=1,
        settings=MatchingConfig(max_steps=8_000, patience=200, min_delta=0.0),
    )
    match_logits(paper_student, x, target, seed=1, settings=MatchingConfig(epochs=5))
    assert default.converged and long.converged and default.steps < long.steps
    assert default.start_loss == long.start_loss  # the same held-out split
    # 240 fitted rows (60 held out) = one batch of 240 per step
    assert default.examples == 240 * default.steps
    tolerance = 0.05 * (default.start_loss - long.end_loss)
    assert default.end_loss <= long.end_loss + tolerance
    with torch.no_grad():  # the paper's 5 steps stay far from it (on the whole set)
        paper_loss = torch.nn.functional.mse_loss(paper_student(x), target).item()
    assert paper_loss > long.end_loss + 10 * tolerance


def test_a_retraining_costs_every_round_s_examples_times_the_local_epochs():
    # All 5 clients every round: 3 rounds x 2 epochs x the whole training split; without
    # client 1, its examples drop out of every round.
    config = tiny_config(train__local_epochs=2)
    task = fedsec.task.get_task(config)
    sizes = [len(p) for p in task.partitions]
    assert federated.training_examples(config) == 3 * 2 * sum(sizes)
    without = federation_variant(config, 7, (1,))
    assert federated.training_examples(without) == 3 * 2 * (sum(sizes) - sizes[1])


# ------------------------------------------------------------------ example units
def _logreg():
    return torch.nn.Linear(2, 2)


def test_example_level_datamodel_attributes_the_lone_example():
    # 19 class-0 points near the origin, one class-1 point far away; the query sits on it.
    gen = np.random.default_rng(0)
    x = torch.from_numpy(np.vstack([gen.normal(0, 0.5, (19, 2)), [[4.0, 4.0]]]).astype(np.float32))
    y = torch.tensor([0] * 19 + [1])
    query = torch.tensor([[4.0, 4.0], [0.0, 0.0]])
    trainer = ExampleSubsetTrainer(
        _logreg,
        x,
        y,
        query,
        {"epochs": 20, "batch_size": 20, "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0},
    )
    build = train_datamodel(trainer, num_models=60, q=0.8, seed=0, progress=False)
    effect = (
        build.datamodel.B[:, 0, 1] - build.datamodel.B[:, 0, 0]
    )  # on the query's class-1 margin
    assert build.outputs.shape == (60, 2, 2) and build.masks.shape == (60, 20)
    assert int(effect.argmax()) == 19 and effect[19] > 3 * effect[:19].abs().max()


# ------------------------------------------------------------------ core changes
def test_sampler_excludes_clients_and_default_is_unchanged():
    plain = ClientSampler(10, 4, seed=3)
    for r in range(1, 6):
        expected = sorted(int(c) for c in rng(3, "sampling", r).choice(10, size=4, replace=False))
        assert plain.sample(r) == expected
    ex = ClientSampler(10, 4, seed=3, exclude=(2, 5))
    assert all(len(ex.sample(r)) == 4 and not {2, 5} & set(ex.sample(r)) for r in range(1, 30))
    assert ClientSampler(5, 5, seed=0, exclude=(1,)).sample(1) == [0, 2, 3, 4]  # all remaining


def test_schedule_without_the_attacker_has_no_malicious_client():
    from fedsec.config import AttackConfig

    attack = AttackConfig(name="pixel-replacement", schedule="every-round", num_attackers=1)
    full = AttackSchedule(attack, 6, 6, 4, seed=0)
    attacker = full.pool[0]
    assert all(full.sample(r)[1] == [attacker] for r in range(1, 5))
    without = AttackSchedule(attack, 6, 6, 4, seed=0, exclude=(attacker,))
    for r in range(1, 5):
        clients, malicious = without.sample(r)
        assert malicious == [] and clients == sorted(set(range(6)) - {attacker})
    assert AttackSchedule(attack, 6, 6, 4, seed=9, pool_seed=0).pool == full.pool


def test_partition_seed_fixes_the_federation_and_exclusions_are_validated():
    from fedsec.task import get_task

    a = get_task(federation_variant(tiny_config(), 1)).partitions
    b = get_task(tiny_config(seed=2, data__partition_seed=0)).partitions
    c = get_task(tiny_config(seed=2)).partitions
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(b, c, strict=True))
    assert (
        tiny_config().federation_seed == 0
        and tiny_config(data__partition_seed=5).federation_seed == 5
    )
    for bad, msg in (
        ("9", "unknown client id 9"),
        ("0,1,2,3,4", "every client"),
        ("a", "not a client id"),
    ):
        with pytest.raises(ConfigError, match=msg):
            tiny_config(train__exclude_clients=bad)
    with pytest.raises(ConfigError, match="partition_seed"):
        tiny_config(data__partition_seed=-2)
    assert tiny_config().with_overrides(["train.exclude_clients=3"]).train.excluded() == (3,)


# ------------------------------------------------------------------ artifact reuse
class _FakeTrainer:
    """Deterministic "training": logits = mask-weighted sum; counts its calls."""

    calls = 0

    def __init__(self, config, inputs):
        self.config, self.n = config, len(inputs)

    @property
    def num_units(self):
        return self.config.data.num_clients

    def __call__(self, mask, seed):
        type(self).calls += 1
        w = torch.arange(1.0, self.num_units + 1)
        return (torch.from_numpy(np.asarray(mask, np.float32)) @ w) * torch.ones(self.n, 10)


def test_datamodel_artifact_is_reused_and_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(federated, "FederatedSubsetTrainer", _FakeTrainer)
    fed = federated.Federation.from_config(federation_variant(tiny_config(), 0))
    path = tmp_path / "dm.pt"
    art, built = federated.get_datamodel(
        fed, path, num_models=40, workers=1, progress=False, log=lambda s: None
    )
    assert built and _FakeTrainer.calls == 40 and path.is_file()
    assert torch.allclose(art.datamodel.B[:, 0, 0], torch.arange(1.0, 6.0), atol=0.05)
    again, built = federated.get_datamodel(fed, path, workers=1, progress=False, log=lambda s: None)
    assert not built and _FakeTrainer.calls == 40  # loaded, not retrained
    assert torch.equal(again.datamodel.B, art.datamodel.B)
    other = federated.Federation.from_config(federation_variant(tiny_config(seed=1), 1))
    with pytest.raises(FedsecError, match="another config"):
        federated.get_datamodel(other, path, progress=False, log=lambda s: None)
    with pytest.raises(FedsecError, match="q = 0.9"):
        federated.get_datamodel(fed, path, q=0.5, progress=False, log=lambda s: None)
    assert _FakeTrainer.calls == 40


def test_federation_holds_the_examples_attackers_train_on(monkeypatch):
    """An attacker's rows are its partition plus the poisoned examples it trains on, so a
    cooperating attacker hands those over and the datamodel predicts them."""
    # Every round: 5 clients a round of 5 leaves no room for the pool to sit out.
    attack = {
        "name": "pixel-replacement",
        "num_attackers": 2,
        "attackers_per_round": 2,
        "schedule": "every-round",
        "poison_fraction": 0.5,
        "trigger_size": 2,
        "trigger_gap": 1,
    }
    config = federation_variant(tiny_config(attack=attack, data__partition_seed=3), 0)
    fed = federated.Federation.from_config(config)
    task = fed.task
    pool = task.schedule.pool
    n_split = len(task.dataset.y_train)
    assert len(pool) == 2 and fed.n_train > n_split
    extra = np.arange(n_split, fed.n_train)
    assert set(fed.owner[extra]) == set(pool)
    for pid in pool:
        rows = fed.client_rows([pid])
        own, poisoned = rows[rows < n_split], rows[rows >= n_split]
        np.testing.assert_array_equal(own, np.sort(task.partitions[pid]))
        assert len(poisoned) == round(0.5 * len(own))  # the stamped half, relabelled
        assert (fed.labels[poisoned] == task.attack.target).all()
        trigger = torch.from_numpy(task.attack.global_trigger(8, 8))
        assert (fed.inputs[poisoned][:, :, trigger] == 1.0).all()
    # Which examples are poisoned follows the federation, not the training seed (a fresh
    # task, so the attack's per-partition cache cannot hide it).
    monkeypatch.setattr(fedsec.task, "_TASK_CACHE", {})
    other = federated.Federation.from_config(federation_variant(config, 11))
    assert torch.equal(other.inputs, fed.inputs) and np.array_equal(other.owner, fed.owner)
    assert fed.test_rows()[0] == fed.n_train and len(fed.test_rows()) == len(task.dataset.y_test)
    # Forgetting an honest client: the reference set is clean, a retained attacker's
    # poisoned examples are matched only as that attacker's own data.
    honest = next(c for c in range(5) if c not in pool)
    reference, _ = federated.matching_rows(
        fed, [honest], federated.UnlearnSettings(reference_size=10_000)
    )
    assert len(reference) == len(fed.retained_rows([honest])) - len(extra)
    assert (reference < n_split).all()


# ------------------------------------------------------------------ detect, then unlearn
def test_flagged_clients_binomial_test_by_hand():
    records = [
        RoundRecord(1, accepted_clients=[1, 2, 3, 4, 5], rejected_clients=[0]),
        RoundRecord(2, accepted_clients=[1, 2, 3, 4, 5], rejected_clients=[0]),
        RoundRecord(3, accepted_clients=[2, 3, 4, 5], rejected_clients=[0, 1]),
        RoundRecord(4, clients=[0, 1]),  # no verdict: left out
    ]
    f = federated.flagged_clients(records, 0.05)
    assert (f.rejected_total, f.judged_total) == (4, 18) and f.base_rate == pytest.approx(2 / 9)
    assert f.judged == dict.fromkeys(range(6), 3)
    assert f.rejected == {0: 3, 1: 1, 2: 0, 3: 0, 4: 0, 5: 0}
    # P(X >= 3 | 3, 2/9) = (2/9)^3; P(X >= 1 | 3, 2/9) = 1 - (7/9)^3
    assert f.p_values[0] == pytest.approx((2 / 9) ** 3)
    assert f.p_values[1] == pytest.approx(1 - (7 / 9) ** 3)
    assert all(f.p_values[c] == pytest.approx(1.0) for c in range(2, 6))
    # Rates 1, 1/3 and four 0s: median 0, MAD 0, so both 0 and 1 stand out; only 0 is
    # significant, and only at a level where 0.011 < level / 6.
    assert f.rate_outlier(0) and f.rate_outlier(1) and not f.rate_outlier(2)
    assert f.threshold == pytest.approx(0.05 / 6) and f.clients == ()  # 0.011 > 0.0083
    assert federated.flagged_clients(records, 0.2).clients == (0,)  # 0.011 < 0.033
    with pytest.raises(FedsecError, match="no verdicts"):
        federated.flagged_clients([RoundRecord(1, clients=[0, 1])])


def quota_rounds(num_rounds, *, num_clients=10, per_round=10, rejects=7, always=(), seed=0):
    """A run's verdicts under a defense that rejects ``rejects`` of the ``per_round``
    sampled clients every round, at random, except clients in ``always``, rejected in
    every round they join (the rest of the quota falls on the others at random)."""
    gen = np.random.default_rng(seed)
    records = []
    for r in range(1, num_rounds + 1):
        sampled = sorted(int(c) for c in gen.choice(num_clients, per_round, replace=False))
        forced = [c for c in sampled if c in always]
        others = [c for c in sampled if c not in always]
        rejected = set(forced) | {
            int(c) for c in gen.choice(others, rejects - len(forced), replace=False)
        }
        records.append(
            RoundRecord(
                r,
                clients=sampled,
                rejected_clients=sorted(rejected),
                accepted_clients=sorted(set(sampled) - rejected),
            )
        )
    return records


def test_flagged_clients_under_a_selection_quota():
    # Honest clients only, 7 of 10 rejected every round: a 50% share would name everyone.
    honest = federated.flagged_clients(quota_rounds(200))
    assert honest.base_rate == pytest.approx(0.7) and honest.clients == ()
    assert min(honest.p_values.values()) > honest.threshold == pytest.approx(0.005)
    # Client 4 rejected in every round it joins, the others at the quota's rate.
    one = federated.flagged_clients(quota_rounds(100, num_clients=12, always=(4,)))
    assert one.clients == (4,) and one.rejected[4] == one.judged[4] > 50
    assert federated.flagged_forget_set(one, 12) == "4"


def test_flagged_forget_set_refuses_nobody_and_a_majority():
    def flagging(p_values, rejected=None):
        ids = range(len(p_values))
        return federated.Flagging(
            level=0.05,
            rejected_total=5,
            judged_total=10,
            rejected=dict(zip(ids, rejected or [1] * len(ids), strict=True)),
            judged=dict.fromkeys(ids, 2),
            p_values=dict(zip(ids, p_values, strict=True)),
        )

    with pytest.raises(
        FedsecError,
        match=r"flags no client: the smallest p-value, client 1's "
        r"\(rejected in 1 of 2 rounds vs base rate 0.500, p = 0.03\), "
        r"is not below 0.05 / 2 clients = 0.025",
    ):
        federated.flagged_forget_set(flagging([0.5, 0.03]), 2)
    with pytest.raises(
        FedsecError, match="is significant, but its rejection rate does not stand out"
    ):
        federated.flagged_forget_set(flagging([0.001] * 4), 4)  # all alike: nobody stands out
    # Flagged clients are outliers among the judged clients' rates, so they are a
    # minority of those; a majority of the federation needs clients that never took
    # part (here 14 judged "clients" stand for that, against a federation of 10).
    five = flagging([0.001] * 5 + [1.0] * 9, rejected=[2] * 5 + [0] * 9)  # half: allowed
    assert federated.flagged_forget_set(five, 10) == "0,1,2,3,4"
    six = flagging([0.001] * 6 + [1.0] * 8, rejected=[2] * 6 + [0] * 8)
    with pytest.raises(
        FedsecError,
        match="--flagged names 6 of 10 clients, more than half of the "
        "federation; pass --allow-majority to forget them anyway",
    ):
        federated.flagged_forget_set(six, 10)
    assert federated.flagged_forget_set(six, 10, allow_majority=True) == "0,1,2,3,4,5"


FLAG_RUN = SMALL.format(rounds=20, per_round=10) + "checkpoint_every = 0\n"


def test_flagged_on_real_runs_names_nobody_honest_and_the_rejected_attacker(tmp_path, capsys):
    # Multi-metrics, honest clients only: it rejects 7 of 10 a round by design, and
    # some atypical honest clients in every round; nobody stands out.
    honest = tmp_path / "honest.toml"
    honest.write_text(FLAG_RUN + '[defense]\nname = "multi-metrics"\n')
    assert main(["run", str(honest), "--out", str(tmp_path / "honest")]) == 0
    capsys.readouterr()
    assert main(["unlearn", str(tmp_path / "honest"), "--flagged", "--method", "none"]) == 2
    assert "--flagged flags no client" in capsys.readouterr().err
    # Multi-Krum against a Gaussian-noise attacker in every round: rejected every time.
    attacked = tmp_path / "attacked.toml"
    attacked.write_text(
        FLAG_RUN + '[defense]\nname = "multi-krum"\n'
        '[attack]\nname = "gaussian"\nschedule = "every-round"\n'
    )
    assert main(["run", str(attacked), "--out", str(tmp_path / "attacked")]) == 0
    rounds = read_rounds(tmp_path / "attacked" / "metrics.jsonl")
    attacker = rounds[0].malicious_clients
    assert all(r.rejected_clients == attacker for r in rounds)
    assert federated.flagged_clients(rounds).clients == tuple(attacker)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with an (untrained) model and a defense's verdicts."""
    from fedsec.task import get_task

    config = tiny_config()
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text(config.to_toml())
    torch.save(get_task(config).new_model().state_dict(), out / "model.pt")
    rounds = [
        {
            "round": r,
            "clients": [0, 1, 2, 3, 4],
            "accepted_clients": [0, 1, 2, 4] if r < 3 else [0, 1, 2, 3, 4],
            "rejected_clients": [3] if r < 3 else [],
        }
        for r in (1, 2, 3)
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    return out


def write_run_dir(out, config, rounds):
    """A run directory: ``config``, an (untrained) model and ``rounds`` (RoundRecords) as
    metrics.jsonl."""
    from fedsec.task import get_task

    out.mkdir()
    (out / "config.toml").write_text(config.to_toml())
    torch.save(get_task(config).new_model().state_dict(), out / "model.pt")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rounds))
    return out


TEN = {"data__num_clients": 10, "train__clients_per_round": 10}


def test_unlearn_flagged_forgets_exactly_the_flagged_client(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", tiny_config(**TEN), quota_rounds(60, always=(6,)))
    assert main(["unlearn", str(run), "--flagged", "--method", "none"]) == 0
    info = json.loads((run / "unlearning" / "none-clients-6" / "metrics.json").read_text())
    assert info["clients"] == [6] and info["before"] == info["after"]
    out = capsys.readouterr().out
    assert "fedsec: --flagged: base rejection rate p0 = 420/600 = 0.700;" in out
    assert "fedsec: flagged client 6: rejected in 60 of 60 rounds vs base rate 0.700, p = " in out


def test_unlearn_flagged_refusals_come_before_any_training(run_dir, tmp_path, capsys):
    honest = write_run_dir(tmp_path / "honest", tiny_config(**TEN), quota_rounds(200))
    _one_line_error(
        capsys,
        ["unlearn", str(honest), "--flagged"],
        "--flagged flags no client: the smallest p-value, client ",
    )
    # the fixture's client 3: rejected in 2 of 3 rounds, p0 = 2/15, p = 0.0486 > 0.05 / 5
    _one_line_error(
        capsys,
        ["unlearn", str(run_dir), "--flagged"],
        "client 3's (rejected in 2 of 3 rounds vs base rate 0.133, p = 0.0486), "
        "is not below 0.05 / 5 clients = 0.01; nothing to forget",
    )
    # Client 4 rejected in every round, the others at the quota's rate, at random.
    one = write_run_dir(tmp_path / "one", tiny_config(**TEN), quota_rounds(100, always=(4,)))
    for level in ("0", "1", "1.5", "-0.1"):
        _one_line_error(
            capsys,
            ["unlearn", str(one), "--flagged", "--flag-level", level],
            f"--flag-level must be in (0, 1), got {float(level)}",
        )
    _one_line_error(
        capsys,
        ["unlearn", str(one), "--clients", "1", "--flag-level", "0.1"],
        "--flag-level and --allow-majority apply only with --flagged",
    )
    for run in (honest, run_dir, one):
        assert not (run / "unlearning").exists()  # no datamodel built, nothing trained
    assert main(["unlearn", str(one), "--flagged", "--method", "none"]) == 0
    assert "fedsec: flagged client 4: rejected in 100 of 100 rounds" in capsys.readouterr().out
    info = json.loads((one / "unlearning" / "none-clients-4" / "metrics.json").read_text())
    assert info["clients"] == [4]


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsec: error:") and "\n" not in err and match in err, err


def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys):
    r = str(run_dir)
    _one_line_error(capsys, ["unlearn", r, "--clients", "9"], "unknown client id 9")
    _one_line_error(capsys, ["unlearn", r, "--clients", ""], "forget set is empty")
    _one_line_error(capsys, ["unlearn", r, "--clients", "0,1,2,3,4"], "every client")
    _one_line_error(capsys, ["unlearn", r, "--clients", "x"], "not a client id")
    empty = tmp_path / "nomodel"
    empty.mkdir()
    (empty / "config.toml").write_text(tiny_config().to_toml())
    _one_line_error(capsys, ["unlearn", str(empty), "--clients", "1"], "no model.pt")
    other = tmp_path / "other.pt"
    dm = Datamodel(B=torch.zeros(5, 2, 10), b=torch.zeros(2, 10), lam=1.0)
    DatamodelArtifact(dm, "x", config_hash(tiny_config(seed=4)), 0.9, 10, "client", 0.0, 0.0).save(
        other
    )
    _one_line_error(
        capsys, ["unlearn", r, "--clients", "1", "--datamodel", str(other)], "another config"
    )
    config = tmp_path / "c.toml"
    config.write_text(tiny_config().to_toml())
    _one_line_error(
        capsys,
        ["unlearn-eval", str(config), "--clients", "7", "--out", str(tmp_path / "e")],
        "unknown client id 7",
    )
    _one_line_error(
        capsys,
        [
            "unlearn-eval",
            str(config),
            "--clients",
            "1",
            "--out",
            str(tmp_path / "e"),
            "--methods",
            "dmm,magic",
        ],
        "unknown --method 'magic'; valid: none, retrain, dmm, om, finetune, gradient-ascent",
    )
    _one_line_error(
        capsys,
        [
            "unlearn-eval",
            str(config),
            "--clients",
            "1",
            "--out",
            str(tmp_path / "e"),
            "--methods",
            "none,gradient-ascent",
            "--no-forget-data",
        ],
        "gradient-ascent needs the forget clients' data",
    )
    assert not (tmp_path / "e" / "models").exists()  # refused before any training


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "-1"], "--lr must be > 0, got -1.0"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--reference-size", "-1"], "--reference-size must be >= 0, got -1"),
        (["--om-oracles", "0"], "--om-oracles must be >= 1, got 0"),
        (["--subsets", "2"], "--subsets must be >= 3, got 2"),
        (["--q", "1.5"], "--q must be in (0, 1], got 1.5"),
        (["--q", "0"], "--q must be in (0, 1], got 0.0"),
        (["--workers", "0"], "--workers must be >= 1, got 0"),
    ],
)
def test_unlearn_values_are_judged_before_anything_runs(run_dir, capsys, flags, message):
    """Each value of a request has one declared constraint (fedsec.unlearning.settings),
    judged before anything is loaded or trained, whatever the method uses."""
    argv = ["unlearn", str(run_dir), "--clients", "1", "--method", "none", *flags]
    _one_line_error(capsys, argv, f"fedsec: error: {message}")
    assert not (run_dir / "unlearning").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--clients", "auto:x"], "--clients auto:K must be an integer >= 1, got a string 'x'"),
        (["--clients", "auto:0"], "--clients auto:K must be >= 1, got 0"),
        (["--clients", "auto:5"], "--clients auto:5 would forget every client of 5"),
        (["--clients", "1", "--models", "1"], "--models must be >= 2, got 1"),
        (["--clients", "1", "--lr", "0"], "--lr must be > 0, got 0.0"),
    ],
)
def test_unlearn_eval_values_are_judged_before_anything_runs(tmp_path, capsys, flags, message):
    config = tmp_path / "c.toml"
    config.write_text(tiny_config().to_toml())
    argv = ["unlearn-eval", str(config), "--out", str(tmp_path / "e"), "--methods", "none"]
    _one_line_error(capsys, [*argv, *flags], f"fedsec: error: {message}")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "matching.epochs must be >= 1, got 0"),
        ({"epochs": 2.5}, "matching.epochs must be an integer >= 1, got a number 2.5"),
        ({"lr": 0.0}, "matching.lr must be > 0, got 0.0"),
        ({"lr": math.inf}, "matching.lr must be a finite number, got inf"),
        ({"lr_decay": 1.5}, "matching.lr_decay must be in (0, 1], got 1.5"),
        ({"batch_size": 0}, "matching.batch_size must be >= 1, got 0"),
        ({"holdout": 1.0}, "matching.holdout must be in (0, 1), got 1.0"),
        ({"holdout": 0.0}, "matching.holdout must be in (0, 1), got 0.0"),
        ({"check_every": 0}, "matching.check_every must be >= 1, got 0"),
        ({"patience": 0}, "matching.patience must be >= 1, got 0"),
        ({"min_delta": -0.1}, "matching.min_delta must be in [0, 1), got -0.1"),
        ({"min_delta": 1.0}, "matching.min_delta must be in [0, 1), got 1.0"),
        ({"max_steps": 0}, "matching.max_steps must be >= 1, got 0"),
        ({"max_steps": True}, "matching.max_steps must be an integer >= 1, got a boolean True"),
    ],
)
def test_matching_settings_have_declared_constraints(values, message):
    """MatchingConfig was never checked: check_every = 0 divided by zero mid-fine-tuning,
    holdout = 1 held out every example. Its values now fail with one line, before any
    training (unlearn_run judges them first), named as the commands name them."""
    with pytest.raises(ConfigError) as info:
        MatchingConfig(**values).validate()
    assert str(info.value) == message
    defaults = MatchingConfig().validate()
    assert defaults.lr == 2e-3 and defaults.epochs is None  # the defaults are valid


def test_unlearn_run_refuses_bad_matching_settings_before_anything_runs(run_dir):
    bad = federated.UnlearnSettings(matching=MatchingConfig(check_every=0))
    with pytest.raises(ConfigError, match=r"^matching.check_every must be >= 1, got 0$"):
        federated.unlearn_run(run_dir, method="none", clients="1", settings=bad)
    negative = federated.UnlearnSettings(matching=MatchingConfig(lr=-1.0))
    with pytest.raises(ConfigError, match=r"^--lr must be > 0, got -1.0$"):
        federated.unlearn_run(run_dir, method="none", clients="1", settings=negative)
    assert not (run_dir / "unlearning").exists()


# ------------------------------------------------------------------ the KLoM protocol
def test_klom_protocol_orders_the_methods(tmp_path, monkeypatch):
    """Tiny federation, small N: DMM and OM move the forget margins towards the oracles'.

    With N = 10 the 95th percentile saturates (10 samples in 20 bins), so the ordering is
    asserted on the mean per-example KLoM of the forget clients' examples.
    """
    from fedsec.unlearning.evaluation import klom_evaluation

    settings = federated.UnlearnSettings(matching=MatchingConfig(epochs=20, lr=2e-3))

    def evaluate():
        return klom_evaluation(
            tiny_config(),
            "auto",
            tmp_path,
            n_models=10,
            methods=("none", "dmm", "om"),
            num_models=30,
            workers=1,
            settings=settings,
            om_oracles=4,
            progress=False,
            log=lambda s: None,
        )

    report = evaluate()
    m = report["methods"]
    assert len(report["forget_clients"]) == 1
    print({k: round(v["forget_mean"], 3) for k, v in m.items()})
    assert m["om"]["forget_mean"] < m["dmm"]["forget_mean"] < m["none"]["forget_mean"]
    # cost in example-gradients: DMM's 20 epochs over its matching set; OM's matching
    # plus its 4 oracles' trainings; doing nothing computes none
    assert m["dmm"]["examples_per_request"] % 20 == 0 and m["none"]["examples_per_request"] == 0
    assert m["om"]["examples_per_request"] > m["dmm"]["examples_per_request"] > 0
    for name in ("klom.json", "klom.md", "klom.png", "datamodel.pt"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "klom.json").read_text())["methods"].keys() == {
        "none",
        "dmm",
        "om",
    }
    # every request's unlearned model is kept: a rerun (an evaluation stopped part-way)
    # unlearns nothing again and reports the same numbers, time included
    assert len(list((tmp_path / "unlearned").glob("*.pt"))) == 3 * 10

    def unlearn_again(*args, **kwargs):
        raise AssertionError("a kept request was unlearned again")

    from fedsec.unlearning import evaluation

    monkeypatch.setattr(evaluation, "unlearn_state", unlearn_again)
    again = evaluate()
    assert again["methods"] == report["methods"]
    # other settings, another forget set or another seed are another request
    state = {"w": torch.ones(3)}
    other = federated.UnlearnSettings(matching=MatchingConfig(lr=1e-3))
    one = evaluation.request_hash("dmm", state, (1,), 5, settings)
    assert one == evaluation.request_hash("dmm", {"w": torch.ones(3)}, (1,), 5, settings)
    changes = [
        ("dmm", state, (1,), 5, other),
        ("dmm", state, (2,), 5, settings),
        ("dmm", state, (1,), 6, settings),
        ("om", state, (1,), 5, settings),
        ("dmm", {"w": torch.zeros(3)}, (1,), 5, settings),
    ]
    for changed in changes:
        assert evaluation.request_hash(*changed) != one
    # only what a method matches names its request: the datamodel for DMM, the oracles for OM
    B, target = torch.ones(2, 2), torch.zeros(2, 2)
    dmm = evaluation.request_hash("dmm", state, (1,), 5, settings, datamodel_B=B)
    assert dmm != one and dmm == evaluation.request_hash(
        "dmm", state, (1,), 5, settings, datamodel_B=B, om_target=target
    )
    assert dmm != evaluation.request_hash("dmm", state, (1,), 5, settings, datamodel_B=2 * B)
    om = evaluation.request_hash("om", state, (1,), 5, settings, om_target=target)
    assert om == evaluation.request_hash(
        "om", state, (1,), 5, settings, datamodel_B=B, om_target=target
    )
    assert om != evaluation.request_hash("om", state, (1,), 5, settings, om_target=target + 1)


def test_gap_intervals_known_answers_and_an_independent_recomputation():
    from fedsec.unlearning.evaluation import gap_intervals
    from fedsec.unlearning.klom import klom, percentile

    gen = torch.Generator().manual_seed(0)
    oracle = torch.randn(12, 40, generator=gen)
    none = 3.0 + torch.randn(12, 40, generator=gen)  # far from the oracles
    retrain = torch.randn(12, 40, generator=gen)  # another draw of the oracles' law
    half = retrain + 0.5  # nearer the oracles than none
    margins_ = {"none": none, "retrain": retrain, "copy-of-retrain": retrain.clone(), "half": half}
    out = gap_intervals(margins_, oracle, seed=5, resamples=50)
    # a method identical to retrain closes the whole gap in every resample; none closes 0
    assert out["copy-of-retrain"]["gap_closed"] == [1.0, 1.0]
    assert out["none"]["gap_closed"] == [0.0, 0.0]
    assert out["half"]["gap_resamples"] == 50
    lo, hi = out["half"]["gap_closed"]
    assert 0.0 < lo < hi  # closer than none, within noise of retrain
    # the same draws by hand: rows for the requests, then the oracles, per resample
    draw = torch.Generator().manual_seed(5)
    shares, kloms = [], []
    for _ in range(50):
        rows = torch.randint(12, (12,), generator=draw)
        orc = oracle[torch.randint(12, (12,), generator=draw)]
        p = {m: percentile(klom(v[rows], orc)) for m, v in margins_.items()}
        kloms.append(p["half"])
        shares.append((p["none"] - p["half"]) / (p["none"] - p["retrain"]))
    assert out["half"]["gap_closed"] == pytest.approx(np.percentile(shares, [2.5, 97.5]).tolist())
    assert out["half"]["gap_closed_median"] == pytest.approx(np.median(shares))
    assert out["half"]["forget_resampled_median"] == pytest.approx(np.median(kloms))
    # without none and retrain there is no gap to share
    alone = gap_intervals({"half": half}, oracle, seed=5, resamples=5)["half"]
    assert set(alone) == {"forget_resampled_median"}
