"""The batched client trainer (``fedsec.batched``) against ``fedsec_core.training.train``.

Float64 without dropout: every client's weights, reported loss and step count equal the
sequential ``train`` call's (weights to 1e-10 of the update, tighter than the 1e-6
asked for; they agree to ~1e-15),
for mlp, cnn, lenet and vgg9, one client and several of unequal sizes (a last short
batch, a client smaller than one batch). With dropout: the same distribution of the
reported losses (a two-sample test on fixed seeds), and masks that differ per client.
Then chunking, the config key, and both simulation engines end to end: a round's honest
clients are one ``train.batch`` message to one node (counted where the ClientApps answer,
``tests/recording_client.py``), and Flower's engine gives the in-process engine's rounds.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn

from fedsec import batched
from fedsec.batched import model_problem, supports, train_clients, use_batched
from fedsec.config import load_config
from fedsec.models import build_model
from fedsec_core.errors import ConfigError
from fedsec_core.training import flatten_params, train
from tests import runs

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "lenet": (1, 8, 8), "vgg9": (3, 32, 32)}
HYPER = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}


def _model(name: str, dropout: bool = False, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, SHAPES[name], 10).to(dtype)
    if not dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return model


def _data(name: str, sizes: list[int], dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, *SHAPES[name], generator=g, dtype=dtype),
            torch.randint(0, 10, (n,), generator=g),
        )
        for n in sizes
    ]


def _sequential(model, data, seeds, **hyper):
    """Each client trained by ``train`` from a copy of ``model``: (weights, stats)."""
    out = []
    for (x, y), seed in zip(data, seeds, strict=True):
        copy_ = copy.deepcopy(model)
        stats = train(copy_, x, y, seed=seed, **hyper)
        out.append((flatten_params(copy_), stats))
    return out


def _flat(model: nn.Module, params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([params[name].reshape(-1) for name, _ in model.named_parameters()])


@pytest.mark.parametrize(
    ("name", "sizes", "hyper"),
    [
        ("mlp", [37], HYPER),
        ("mlp", [37, 10, 64, 3], HYPER),
        ("mlp", [20, 9], {**HYPER, "momentum": 0.0, "weight_decay": 0.0, "epochs": 3}),
        ("cnn", [37], HYPER),
        ("cnn", [37, 10, 64, 3], HYPER),
        ("lenet", [37], HYPER),
        ("lenet", [37, 10, 64, 3], HYPER),
        # vgg9 kept to a few steps on 32x32 (2 steps; 2 and 1 with short batches)
        ("vgg9", [4], {**HYPER, "batch_size": 4}),
        ("vgg9", [5, 2], {**HYPER, "batch_size": 4, "epochs": 1}),
        # train.max_steps: FedSGD's one minibatch, and a cut in the second epoch of some
        # clients (37 and 64 examples: 3 and 4 steps an epoch) but not of the others
        ("mlp", [37, 10, 64, 3], {**HYPER, "epochs": 1, "max_steps": 1}),
        ("mlp", [37, 10, 64, 3], {**HYPER, "max_steps": 5}),
        ("lenet", [37, 3], {**HYPER, "max_steps": 4}),
    ],
)
def test_matches_sequential_train_in_float64(name, sizes, hyper) -> None:
    model = _model(name)
    data = _data(name, sizes)
    seeds = [101 + 7 * i for i in range(len(sizes))]
    start = flatten_params(model)
    expected = _sequential(model, data, seeds, **hyper)
    results = train_clients(model, data, seeds=seeds, **hyper)
    assert torch.equal(flatten_params(model), start)  # the global model is left as it was
    for (w_seq, s_seq), result in zip(expected, results, strict=True):
        w = _flat(model, result.params)
        # 1e-6 is the target; float64 agrees to ~1e-15 here, and a batch weight 1 / b
        # rounded to float32 (a bug this caught) is off by ~1e-8, so the bound is 1e-10
        assert ((w - w_seq).norm() / (w_seq - start).norm()).item() < 1e-10
        # train accumulates its reported loss in float32
        assert result.stats.loss == pytest.approx(s_seq.loss, rel=1e-6)
        assert (result.stats.num_examples, result.stats.num_steps) == (
            s_seq.num_examples,
            s_seq.num_steps,
        )


def test_dropout_gives_the_same_distribution_with_masks_per_client() -> None:
    """LeNet with its dropout on: 24 clients with the same data and order seeds 0..23.

    The reported losses (the last epoch's, measured with dropout active) of the batched
    clients and of 24 sequential ``train`` calls come from one distribution: KS and
    Levene tests (fixed seeds, so the p-values are fixed: 0.45 and 0.37 here) do not
    reject. The test can see a lost dropout: the same clients batched without dropout
    are rejected by both (1e-4 and 6e-5 here; dropout spreads the losses about 4x).
    Two batched clients with the same seed (the same data order) end apart: their
    masks differ.
    """
    model = _model("lenet", dropout=True, dtype=torch.float32)
    no_dropout = _model("lenet", dropout=False, dtype=torch.float32)
    ((x, y),) = _data("lenet", [32], dtype=torch.float32)
    seeds, same = list(range(24)), [(x, y)] * 24
    seq = [s.loss for _, s in _sequential(model, same, seeds, **HYPER)]
    got = [r.stats.loss for r in train_clients(model, same, seeds=seeds, **HYPER)]
    off = [r.stats.loss for r in train_clients(no_dropout, same, seeds=seeds, **HYPER)]
    assert scipy_stats.ks_2samp(seq, got).pvalue > 0.05
    assert scipy_stats.levene(seq, got).pvalue > 0.05
    assert scipy_stats.ks_2samp(off, got).pvalue < 1e-3
    assert scipy_stats.levene(off, got).pvalue < 1e-3
    twins = train_clients(model, [(x, y)] * 2, seeds=[5, 5], **HYPER)
    assert not torch.equal(_flat(model, twins[0].params), _flat(model, twins[1].params))
    twins = train_clients(no_dropout, [(x, y)] * 2, seeds=[5, 5], **HYPER)
    assert torch.equal(_flat(model, twins[0].params), _flat(model, twins[1].params))


def test_chunks_and_out_of_memory_split_the_round(monkeypatch) -> None:
    """A chunk that runs out of memory is halved and retried; chunked results equal the
    unchunked ones (float64, no dropout: each client's math is independent)."""
    model = _model("mlp")
    data = _data("mlp", [30, 12, 50, 7, 19])
    seeds = [3, 4, 5, 6, 7]
    whole = train_clients(model, data, seeds=seeds, **HYPER)
    real = batched._train_chunk
    tried = []

    def small_memory(model, data, seeds, **kwargs):
        tried.append(len(data))
        if len(data) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, data, seeds, **kwargs)

    monkeypatch.setattr(batched, "_train_chunk", small_memory)
    split = train_clients(model, data, seeds=seeds, **HYPER)
    assert tried == [5, 3, 2, 2, 1]  # 5 and 3 fail; then chunks of 2, 2 and the last 1
    capped = train_clients(model, data, seeds=seeds, max_chunk=1, **HYPER)
    for a, b, c in zip(whole, split, capped, strict=True):
        assert torch.allclose(_flat(model, a.params), _flat(model, b.params), rtol=0, atol=1e-12)
        assert torch.allclose(_flat(model, a.params), _flat(model, c.params), rtol=0, atol=1e-12)
        assert a.stats.num_steps == b.stats.num_steps == c.stats.num_steps


def test_an_error_that_is_not_out_of_memory_is_raised(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(batched, "_train_chunk", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_clients(_model("mlp"), _data("mlp", [10, 10]), seeds=[1, 2], **HYPER)


def test_models_with_buffers_are_refused() -> None:
    assert supports(_model("lenet")) is None and model_problem("vgg9") is None
    assert "BatchNorm" in model_problem("resnet18")
    resnet = build_model("resnet18", (3, 8, 8), 10)
    with pytest.raises(ValueError, match="buffers"):
        train_clients(
            resnet,
            [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))],
            seeds=[0],
            **HYPER,
        )


def test_batch_clients_config_key() -> None:
    assert load_config(None, []).engine.batch_clients == "auto"
    for value, stored in [("true", "true"), ("false", "false"), ('"auto"', "auto")]:
        config = load_config(None, [f"engine.batch_clients={value}"])
        assert config.engine.batch_clients == stored
    with pytest.raises(ConfigError, match="valid: auto, true, false"):
        load_config(None, ["engine.batch_clients=sometimes"])
    with pytest.raises(ConfigError, match="resnet18.*BatchNorm"):
        load_config(None, ["engine.batch_clients=true", "model.name=resnet18"])
    # both simulation engines batch; the deployment engine's nodes hold only their own data
    assert load_config(None, ["engine.batch_clients=true", "engine.name=flower"])
    with pytest.raises(ConfigError, match="needs a simulation engine, 'inprocess' or 'flower'"):
        load_config(None, ["engine.batch_clients=true", "engine.name=deployment"])


def test_which_path_trains() -> None:
    """auto batches on CUDA only: on the CPU the committed results stay bit for bit."""
    cuda = torch.cuda.is_available()
    assert use_batched(load_config(None, []))[0] is False  # device cpu
    assert use_batched(load_config(None, ["engine.device=auto"]))[0] is cuda
    assert use_batched(load_config(None, ["engine.batch_clients=true"]))[0] is True
    assert (
        use_batched(load_config(None, ["engine.batch_clients=false", "engine.device=auto"]))[0]
        is False
    )
    assert use_batched(load_config(None, ["model.name=resnet18", "engine.device=auto"]))[0] is False
    flower = ["engine.name=flower"]
    assert use_batched(load_config(None, [*flower, "engine.device=auto"]))[0] is cuda
    assert use_batched(load_config(None, flower))[0] is False
    batched_flower = use_batched(load_config(None, [*flower, "engine.batch_clients=true"]))
    assert batched_flower == (
        True,
        "honest clients of a round batched on cpu, one message to one node "
        "(engine.batch_clients = true); attackers apart, each in its own ClientApp call",
    )
    deployment = ["engine.name=deployment", "engine.device=auto"]
    assert use_batched(load_config(None, deployment)) == (
        False,
        "each client on its own node (deployment engine: a node holds only its own "
        "data, so clients cannot be batched across nodes)",
    )


ATTACKED = [
    *runs.tiny_digits(rounds=2, seed=3),
    "attack.name=sign-flip",
    "attack.schedule=every-round",
]


def test_inprocess_engine_batches_honest_clients(tmp_path, capsys, monkeypatch) -> None:
    """End to end on the in-process engine, an attacker in every round: auto on the CPU
    is the sequential path bit for bit (as false); true trains the honest clients of
    each round in one batch and the attacker apart, and gives the same rounds up to
    float32 rounding."""
    import fedsec.apps.client_app as client_app

    batches = []

    def recording(model, data, **kwargs):
        batches.append(len(data))
        return train_clients(model, data, **kwargs)

    monkeypatch.setattr(client_app, "train_clients", recording)
    runs.run_cli(tmp_path / "false", [*ATTACKED, "engine.batch_clients=false"])
    assert "one client after another (engine.batch_clients = false)" in capsys.readouterr().out
    runs.run_cli(tmp_path / "auto", ATTACKED)
    assert "engine.batch_clients = auto on cpu" in capsys.readouterr().out
    runs.run_cli(tmp_path / "true", [*ATTACKED, "engine.batch_clients=true"])
    assert "honest clients of a round batched on cpu" in capsys.readouterr().out
    sequential = runs.rounds_without_time(tmp_path / "false")
    assert runs.rounds_without_time(tmp_path / "auto") == sequential
    together = runs.rounds_without_time(tmp_path / "true")
    # one batch a round, of its honest clients (3 a round, 1 of them the attacker)
    assert batches == [2, 2]
    for a, b in zip(sequential, together, strict=True):
        assert a["clients"] == b["clients"] and a["malicious_clients"] == b["malicious_clients"]
        assert b["failed_clients"] == [] and a["malicious_clients"]
        assert b["main_accuracy"] == pytest.approx(a["main_accuracy"], abs=0.01)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    w_seq = torch.load(tmp_path / "false" / "model.pt", weights_only=True)
    w_bat = torch.load(tmp_path / "true" / "model.pt", weights_only=True)
    for key, value in w_seq.items():
        assert torch.allclose(w_bat[key], value, rtol=1e-4, atol=1e-5)


def test_a_batch_that_raises_fails_its_clients_only(tmp_path, monkeypatch) -> None:
    """The honest clients of a batch that raises get error replies (the round records
    them as failed, with the reason); the attacker, trained apart, still answers."""
    import fedsec.apps.client_app as client_app

    def broken(*args, **kwargs):
        raise RuntimeError("batched training broke")

    monkeypatch.setattr(client_app, "train_clients", broken)
    runs.run_cli(tmp_path / "run", [*ATTACKED, "engine.batch_clients=true"])
    for r in runs.rounds_without_time(tmp_path / "run"):
        honest = sorted(set(r["clients"]) - set(r["malicious_clients"]))
        assert r["failed_clients"] == honest
        assert all("batched training broke" in r["failed_reasons"][str(c)] for c in honest)
        assert r["accepted_clients"] == r["malicious_clients"]


def test_a_late_batch_fails_its_clients_only(tmp_path, monkeypatch) -> None:
    """The batch is one call, timed as one: past engine.round_timeout every client in it
    has failed (no reply, as a late client), while the attacker, trained apart, answers."""
    import time

    import fedsec.apps.client_app as client_app

    def slow(*args, **kwargs):
        time.sleep(1.2)
        return train_clients(*args, **kwargs)

    monkeypatch.setattr(client_app, "train_clients", slow)
    runs.run_cli(
        tmp_path / "run", [*ATTACKED, "engine.batch_clients=true", "engine.round_timeout=1"]
    )
    for r in runs.rounds_without_time(tmp_path / "run"):
        honest = sorted(set(r["clients"]) - set(r["malicious_clients"]))
        assert len(honest) == 2 and r["failed_clients"] == honest
        assert "failed_reasons" not in r  # no reply at all, not an error reply
        assert r["accepted_clients"] == r["malicious_clients"]


def test_a_batch_with_dropout_does_not_depend_on_flowers_sampling_order(tmp_path) -> None:
    """Flower's strategies list a round's nodes in ``random.sample`` order (unseeded), and a
    batch's dropout masks depend on the order of its clients. Batch 512 gives every client
    one step an epoch (the paper's EMNIST setting), so no step count orders them: the
    batch orders them by partition id, and two runs with Python's ``random`` in other
    states (other sampling orders) give the same rounds. (Before, in message order, these
    two runs differed.)"""
    import random

    config = [
        *runs.tiny_digits(rounds=1, seed=3),
        "model.name=lenet",
        "train.batch_size=512",
        "engine.batch_clients=true",
    ]
    for state in (0, 1):
        random.seed(state)
        runs.run_cli(tmp_path / str(state), config)
    first = runs.rounds_without_time(tmp_path / "0")
    assert runs.rounds_without_time(tmp_path / "1") == first


#: 4 digits clients, 3 a round, 2 rounds, a sign-flip attacker in every round: 2 honest
#: clients a round, trained batched. The seeded sampler picks clients 0, 1, 3 and 0, 1, 2,
#: the attacker is client 0 in both rounds.
FEDERATION = [
    *runs.tiny_digits(rounds=2, seed=5, clients=4),
    "attack.name=sign-flip",
    "attack.schedule=every-round",
    "engine.batch_clients=true",
]
HONEST = {1: [1, 3], 2: [1, 2]}


def _check_messages(run_dir) -> None:
    """What the nodes' ClientApps answered (``tests.recording_client``), against the
    known answers: 4 identify queries, one a node; then, per round, 2 train messages on 2
    nodes: ONE batch message naming the round's 2 honest clients, in partition order, on
    the node of the first of them, and the attacker's own train message on its node."""
    from tests.recording_client import read_calls

    calls = read_calls(run_dir)
    assert len(calls) == 4 + 2 * 2
    queries = [c for c in calls if c["type"] == "query.identify"]
    assert sorted(c["node_partition"] for c in queries) == [0, 1, 2, 3]
    rounds = runs.rounds_without_time(run_dir)
    assert [(r["clients"], r["malicious_clients"]) for r in rounds] == [
        ([0, 1, 3], [0]),
        ([0, 1, 2], [0]),
    ]
    for r in rounds:
        honest = HONEST[r["round"]]
        train = [c for c in calls if c.get("round") == r["round"]]
        assert sorted(train, key=lambda c: c["type"]) == [
            {"type": "train", "node_partition": 0, "round": r["round"]},
            {
                "type": "train.batch",
                "node_partition": honest[0],
                "round": r["round"],
                "batch": honest,
            },
        ]
        # the strategy got one reply per client, as without batching
        assert r["failed_clients"] == [] and r["accepted_clients"] == r["clients"]


def test_inprocess_batch_is_one_message_to_one_node(tmp_path) -> None:
    from fedsec.apps.server_app import OUTPUT_DIR_KEY
    from fedsec.apps.server_app import app as server_app
    from fedsec.engines.inprocess import run_inprocess
    from tests.recording_client import app as recording_app

    config = load_config(None, FEDERATION)
    out = tmp_path / "recorded"
    run_inprocess(server_app, recording_app, 4, {**config.to_flat(), OUTPUT_DIR_KEY: str(out)})
    _check_messages(out)
    # the recording ClientApp answers as fedsec's: the same rounds as `fedsec run`
    runs.run_cli(tmp_path / "run", FEDERATION)
    assert runs.rounds_without_time(out) == runs.rounds_without_time(tmp_path / "run")


@pytest.mark.slow
def test_flower_engine_batches_as_the_inprocess_engine(tmp_path, capsys) -> None:
    """Flower's simulation engine (Ray) with batch_clients = true: one batch message a
    round to one node, and the same rounds and final model, bit for bit, as the
    in-process engine with batch_clients = true."""
    from fedsec.engines.flower import run_flower
    from fedsec.engines.processes import marked_pids

    runs.run_cli(tmp_path / "inprocess", FEDERATION)
    out = tmp_path / "flower"
    try:
        run_flower(load_config(None, FEDERATION), out, clientapp="tests.recording_client:app")
    finally:
        assert marked_pids(str(out / ".flwr")) == []
    _check_messages(out)
    assert runs.rounds_without_time(out) == runs.rounds_without_time(tmp_path / "inprocess")
    w_inprocess = torch.load(tmp_path / "inprocess" / "model.pt", weights_only=True)
    w_flower = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(w_flower[k], w_inprocess[k]) for k in w_inprocess)


