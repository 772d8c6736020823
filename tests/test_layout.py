"""The one model layout (fedsec_core.layout): which tensors, in which order, with which shapes
and dtypes; flatten and unflatten round trips for every model of the registry; the
ArrayRecord face the server uses (defenses.adapter.RecordLayout) gives the same vector;
and with resnet18 (BatchNorm) the partial- and full-knowledge scaling evasions hand the
rule the same vector."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from flwr.app import ArrayRecord

from defenses.adapter import RecordLayout
from defenses.rules.base import AggregationRule
from fedsec.models import build_model
from fedsec_core.layout import ModelLayout
from fedsec_core.training import assign_flat_params, flatten_params
from tests.runs import run_cli, tiny_digits

DIGITS, MNIST, CIFAR = (1, 8, 8), (1, 28, 28), (3, 32, 32)

#: resnet18's BatchNorm layers by channels: the stem (64), 4 per stage of two basic
#: blocks plus one shortcut BatchNorm in each of the last three stages.
RESNET_BN_CHANNELS = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512  # 4,800
#: (model, input shape, parameters, floating buffers): counts from the papers'
#: architectures (tests/test_models.py) and, for resnet18, running_mean and running_var
#: of every BatchNorm channel.
MODELS = [
    ("mlp", DIGITS, 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10, 0),
    ("cnn", DIGITS, 16 * 25 + 16 + 32 * 16 * 25 + 32 + 32 * 2 * 2 * 128 + 128 + 128 * 10 + 10, 0),
    ("lenet", MNIST, 1_199_882, 0),
    ("vgg9", CIFAR, 9_225_610, 0),
    ("resnet18", CIFAR, 11_173_962, 2 * RESNET_BN_CHANNELS),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: the machine is shared, and these models gain little from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(name: str, shape: tuple[int, int, int], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, shape, 10)
    for module in model.modules():  # BatchNorm statistics other than their 0 / 1 start
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.num_batches_tracked.fill_(seed + 3)
    return model


@pytest.mark.parametrize(("name", "shape", "params", "buffers"), MODELS, ids=[m[0] for m in MODELS])
def test_the_state_view_is_every_floating_entry_in_state_dict_order(name, shape, params, buffers):
    model = seeded(name, shape, 0)
    state = model.state_dict()
    layout = ModelLayout.of_module(model)
    assert layout.size == params + buffers and layout.dtype == torch.float32
    floating = [k for k, v in state.items() if v.is_floating_point()]
    assert layout.keys == floating  # the order: the state dict's
    assert [e.key for e in layout.entries] == list(state)  # integer entries listed, left out
    vector = layout.flatten_module(model)
    # an independent flattening: the floating entries concatenated in state-dict order
    assert torch.equal(vector, torch.cat([state[k].reshape(-1) for k in floating]))
    assert torch.equal(layout.flatten(state), vector)
    for key, value in layout.unflatten(vector).items():  # unflatten: shape, dtype, values
        assert value.dtype == state[key].dtype and torch.equal(value, state[key])
    # spans tile the vector in order
    assert [layout.span(k).start for k in floating] == [
        sum(state[j].numel() for j in floating[:i]) for i in range(len(floating))
    ]


@pytest.mark.parametrize(("name", "shape", "params", "buffers"), MODELS, ids=[m[0] for m in MODELS])
def test_load_module_round_trips_into_another_model(name, shape, params, buffers):
    source, target = seeded(name, shape, 0), seeded(name, shape, 1)
    layout = ModelLayout.of_module(source)
    vector = layout.flatten_module(source)
    layout.load_module(target, vector)
    vector.add_(1.0)  # the target holds its own copy
    for key, value in target.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, source.state_dict()[key]), key
        else:  # an integer buffer is not in the vector: the target keeps its own
            assert int(value) == 1 + 3
    assert torch.equal(layout.flatten_module(target), layout.flatten_module(source))


@pytest.mark.parametrize(("name", "shape", "params", "buffers"), MODELS, ids=[m[0] for m in MODELS])
def test_the_parameters_view_is_what_training_flattens(name, shape, params, buffers):
    model = seeded(name, shape, 0)
    layout = ModelLayout.of_module(model, buffers=False)
    assert layout.size == params
    assert layout.keys == [k for k, _ in model.named_parameters()]
    old = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # training's before
    assert torch.equal(flatten_params(model), old)
    assert torch.equal(layout.flatten_module(model), old)
    if not buffers:  # the bit-identity of every committed result: both views are one vector
        assert ModelLayout.of_module(model).keys == layout.keys
        assert torch.equal(ModelLayout.of_module(model).flatten_module(model), old)
    target = seeded(name, shape, 1)
    assign_flat_params(target, old)
    assert torch.equal(flatten_params(target), old)
    if buffers:  # the parameters view leaves the running statistics alone
        assert not torch.equal(target.bn1.running_mean, model.bn1.running_mean)


def test_the_vector_is_float64_when_an_entry_is_and_entries_keep_their_dtypes():
    class Mixed(torch.nn.Module):
        def __init__(self, wide: bool) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 3)
            if wide:
                self.linear.double()
            self.register_buffer("low", torch.tensor([0.5, -1.25], dtype=torch.float16))
            self.register_buffer("count", torch.tensor(7))

    for wide, dtype in ((False, torch.float32), (True, torch.float64)):
        model = Mixed(wide)
        layout = ModelLayout.of_module(model)
        assert (layout.dtype, layout.size, layout.keys) == (
            dtype,
            6 + 3 + 2,
            ["low", "linear.weight", "linear.bias"],  # a module's own buffers first
        )
        vector = layout.flatten_module(model)
        assert vector.dtype == dtype and vector[:2].tolist() == [0.5, -1.25]
        back = layout.unflatten(vector)
        assert back["low"].dtype == torch.float16 and back["linear.weight"].dtype == (
            model.linear.weight.dtype
        )
        layout.load_module(model, torch.arange(11, dtype=dtype))
        assert model.low.tolist() == [0.0, 1.0] and model.count.item() == 7
        assert model.linear.bias.tolist() == [8.0, 9.0, 10.0]


def test_a_numpy_state_dict_flattens_as_its_tensors():
    model = seeded("cnn", DIGITS, 0)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    layout = ModelLayout.of_state(state)
    assert layout.keys == ModelLayout.of_module(model).keys
    assert torch.equal(layout.flatten(state), ModelLayout.of_module(model).flatten_module(model))


def test_a_model_that_does_not_fit_is_refused_in_one_line():
    layout = ModelLayout.of_module(torch.nn.Linear(2, 3))
    with pytest.raises(
        ValueError, match=r"'weight' is float32\[3, 4\], the layout's float32\[3, 2\]"
    ):
        layout.flatten_module(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"missing \['bias'\], extra \[\]"):
        layout.flatten({"weight": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="needs a 1-D vector of 9 values"):
        layout.load_module(torch.nn.Linear(2, 3), torch.zeros(8))
    with pytest.raises(KeyError, match="not an entry of the flat vector"):
        ModelLayout.of_module(seeded("resnet18", DIGITS, 0)).span("bn1.num_batches_tracked")


def test_the_servers_record_layout_is_the_core_layout():
    model = seeded("resnet18", DIGITS, 0)
    record = ArrayRecord(model.state_dict())
    server = RecordLayout(record)
    core = ModelLayout.of_module(model)
    assert server.layout.keys == core.keys and (server.size, server.dtype) == (
        core.size,
        core.dtype,
    )
    vector = server.flatten(record, torch.device("cpu"))
    assert torch.equal(vector, core.flatten_module(model))
    back = server.unflatten(vector + 1, record).to_torch_state_dict()
    for key, value in model.state_dict().items():
        expected = value + 1 if value.is_floating_point() else value
        assert torch.equal(back[key], expected), key


# -------------------------------------------- the two evasions hand the rule one vector

#: One round, one client a round, who is the attacker: the rule's first call in a run is
#: the evasion's trial at lam = 1 (``attacks.evasion.largest_kept_scale``), whose last row
#: is the attacker's update. keep_fraction = 1 keeps it, so that is the only trial.
RESNET_EVASION = [
    *tiny_digits(rounds=1, seed=5),
    "model.name=resnet18",
    "data.num_clients=60",
    "train.clients_per_round=1",
    "attack.name=pixel-replacement",
    "attack.trigger_size=2",
    "attack.trigger_gap=1",
    "attack.evasion=scaling",
    "defense.name=multi-metrics",
    "defense.keep_fraction=1.0",
]


def test_both_scaling_evasions_hand_the_rule_the_same_vector_with_batchnorm(tmp_path, monkeypatch):
    # regression: on the client (partial knowledge) the evasion flattened the parameters
    # only, in the server loop (full knowledge) every floating entry of the state: with
    # BatchNorm the rule saw 11,173,962 values from one and 11,183,562 from the other
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    aggregate = AggregationRule.aggregate

    def recording(self, models, weights, global_model, *args, **kwargs):
        seen[knowledge].append((models[-1].clone(), global_model.clone()))
        return aggregate(self, models, weights, global_model, *args, **kwargs)

    monkeypatch.setattr(AggregationRule, "aggregate", recording)
    for knowledge in ("partial", "full"):
        seen[knowledge] = []
        run_cli(tmp_path / knowledge, [*RESNET_EVASION, f"attack.knowledge={knowledge}"])
    (partial, partial_global), (full, full_global) = seen["partial"][0], seen["full"][0]
    layout = ModelLayout.of_module(build_model("resnet18", DIGITS, 10))
    # on 1-channel digits the stem convolution has 64 x 3 x 3 x 2 weights fewer
    assert partial.shape == full.shape == (11_173_962 - 1_152 + 2 * RESNET_BN_CHANNELS,)
    assert torch.equal(partial_global, full_global)
    # the same update, up to the float32 rounding of the benign model's round trip
    # through the reply (w0 + u_benign - w0)
    torch.testing.assert_close(partial, full, rtol=0, atol=1e-6)
    # and it carries the attacker's trained BatchNorm statistics
    running = layout.span("bn1.running_mean")
    assert not torch.equal(partial[running], partial_global[running])
