"""Partitioning of a labelled training set among clients, and its label histogram."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from fedsec.partition import (
    PARTITION_SCHEMES,
    label_histogram,
    partition_indices,
    plot_label_histogram,
)
from fedsec_core.errors import ConfigError

LABELS = np.random.default_rng(0).integers(0, 10, size=2000)


def mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the entropy (bits) of the client's label distribution."""
    hist = label_histogram(labels, parts, 10).astype(float)
    p = hist / hist.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(-np.nansum(p * np.log2(p), axis=1)))


def test_schemes() -> None:
    assert PARTITION_SCHEMES == ("iid", "dirichlet", "pathological")


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_every_index_used_exactly_once(scheme: str) -> None:
    parts = partition_indices(LABELS, 20, scheme, seed=1)
    assert len(parts) == 20
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


def test_iid_sizes_are_equal() -> None:
    sizes = [len(p) for p in partition_indices(LABELS[:1003], 10, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1003


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_seeded(scheme: str) -> None:
    a = partition_indices(LABELS, 10, scheme, seed=5)
    b = partition_indices(LABELS, 10, scheme, seed=5)
    c = partition_indices(LABELS, 10, scheme, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_honours_min_size() -> None:
    first_draw = partition_indices(LABELS, 20, "dirichlet", alpha=0.5, min_size=1, seed=3)
    assert min(len(p) for p in first_draw) < 40  # so min_size=40 needs a redraw
    parts = partition_indices(LABELS, 20, "dirichlet", alpha=0.5, min_size=40, seed=3)
    assert min(len(p) for p in parts) >= 40


def test_dirichlet_min_size_unreachable() -> None:
    with pytest.raises(
        ConfigError, match=r"11 draws.*lower \[data\] min_partition_size, raise \[data\] alpha"
    ):
        partition_indices(LABELS, 20, "dirichlet", alpha=0.05, min_size=95, seed=0)


def test_small_alpha_skews_more() -> None:
    skewed = mean_label_entropy(
        LABELS, partition_indices(LABELS, 20, "dirichlet", alpha=0.1, min_size=1, seed=0)
    )
    mild = mean_label_entropy(
        LABELS, partition_indices(LABELS, 20, "dirichlet", alpha=100.0, seed=0)
    )
    assert skewed < 2.0 < 3.1 < mild <= np.log2(10)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_k_classes(k: int) -> None:
    parts = partition_indices(LABELS, 15, "pathological", classes_per_client=k, seed=2)
    assert all(len(np.unique(LABELS[p])) == k for p in parts)
    used = np.concatenate(parts)
    assert len(np.unique(used)) == len(used)  # disjoint
    assert set(np.unique(LABELS[used])) == set(range(10))  # 15 clients >= 10 classes: all used


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"scheme": "shards"},
            "unknown partition scheme 'shards'; valid: iid, dirichlet, pathological",
        ),
        ({"num_clients": 0}, r"num_clients must be in 1\.\.2000"),
        ({"num_clients": 2001}, r"num_clients must be in 1\.\.2000"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
        (
            {"scheme": "pathological", "classes_per_client": 0},
            r"classes_per_client must be in 1\.\.10",
        ),
        (
            {"scheme": "pathological", "classes_per_client": 11},
            r"classes_per_client must be in 1\.\.10",
        ),
        ({"min_size": 0}, r"min_partition_size must be in 1\.\.200"),
        ({"min_size": 201}, r"min_partition_size must be in 1\.\.200"),
        ({"labels": np.array([0.5, 1.0])}, "non-negative integers"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"labels": LABELS, "num_clients": 10, "scheme": "dirichlet", "seed": 0} | kwargs
    labels, num_clients, scheme = args.pop("labels"), args.pop("num_clients"), args.pop("scheme")
    with pytest.raises(ConfigError, match=match):
        partition_indices(labels, num_clients, scheme, **args)


def test_pathological_too_many_holders() -> None:
    labels = np.array([0] * 3 + [1] * 100)
    with pytest.raises(ConfigError, match="class 0 has 3 examples but 8 clients hold it"):
        partition_indices(labels, 8, "pathological", classes_per_client=2, min_size=1, seed=0)


def test_matches_flwr_datasets() -> None:
    """Same client sets as flwr-datasets' partitioners, including Dirichlet redraws."""
    pytest.importorskip("flwr_datasets")
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    labels = np.tile(np.arange(10), 60)
    table = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    cases = [
        (
            DirichletPartitioner(
                10, "label", alpha=0.5, min_partition_size=30, seed=0
            ),  # needs 4 redraws
            {"scheme": "dirichlet", "alpha": 0.5, "min_size": 30, "seed": 0},
        ),
        (
            DirichletPartitioner(12, "label", alpha=0.3, min_partition_size=5, seed=4),
            {"scheme": "dirichlet", "alpha": 0.3, "min_size": 5, "seed": 4},
        ),
        (
            PathologicalPartitioner(
                12, "label", 3, class_assignment_mode="first-deterministic", seed=9
            ),
            {"scheme": "pathological", "classes_per_client": 3, "min_size": 1, "seed": 9},
        ),
    ]
    for partitioner, kwargs in cases:
        partitioner.dataset = table
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flwr-datasets warns at each redraw
            theirs = [
                sorted(partitioner.load_partition(i)["idx"])
                for i in range(partitioner.num_partitions)
            ]
        ours = partition_indices(labels, partitioner.num_partitions, kwargs.pop("scheme"), **kwargs)
        assert [list(p) for p in ours] == theirs


def test_label_histogram_counts() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2, 0])
    parts = [np.array([0, 1, 2]), np.array([3, 4, 6]), np.array([], dtype=np.int64)]
    expected = np.array([[1, 2, 0], [1, 0, 2], [0, 0, 0]])
    hist = label_histogram(labels, parts, 3)
    assert hist.dtype == np.int64 and np.array_equal(hist, expected)
    with pytest.raises(ConfigError, match=r"labels must be in 0\.\.1"):
        label_histogram(labels, parts, 2)


def test_label_histogram_of_a_partition_sums_to_labels() -> None:
    parts = partition_indices(LABELS, 7, "dirichlet", seed=0)
    hist = label_histogram(LABELS, parts, 10)
    assert hist.shape == (7, 10)
    assert np.array_equal(hist.sum(axis=0), np.bincount(LABELS, minlength=10))
    assert np.array_equal(hist.sum(axis=1), [len(p) for p in parts])


def test_plot_label_histogram_writes_png(tmp_path: Path) -> None:
    hist = label_histogram(LABELS, partition_indices(LABELS, 6, "dirichlet", seed=0), 10)
    out = plot_label_histogram(
        hist, tmp_path / "plots" / "h.png", classes=[f"c{i}" for i in range(10)], title="t"
    )
    assert out == tmp_path / "plots" / "h.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="3 class names for a histogram of 10 classes"):
        plot_label_histogram(hist, tmp_path / "x.png", classes=["a", "b", "c"])
