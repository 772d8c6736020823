"""Central pre-training: the initial model is trained once, then read from the cache."""

import pytest
import torch

import fedsec.pretrain as pretrain
from fedsec.config import load_config
from fedsec.task import get_task
from fedsec_core.training import evaluate


def config(tmp_path, *extra):
    return load_config(
        None,
        [
            "data.name=digits",
            "model.name=mlp",
            "data.num_clients=4",
            "train.clients_per_round=2",
            "train.pretrain_epochs=2",
            f"train.pretrain_cache={tmp_path}",
            *extra,
        ],
    )


def test_pretraining_improves_the_model_and_is_cached(tmp_path, monkeypatch):
    task = get_task(config(tmp_path))
    state = pretrain.initial_state(task, log=lambda _: None)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and "digits-mlp-seed0-e2" in files[0].name

    model = task.new_model()
    x, y = task.test_data()
    random_acc = evaluate(model, x, y).accuracy
    model.load_state_dict(state)
    assert evaluate(model, x, y).accuracy > max(0.8, random_acc + 0.5)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model must not be trained again")

    monkeypatch.setattr(pretrain, "train", no_training)
    again = pretrain.initial_state(task, log=lambda _: None)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_cache_key_separates_seeds_and_epochs(tmp_path):
    for extra in ([], ["seed=1"], ["train.pretrain_epochs=1"]):
        pretrain.initial_state(get_task(config(tmp_path, *extra)), log=lambda _: None)
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_an_attack_that_edits_the_training_split_gets_its_own_model(tmp_path):
    """A "tail" edge case takes its examples out of the training split, so pre-training
    sees other data than without the attack: the cached model must not be shared."""
    plain = pretrain.initial_state(get_task(config(tmp_path)), log=lambda _: None)
    tail = [
        "attack.name=edge-case",
        "attack.edge_case=tail",
        "attack.num_edge_cases=5",
        "attack.num_tail_test=5",
    ]
    task = get_task(config(tmp_path, *tail))
    assert len(task.dataset.y_train) < len(get_task(config(tmp_path)).dataset.y_train)
    edited = pretrain.initial_state(task, log=lambda _: None)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert not all(torch.equal(plain[k], edited[k]) for k in plain)
    # Another attack that leaves the data alone shares the plain model.
    flip = pretrain.initial_state(
        get_task(config(tmp_path, "attack.name=label-flip")), log=lambda _: None
    )
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert all(torch.equal(plain[k], flip[k]) for k in plain)


def test_no_pretraining_gives_the_seeded_random_model(tmp_path):
    task = get_task(config(tmp_path, "train.pretrain_epochs=0"))
    a, b = pretrain.initial_state(task), task.new_model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize("name", ["partition.png", "sub/hist.png"])
def test_partition_command_writes_a_png(tmp_path, name, capsys):
    from fedsec.cli import main

    out = tmp_path / name
    assert (
        main(
            [
                "partition",
                "--set",
                "data.name=digits",
                "--set",
                "data.num_clients=5",
                "--set",
                "train.clients_per_round=2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
