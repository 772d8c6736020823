"""Experiment config: loading, overrides, round trips and one-line errors."""

from __future__ import annotations

import tomllib

import pytest

from fedsec.cli import DEFAULT_EXPERIMENT, main
from fedsec.config import ExperimentConfig, load_config
from fedsec_core.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_file_overrides_only_what_it_names(tmp_path):
    cfg = load_config(write(tmp_path, 'seed = 3\n[data]\nname = "digits"\nalpha = 1\n'))
    assert cfg.seed == 3
    assert cfg.data.name == "digits"
    assert cfg.data.alpha == 1.0 and isinstance(cfg.data.alpha, float)
    assert cfg.data.num_clients == ExperimentConfig().data.num_clients


def test_set_overrides_parse_toml_values_and_bare_words():
    cfg = load_config(
        None, ["data.name=digits", "data.alpha=0.2", "train.rounds=3", "model.name=mlp", "seed=7"]
    )
    assert (cfg.data.name, cfg.data.alpha, cfg.train.rounds, cfg.seed) == ("digits", 0.2, 3, 7)


def test_flat_and_toml_round_trips_keep_every_value():
    cfg = load_config(None, ["data.name=digits", "model.name=mlp", "defense.name=fedavg"])
    assert ExperimentConfig.from_flat(cfg.to_flat()) == cfg
    assert ExperimentConfig.from_dict(tomllib.loads(cfg.to_toml())) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.name=cifar100"], "unknown data.name 'cifar100'; valid: "),
        (["model.name=gpt"], "unknown model.name 'gpt'; valid: "),
        (
            ["engine.name=spark"],
            "unknown engine.name 'spark'; valid: inprocess, flower, deployment",
        ),
        (["data.alpha=0"], "data.alpha must be > 0"),
        (["data.alpha=-1"], "data.alpha must be > 0"),
        (["train.clients_per_round=30"], "clients_per_round (30) must be <= data.num_clients (20)"),
        (["train.bogus=1"], "unknown key train.bogus; valid keys in [train]:"),
        (["bogus.key=1"], "unknown section 'bogus'"),
        (["train.rounds=ten"], "train.rounds must be an integer, got a string 'ten'"),
        (["train.rounds=2.5"], "train.rounds must be an integer"),
        (["train.lr=true"], "train.lr must be a number"),
        (["train.max_steps=-1"], "train.max_steps must be >= 0, got -1"),
        (["data.name=cifar10", "data.dir=/nonexistent/cifar"], "/nonexistent/cifar"),
    ],
)
def test_bad_values_raise_one_line_config_errors(overrides, message):
    with pytest.raises(Exception) as info:
        load_config(None, overrides)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_unknown_top_level_key_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'epochs'"):
        load_config(write(tmp_path, "epochs = 3\n"))
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(write(tmp_path, "[data\nname = 1\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--set", "data.name=nope"], "unknown data.name 'nope'"),
        (["run", "--set", "data.alpha=0"], "data.alpha must be > 0"),
        (["run", "--set", "train.clients_per_round=99"], "must be <= data.num_clients"),
        (["run", "--set", "defense.name=nope"], "nope"),
        (["run", "no/such/file.toml"], "config file not found"),
        (["run", "--bogus"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line_and_no_run_dir(
    argv, fragment, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsec: error: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_builtin_default_experiment_is_valid():
    cfg = load_config(DEFAULT_EXPERIMENT)
    assert (cfg.data.name, cfg.model.name, cfg.data.partition) == ("mnist5k", "lenet", "dirichlet")
    assert cfg.data.num_clients == 20 and cfg.data.alpha == 0.5
