"""Model registry: the image classifiers that clients train, attacks poison and defenses guard.

Every model maps a batch ``(N, C, H, W)`` of float images to ``(N, num_classes)`` logits
(no softmax: the training loop uses cross-entropy on logits).  Weights use PyTorch's
default initialisation; builders take no random generator, so the caller seeds torch
(``torch.manual_seed``) before ``build_model`` to get reproducible weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedsec_core.errors import ConfigError
from fedsec_core.registry import Registry

InputShape = tuple[int, int, int]
"""Shape of one example: (channels, height, width)."""

ModelBuilder = Callable[[InputShape, int], nn.Module]
"""Builds a freshly initialised model from (input_shape, num_classes)."""


def _require_min_size(name: str, input_shape: InputShape, min_size: int) -> None:
    """Raise ConfigError if the image is smaller than ``min_size`` x ``min_size`` pixels."""
    _, height, width = input_shape
    if height < min_size or width < min_size:
        raise ConfigError(
            f"model {name!r} cannot take input shape {input_shape}: it accepts "
            f"C x H x W images with H, W >= {min_size} (any channel count)"
        )


class MLP(nn.Module):
    """Fully-connected ReLU layers on the flattened image; it runs on any image size,
    including the 8x8 scikit-learn digits.

    ``mlp``: two hidden layers of 200 units, the classic baseline of the FedAvg paper
    (McMahan et al. 2017, "2NN"). ``mlp-512``: one hidden layer of 512, the MNIST network
    of Shejwalkar & Houmansadr (NDSS 2021, "FC 784-512-10"). ``mlp-100``: one hidden
    layer of 100, the MNIST network of Baruch et al.'s code (ALIE, NeurIPS 2019;
    ``moranant/attacking_distributed_learning``, ``data_sets.py``'s ``MnistNet``, which
    fedsec's ``mnistnet``, the DBA authors' conv net, is not), with its Xavier-uniform
    first layer; the output is logits instead of its log-softmax.
    """

    def __init__(
        self, input_shape: InputShape, num_classes: int, hidden: tuple[int, ...] = (200, 200)
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = channels * height * width
        for units in hidden:
            layers += [nn.Linear(width_in, units), nn.ReLU()]
            width_in = units
        self.net = nn.Sequential(*layers, nn.Linear(width_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """The EMNIST "LeNet" of Wang et al. 2020, "Attack of the Tails: Yes, You Really Can
    Backdoor Federated Learning" (NeurIPS), which is PyTorch's MNIST example network.

    conv 3x3 (32) - ReLU - conv 3x3 (64) - ReLU - maxpool 2 - dropout 0.25 - fc 128 - ReLU -
    dropout 0.5 - fc classes.  On 1x28x28 with 10 classes: 1,199,882 parameters (fc1 takes
    64*12*12 = 9216 features).  fc1's input size follows the input shape, so the network
    also runs on other sizes >= 6x6.  Attribute names match the paper's code (conv1, conv2,
    fc1, fc2), so its checkpoints load with ``load_state_dict``; the output is logits
    instead of the original's log-softmax.
    """

    min_size = 6

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.pool = nn.MaxPool2d(2)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), 128)
        self.fc2 = nn.Linear(128, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.dropout1(self.pool(x))
        x = self.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.dropout2(x))


class SmallCNN(nn.Module):
    """A small, fast CNN for quick experiments and tests.

    conv 5x5 (16, pad 2) - ReLU - maxpool 2 - conv 5x5 (32, pad 2) - ReLU - maxpool 2 -
    fc 128 - ReLU - fc classes.  The padded convolutions keep the size, so anything from
    4x4 up works (8x8 digits, 28x28 MNIST, 32x32 CIFAR).
    """

    min_size = 4

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * (height // 4) * (width // 4), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MnistNet(nn.Module):
    """The MNIST network of the DBA authors' code (Xie et al., "DBA: Distributed Backdoor
    Attacks against Federated Learning", ICLR 2020; ``models/MnistNet.py``), which is
    PyTorch's older MNIST example network.

    conv 5x5 (20) - ReLU - maxpool 2 - conv 5x5 (50) - ReLU - maxpool 2 - fc 500 - ReLU -
    fc classes, no padding.  On 1x28x28 with 10 classes: 431,080 parameters (fc1 takes
    50*4*4 = 800 features).  fc1's input size follows the input shape (>= 16x16).  Attribute
    names match the authors' code (conv1, conv2, fc1, fc2); the output is logits instead of
    its log-softmax (fedsec's loss takes logits).
    """

    min_size = 16

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        side_h, side_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(50 * side_h * side_w, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


VGG9_LAYOUT: tuple[int | str, ...] = (
    64,
    "M",
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)
"""Conv channels of VGG-9 ("M" = 2x2 max-pool), as in Wang et al. 2020's code."""


class VGG9(nn.Module):
    """VGG-9 without BatchNorm, the CIFAR-10 model of Wang et al. 2020 ("Attack of the
    Tails") that Huang et al. 2023 reuse: 9,225,610 parameters on 3x32x32 with 10 classes.

    Eight 3x3 convolutions (padding 1, ReLU) with channels
    64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M and one linear layer 512 -> classes.
    This is the ``vgg9`` of the paper's code (``models/vgg9_only.py`` of
    ksreenivasan/OOD_Federated_Learning, from kuangliu/pytorch-cifar); the count
    9,225,610 pins it down.  The other "VGG-9" in the FL literature (FedMA, Wang et al.
    2020 ICLR: conv 32, M, 64, M, 128, 128, M, 256, 256, M and fc 4096-512-512-classes)
    has 3,491,530 parameters instead.  Five poolings need H, W >= 32; larger inputs give
    512 * (H // 32) * (W // 32) features to the classifier.  Attribute names
    (``features``, ``classifier``) match the paper's code so its checkpoints load.
    """

    min_size = 32

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = self._make_features(channels)
        self.classifier = nn.Linear(512 * (height // 32) * (width // 32), num_classes)

    @staticmethod
    def _make_features(in_channels: int) -> nn.Sequential:
        """Stack the VGG9_LAYOUT convolutions and poolings."""
        layers: list[nn.Module] = []
        for item in VGG9_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
                in_channels = int(item)
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers plus an identity (or 1x1 conv-BN) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (He et al. 2016 as adapted in kuangliu/pytorch-cifar).

    3x3 stem conv (64, stride 1) with BatchNorm and no max-pool, BasicBlock stages
    [2, 2, 2, 2] of 64/128/256/512 channels (strides 1, 2, 2, 2), adaptive average pool,
    fc 512 -> classes: 11,173,962 parameters for 10 classes.  The adaptive pool lets it
    take any image size.  BatchNorm running statistics are buffers, not parameters.
    """

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        channels = input_shape[0]
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        stages = [(64, 1), (128, 2), (256, 2), (512, 2)]
        in_planes = 64
        layers = []
        for planes, stride in stages:
            layers.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _build_mlp(input_shape: InputShape, num_classes: int) -> nn.Module:
    return MLP(input_shape, num_classes)


def _build_mlp_512(input_shape: InputShape, num_classes: int) -> nn.Module:
    return MLP(input_shape, num_classes, hidden=(512,))


def _build_mlp_100(input_shape: InputShape, num_classes: int) -> nn.Module:
    model = MLP(input_shape, num_classes, hidden=(100,))
    # the ALIE code initialises fc1's weight Xavier-uniform, the rest PyTorch's default
    nn.init.xavier_uniform_(model.net[1].weight)
    return model


def _build_lenet(input_shape: InputShape, num_classes: int) -> nn.Module:
    _require_min_size("lenet", input_shape, LeNet.min_size)
    return LeNet(input_shape, num_classes)


def _build_cnn(input_shape: InputShape, num_classes: int) -> nn.Module:
    _require_min_size("cnn", input_shape, SmallCNN.min_size)
    return SmallCNN(input_shape, num_classes)


def _build_mnistnet(input_shape: InputShape, num_classes: int) -> nn.Module:
    _require_min_size("mnistnet", input_shape, MnistNet.min_size)
    return MnistNet(input_shape, num_classes)


def _build_vgg9(input_shape: InputShape, num_classes: int) -> nn.Module:
    _require_min_size("vgg9", input_shape, VGG9.min_size)
    return VGG9(input_shape, num_classes)


def _build_resnet18(input_shape: InputShape, num_classes: int) -> nn.Module:
    return ResNet18(input_shape, num_classes)


MODELS: Registry[ModelBuilder] = Registry(
    "model.name",
    {
        "mlp": _build_mlp,
        "mlp-512": _build_mlp_512,
        "mlp-100": _build_mlp_100,
        "lenet": _build_lenet,
        "cnn": _build_cnn,
        "mnistnet": _build_mnistnet,
        "vgg9": _build_vgg9,
        "resnet18": _build_resnet18,
    },
)
"""Model name -> builder(input_shape, num_classes); builders raise ConfigError on a
shape the model cannot take."""


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


def _check_input_shape(input_shape: object) -> InputShape:
    """Return ``input_shape`` as a (C, H, W) tuple of positive ints, or raise ConfigError."""
    valid = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    )
    if not valid:
        raise ConfigError(
            f"input_shape must be (channels, height, width) with 3 positive ints, "
            f"got {input_shape!r}"
        )
    channels, height, width = input_shape  # type: ignore[misc]
    return (channels, height, width)


def build_model(name: str, input_shape: InputShape, num_classes: int) -> nn.Module:
    """Build a freshly initialised model ``name`` for images of ``input_shape`` = (C, H, W).

    Raises ConfigError for an unknown name, a malformed shape, fewer than 2 classes, or a
    shape the model cannot take (e.g. vgg9 on 8x8 digits).  Seed torch first for
    reproducible weights.
    """
    builder = MODELS.resolve(name)
    shape = _check_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return builder(shape, num_classes)
