"""Tests of the model registry: architectures (parameter counts), shapes and errors."""

from collections.abc import Iterator

import pytest
import torch

from fedsec.models import MODELS, build_model, model_names
from fedsec_core.errors import ConfigError

DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run on one thread: these small models gain nothing from more, and on a shared,
    loaded 2-core machine multi-threaded torch slows down several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Shapes each model must accept; vgg9 needs >= 32x32.
ACCEPTED = {
    "mlp": [DIGITS, MNIST, CIFAR],
    "mlp-512": [DIGITS, MNIST, CIFAR],
    "mlp-100": [DIGITS, MNIST, CIFAR],
    "cnn": [DIGITS, MNIST, CIFAR],
    "lenet": [DIGITS, MNIST, CIFAR],
    "mnistnet": [MNIST, CIFAR],
    "vgg9": [CIFAR],
    "resnet18": [DIGITS, MNIST, CIFAR],
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_model_names_are_the_registry() -> None:
    assert (
        model_names()
        == sorted(MODELS)
        == ["cnn", "lenet", "mlp", "mlp-100", "mlp-512", "mnistnet", "resnet18", "vgg9"]
    )


@pytest.mark.parametrize(
    "name, shape, expected",
    [
        ("lenet", MNIST, 1_199_882),  # Wang et al. 2020, EMNIST LeNet
        ("vgg9", CIFAR, 9_225_610),  # Wang et al. 2020, CIFAR-10 VGG-9
        ("resnet18", CIFAR, 11_173_962),  # CIFAR ResNet-18
        ("mlp", MNIST, 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10),
        ("mlp-512", MNIST, 784 * 512 + 512 + 512 * 10 + 10),  # NDSS'21's FC 784-512-10
        ("mlp-100", MNIST, 784 * 100 + 100 + 100 * 10 + 10),  # the ALIE code's MnistNet
        # the DBA authors' MnistNet: conv 1->20 and 20->50 (5x5), fc 800->500->10
        ("mnistnet", MNIST, 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10),
    ],
)
def test_parameter_counts(name: str, shape: tuple[int, int, int], expected: int) -> None:
    assert count(build_model(name, shape, 10)) == expected


def test_mlp_100_first_layer_is_xavier_uniform_as_the_alie_code() -> None:
    # Xavier-uniform bound sqrt(6 / (784 + 100)) = 0.082; PyTorch's default for a
    # Linear of fan-in 784 is 1 / sqrt(784) = 0.036, which fc2 (fan-in 100: 0.1) keeps
    torch.manual_seed(0)
    net = build_model("mlp-100", MNIST, 10).net
    first, last = (m for m in net if isinstance(m, torch.nn.Linear))
    xavier, default = (6 / (784 + 100)) ** 0.5, 1 / 784**0.5
    assert default < float(first.weight.abs().max()) <= xavier
    assert float(first.weight.std()) == pytest.approx(xavier / 3**0.5, rel=0.02)
    assert float(last.weight.abs().max()) <= 1 / 100**0.5


def test_lenet_layout_matches_the_pytorch_mnist_example() -> None:
    shapes = {k: tuple(v.shape) for k, v in build_model("lenet", MNIST, 10).state_dict().items()}
    assert shapes == {
        "conv1.weight": (32, 1, 3, 3),
        "conv1.bias": (32,),
        "conv2.weight": (64, 32, 3, 3),
        "conv2.bias": (64,),
        "fc1.weight": (128, 9216),
        "fc1.bias": (128,),
        "fc2.weight": (10, 128),
        "fc2.bias": (10,),
    }


def test_vgg9_has_eight_convs_no_batchnorm_and_one_linear_layer() -> None:
    model = build_model("vgg9", CIFAR, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)] == [
        (10, 512)
    ]


@pytest.mark.parametrize("name, shape", [(n, s) for n, shapes in ACCEPTED.items() for s in shapes])
def test_forward_gives_logits_per_example(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, 7)
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_building_is_reproducible_under_a_seed() -> None:
    torch.manual_seed(3)
    a = build_model("cnn", MNIST, 10)
    torch.manual_seed(3)
    b = build_model("cnn", MNIST, 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError,
        match=(
            "unknown model.name 'vgg99'; valid: cnn, lenet, mlp, mlp-100, mlp-512, mnistnet, "
            "resnet18, vgg9"
        ),
    ):
        build_model("vgg99", CIFAR, 10)


@pytest.mark.parametrize(
    "name, shape, minimum",
    [("vgg9", DIGITS, 32), ("vgg9", MNIST, 32), ("lenet", (1, 5, 28), 6), ("mnistnet", DIGITS, 16)],
)
def test_incompatible_shape_says_which_sizes_work(
    name: str, shape: tuple[int, int, int], minimum: int
) -> None:
    with pytest.raises(ConfigError, match=rf"{name}.*H, W >= {minimum}") as info:
        build_model(name, shape, 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(28, 28), (1, 0, 28), (1, 28.0, 28), "1x28x28"])
def test_malformed_input_shape(shape: object) -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("mlp", shape, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [1, 0, 2.0])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("mlp", MNIST, num_classes)  # type: ignore[arg-type]