def test_benchmark_runs_without_flower() -> None:
    """``benchmarks/batched_clients.py`` at a tiny size in a process where ``import flwr``
    fails (the GPU machine has no Flower): it prints a line per model and round size."""
    script = runs.REPO / "benchmarks" / "batched_clients.py"
    code = (
        "import runpy, sys\n"
        "sys.modules['flwr'] = None\n"
        f"sys.argv = [{str(script)!r}, '--device', 'cpu', '--quick', '--models', 'lenet,cnn',"
        " '--clients', '2,3', '--examples', '4', '--threads', '1']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "clients (" in line]
    assert [line.split()[:2] for line in lines] == [
        ["lenet", "2"],
        ["lenet", "3"],
        ["cnn", "2"],
        ["cnn", "3"],
    ]
    assert all("samples/s, ratio" in line for line in lines)
    assert "batched_speedup:" in proc.stdout


def test_clients_smaller_than_a_batch_are_not_padded_to_it() -> None:
    """Batch 512 (the paper's EMNIST setting) on clients of a few examples: one step an
    epoch each on all its examples, the plan only as wide as the largest client, the
    weights those of ``train`` (float64)."""
    index, weight, _, counts, _ = batched._batch_plan([9, 4], [1, 2], epochs=3, batch_size=512)
    assert index.shape == (2, 3, 9) and counts == [3, 3]
    assert torch.equal((weight > 0).sum(dim=2), torch.tensor([[9, 9, 9], [4, 4, 4]]))
    model = _model("lenet")
    data = _data("lenet", [9, 4])
    hyper = {**HYPER, "batch_size": 512, "epochs": 3}
    start = flatten_params(model)
    for (w_seq, _), result in zip(
        _sequential(model, data, [1, 2], **hyper),
        train_clients(model, data, seeds=[1, 2], **hyper),
        strict=True,
    ):
        w = _flat(model, result.params)
        assert ((w - w_seq).norm() / (w_seq - start).norm()).item() < 1e-10


def test_paper_shape_config_has_the_papers_emnist_settings() -> None:
    """experiments/paper-scale/fashion-emnist-shape.toml: the EMNIST regime's training
    settings exactly (emnist-base.toml's), its 3,383 clients and 30 a round, on
    Fashion-MNIST, in-process with batch_clients = auto."""
    from fedsec.config import ExperimentConfig, read_toml

    paper = runs.REPO / "experiments" / "paper-scale"
    shape = ExperimentConfig.from_dict(read_toml(paper / "fashion-emnist-shape.toml"))
    emnist = ExperimentConfig.from_dict(read_toml(paper / "emnist-base.toml"))
    assert shape.train == emnist.train and shape.model == emnist.model
    assert (shape.data.name, shape.data.num_clients) == ("fashion-mnist", 3383)
    assert (shape.data.partition, shape.data.alpha) == ("dirichlet", 0.5)
    assert (shape.engine.name, shape.engine.batch_clients) == ("inprocess", "auto")
