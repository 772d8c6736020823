"""The hooks end to end: an attack with a server-side stage and a rule with a
post-training step, both added from tests/ alone (``tests/hook_plugins.py``), run on the
in-process engine and on Flower's simulation engine (Ray), with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from attacks import ATTACKS
from defenses import DEFENSES, build_rule
from defenses.rules import RULES
from fedsec.config import ExperimentConfig, load_config, read_toml
from fedsec.engines.flower import run_flower
from fedsec.engines.processes import marked_pids
from fedsec.results import read_metrics
from fedsec.task import get_task
from fedsec_core.errors import ConfigError
from tests import runs

#: 4 digits clients, 3 a round, 2 rounds; the one attacker acts from round 2 only.
RUN = [
    *runs.tiny_digits(rounds=2, seed=5, clients=4),
    "attack.name=test-constant-stage",
    "attack.start_round=2",
    "defense.name=test-final-step",
]


@pytest.fixture
def plugins(monkeypatch):
    """The test plug-ins registered for this test only (the registries are restored
    after it, so no other test sees them)."""
    for registry in (ATTACKS, RULES, DEFENSES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    from tests import hook_plugins

    hook_plugins.register()
    return hook_plugins


def check_known_answers(out: Path) -> list[dict]:
    rounds = read_metrics(out / "metrics.jsonl")
    first, last = rounds
    assert [r["failed_clients"] for r in rounds] == [[], []]  # every process knew them
    # round 1 has no attacker: the stage does not run, the clients' models are averaged
    assert first["malicious_clients"] == [] and "test_stage_rounds" not in first
    assert "crafted_clients" not in first and "test_final_step" not in first
    # round 2: the stage told the attacker it had acted in 0 rounds, took its echo out
    # (the defense accepted all 3 plain replies) and made every reply the constant 0.25
    attacker = last["malicious_clients"]
    assert len(attacker) == 1 and last["crafted_clients"] == attacker
    assert last["test_stage_rounds"] == 1
    assert last["test_stage_echoes"] == {str(attacker[0]): 0.0}
    assert len(last["accepted_clients"]) == 3 and not last.get("invalid_clients")
    # FedAvg of three equal models is that model: every float entry 0.25, so every
    # logit is the same, the prediction is class 0 and the loss ln(10)
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.all(v == 0.25) for v in state.values() if v.is_floating_point())
    _, y = get_task(load_config(None, RUN)).test_data()
    assert last["main_accuracy"] == pytest.approx(float((y == 0).double().mean()), abs=1e-12)
    assert last["test_loss"] == pytest.approx(math.log(10), rel=1e-6)
    # the rule's post-training step ran once, on the final model, with the run's facts
    size = sum(v.numel() for v in state.values() if v.is_floating_point())
    assert last["test_final_step"] == {
        "mean": 0.25,
        "size": size,
        "rounds": 2,
        "attack_rounds": [2],
    }
    return rounds


def test_a_plugin_stage_and_post_training_step_run_in_process(plugins, tmp_path):
    runs.run_cli(tmp_path / "run", RUN)
    check_known_answers(tmp_path / "run")


@pytest.mark.slow
def test_a_plugin_stage_and_post_training_step_run_on_flower(plugins, tmp_path):
    """On Flower's engine the ServerApp and the Ray workers import the apps by module:
    the test names this folder's, which register the plug-ins first."""
    out = tmp_path / "flower"
    run_flower(
        load_config(None, [*RUN, "engine.name=flower"]),
        out,
        progress=lambda _: None,
        clientapp="tests.hook_plugins:clientapp",
        serverapp="tests.hook_plugins:serverapp",
    )
    assert marked_pids(str(out / ".flwr")) == []
    check_known_answers(out)


# ------------------------------------------------- root_size, a core key become FLTrust's
def test_root_size_is_fltrusts_parameter_and_old_config_files_still_read(tmp_path):
    old = tmp_path / "config.toml"  # as every run directory before it held one
    old.write_text('[defense]\nname = "krum"\nroot_size = 100\n')
    assert ExperimentConfig.from_dict(read_toml(old)) == load_config(None, ["defense.name=krum"])
    for name in ("fltrust", "krum"):  # the former default: FLTrust's default, else no key
        read = load_config(None, [f"defense.name={name}", "defense.root_size=100"])
        assert read.defense.params == {} and "defense.root_size" not in read.to_flat()
    fltrust = load_config(None, ["defense.name=fltrust", "defense.root_size=30"])
    assert fltrust.to_flat()["defense.root_size"] == 30
    assert build_rule("fltrust", fltrust.defense.params).root_set_size() == 30
    assert build_rule("fltrust", {}).root_set_size() == 100
    with pytest.raises(ConfigError) as err:
        load_config(None, ["defense.name=krum", "defense.root_size=30"])
    assert str(err.value) == (
        "defense.root_size = 30 is a parameter of fltrust only, and defense 'krum' has no "
        "use for it: remove the key, or set it with defense.name = 'fltrust'"
    )
    with pytest.raises(ConfigError, match="'root_size' must be an int >= 1"):
        load_config(None, ["defense.name=fltrust", "defense.root_size=0"])
