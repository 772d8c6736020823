"""Attack configs: one-line errors before any training, and one end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pytest

from attacks import ATTACKS, attack_names, build_attack
from fedsec.cli import DEFAULT_EXPERIMENT, main
from fedsec.config import load_config
from fedsec.results import read_metrics
from fedsec_core.errors import ConfigError
from fedsec_core.sampling import AttackSchedule
from tests.runs import tiny_digits

DIGITS = tiny_digits(rounds=4, seed=4)


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            ["attack.name=backdoorz"],
            "unknown attack.name 'backdoorz'; valid: none, a3fl, alie, dba, edge-case",
        ),
        (
            [*DIGITS, "attack.name=label-flip", "attack.num_attackers=7"],
            "attack.num_attackers must be between 1 and data.num_clients (6)",
        ),
        (
            [*DIGITS, "attack.name=pgd", "attack.eps=0"],
            "attack.eps must be > 0 (the PGD radius), got 0",
        ),
        (
            [*DIGITS, "attack.name=edge-case-pgd", "attack.eps=-1.5"],
            "attack.eps must be > 0 (the PGD radius), got -1.5",
        ),
        (
            [*DIGITS, "attack.name=label-flip", "attack.target_label=10"],
            "attack.target_label must be a class of digits (0..9), got 10",
        ),
        (
            [*DIGITS, "attack.name=pixel-replacement", "attack.target_label=-3"],
            "attack.target_label must be a class of digits (0..9), got -3",
        ),
        (
            [*DIGITS, "attack.name=edge-case", "attack.edge_case=southwest"],
            "attack.edge_case 'southwest' (32x32 RGB plane photos) does not fit data set 'digits'",
        ),
        (
            [*DIGITS, "attack.name=edge-case-pgd", "attack.edge_case=ardis"],
            "attack.edge_case 'ardis' (28x28 handwritten digits) does not fit data set 'digits'",
        ),
        (
            ["attack.name=edge-case-pgd"],
            "edge_case 'ardis' needs attack.edge_case_dir: the folder holding ardis_iv.npz",
        ),
        (
            ["attack.name=edge-case", "attack.edge_case_dir=/nonexistent/edge"],
            "attack.edge_case_dir: ardis: data directory not found: /nonexistent/edge; "
            "the folder must hold ardis_iv.npz",
        ),
        (
            [*DIGITS, "attack.name=edge-case", "attack.edge_case=plane"],
            "attack.edge_case must be one of auto, ardis, southwest, tail, got 'plane'",
        ),
        (
            [*DIGITS, "attack.name=label-flip", "attack.source_label=1"],
            "attack.source_label and the target label are both 1",
        ),
        (
            [*DIGITS, "attack.name=dba", "attack.poison_fraction=1.5"],
            "attack.poison_fraction must be in (0, 1] (the share of its examples, or of every "
            "batch, it poisons), got 1.5",
        ),
        (
            [*DIGITS, "attack.name=neurotoxin", "attack.mask_fraction=1.0"],
            "attack.mask_fraction must be in [0, 1), got 1.0",
        ),
        (
            [*DIGITS, "attack.name=gaussian", "attack.sigma=0"],
            "attack.sigma must be > 0 (the noise's standard deviation), got 0",
        ),
        (
            [*DIGITS, "attack.name=gaussian", "attack.target_label=3"],
            "attack 'gaussian' is untargeted; remove attack.target_label",
        ),
        (
            [*DIGITS, "attack.name=pgd", "attack.radius=2"],
            "unknown key attack.radius for attack 'pgd'; its parameters: blend, eps, eps_decay",
        ),
        (
            [*DIGITS, "attack.name=pgd", "attack.eps=big"],
            "attack.eps must be > 0 (the PGD radius), got 'big'",
        ),
    ],
)
def test_bad_attack_configs_fail_in_load_config_with_one_line(overrides, expected):
    assert expected in config_error(*overrides)


def test_ardis_with_cifar10_is_rejected_without_reading_cifar():
    from fedsec.config import ExperimentConfig

    config = ExperimentConfig.from_dict(
        {"data": {"name": "cifar10"}, "attack": {"name": "edge-case", "edge_case": "ardis"}}
    )
    with pytest.raises(ConfigError, match="'ardis' .* does not fit data set 'cifar10'"):
        build_attack(config)


def test_missing_edge_case_files_name_the_folder_and_the_files(tmp_path):
    message = config_error("attack.name=edge-case", f"attack.edge_case_dir={tmp_path}")
    assert (
        str(tmp_path) in message and "ardis_iv.npz" in message and "ARDIS_train_2828.csv" in message
    )


def test_checks_that_need_the_data_run_before_training(tmp_path, capsys):
    overrides = [*DIGITS, "attack.name=pixel-replacement"]  # the default trigger is too big for 8x8
    config = load_config(None, overrides)
    from fedsec_core.data import load_dataset

    with pytest.raises(ConfigError, match="needs 4x10 px but digits images are 8x8"):
        build_attack(config, load_dataset("digits"))
    argv = ["run", str(DEFAULT_EXPERIMENT), "--out", str(tmp_path / "run")]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs 4x10 px" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_every_attack_has_defaults_that_validate_somewhere():
    assert attack_names() == ["none", *sorted(ATTACKS)]
    assert set(ATTACKS) == {
        "edge-case",
        "edge-case-pgd",
        "edge-case-pgd-replacement",
        "pixel-replacement",
        "pgd",
        "dba",
        "neurotoxin",
        "a3fl",
        "label-flip",
        "gaussian",
        "sign-flip",
        "alie",
        "ipm",
        "min-max",
        "min-sum",
    }
    for name in ATTACKS:
        extra = (
            ["attack.trigger_size=2", "attack.trigger_gap=1"]
            if name in ("pixel-replacement", "pgd", "dba", "neurotoxin", "a3fl")
            # a standard deviation over the attackers' own updates needs two of them
            else [
                "attack.num_attackers=2",
                "attack.attackers_per_round=2",
                "train.clients_per_round=4",
            ]
            if name in ("alie", "min-max", "min-sum")
            else []
        )
        assert build_attack(load_config(None, [*DIGITS, f"attack.name={name}", *extra])) is not None


def test_ardis_config_with_the_shared_folder_is_valid(edge_case_dir):
    cfg = load_config(
        None, ["attack.name=edge-case-pgd-replacement", f"attack.edge_case_dir={edge_case_dir}"]
    )
    attack = build_attack(cfg)
    assert attack.source == "ardis" and attack.target == 1 and attack.counts() == (66, 100, 0)


def test_end_to_end_run_records_backdoor_accuracy_and_the_scheduled_attackers(tmp_path):
    overrides = [
        *DIGITS,
        "attack.name=pixel-replacement",
        "attack.trigger_size=2",
        "attack.trigger_gap=1",
        "attack.num_attackers=2",
        "attack.every=2",
        "attack.start_round=2",
    ]
    argv = ["run", str(DEFAULT_EXPERIMENT), "--out", str(tmp_path / "run")]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    rounds = read_metrics(tmp_path / "run" / "metrics.jsonl")
    config = load_config(None, overrides)
    schedule = AttackSchedule(config.attack, 6, 3, 4, config.seed)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for r in rounds:
        assert 0.0 <= r["backdoor_accuracy"] <= 1.0
        assert r["malicious_clients"] == schedule.sample(r["round"])[1]
        assert r["clients"] == schedule.sample(r["round"])[0]
    assert [len(r["malicious_clients"]) for r in rounds] == [0, 1, 0, 1]
    assert rounds[1]["malicious_clients"] != rounds[3]["malicious_clients"]  # the pool takes turns


@pytest.mark.parametrize("name,every", [("ec-pgd-k1.toml", 1), ("ec-pgd-k10.toml", 10)])
def test_edge_case_pgd_experiment_configs_are_valid(name, every, edge_case_dir):
    path = Path(__file__).resolve().parents[1] / "experiments" / "edge-case-pgd" / name
    cfg = load_config(path, [f"attack.edge_case_dir={edge_case_dir}"])
    assert cfg.attack.name == "edge-case-pgd" and cfg.attack.every == every
    assert cfg.attack.params["edge_case_dir"] == str(edge_case_dir)
    assert (
        cfg.data.name == "mnist5k"
        and cfg.data.num_clients >= 20
        and cfg.train.pretrain_epochs == 10
    )


def test_runs_that_measure_the_same_backdoor_inputs_share_a_backdoor_key():
    from attacks import backdoor_key

    edge = {"name": "edge-case-pgd", "edge_case": "ardis", "edge_case_dir": "x", "start_round": 21}
    assert backdoor_key(edge) == backdoor_key(
        {"name": "edge-case", "edge_case": "ardis", "eps": 2.0}
    )
    pattern = backdoor_key({"name": "pixel-replacement", "start_round": 21})
    # DBA, PGD and model replacement all measure BA on the full default trigger -> 2.
    assert (
        pattern
        == backdoor_key({"name": "dba", "num_attackers": 4})
        == backdoor_key({"name": "pgd"})
    )
    assert pattern != backdoor_key({"name": "pgd", "trigger_size": 2})
    assert pattern != backdoor_key({"name": "dba", "target_label": 3})
    assert backdoor_key(edge) != pattern
    assert backdoor_key({"name": "sign-flip"}) is None
    assert backdoor_key({"name": "none"}) is None


def test_attacks_and_rules_declare_parameters_one_way():
    # Every attack parameter and every rule parameter is a typed field made with
    # fedsec_core.params.param: the declaration gives the check and the message.
    from dataclasses import fields

    import defenses.rules as rules
    from fedsec_core.params import parameter_fields

    for cls in ATTACKS.values():
        declared = {f.name for f in parameter_fields(cls)}
        assert declared == set(cls.parameters()) and declared, cls
        assert all(f.metadata["expect"] for f in parameter_fields(cls))
    for name in rules.__all__:
        rule = getattr(rules, name)
        if isinstance(rule, type) and issubclass(rule, rules.AggregationRule) and rule.name:
            init = {f.name for f in fields(rule) if f.init}
            assert init == {f.name for f in parameter_fields(rule)}, rule
    attack = ATTACKS["dba"](trigger_size=True)  # a bool is not an int
    with pytest.raises(
        ConfigError, match=r"^attack.trigger_size must be >= 1 \(pixels\), got True$"
    ):
        attack.validate()
