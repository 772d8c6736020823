"""Data loaders, tested on small files written here in each real on-disk format."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fedsec_core.data import (
    DATASETS,
    check_available,
    dataset_names,
    default_dir,
    load_ardis,
    load_dataset,
    load_southwest,
    requires_dir,
)
from fedsec_core.data.base import stratified_split
from fedsec_core.data.formats import read_idx
from fedsec_core.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["ardis", "cifar10", "digits", "emnist-digits", "fashion-mnist", "mnist", "mnist5k"]


# --- writers of the real formats ---------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """An IDX file by hand: 0x0000, type code, ndim, big-endian uint32 sizes, big-endian data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    dtype = np.dtype(np.uint8) if array.dtype == np.uint8 else np.dtype(">i4")
    header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(dtype).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def images(n: int, seed: int, shape: tuple[int, ...] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx_set(
    folder: Path, names: dict[str, str], *, gz: bool, stored=lambda x: x
) -> dict[str, np.ndarray]:
    """Four IDX files (6 train, 4 test); ``stored`` maps upright images to what is on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": images(6, 0),
        "y_train": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        "x_test": images(4, 1),
        "y_test": np.array([5, 6, 7, 8], dtype=np.uint8),
    }
    for key, array in arrays.items():
        write_idx(folder / names[key], stored(array) if key.startswith("x") else array, gz=gz)
    return arrays


MNIST_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
EMNIST_NAMES = {
    "x_train": "emnist-digits-train-images-idx3-ubyte",
    "y_train": "emnist-digits-train-labels-idx1-ubyte",
    "x_test": "emnist-digits-test-images-idx3-ubyte",
    "y_test": "emnist-digits-test-labels-idx1-ubyte",
}


def assert_images(
    x: np.ndarray, shape: tuple[int, ...], expected_uint8: np.ndarray | None = None
) -> None:
    assert x.dtype == np.float32 and x.shape == shape
    assert 0.0 <= x.min() and x.max() <= 1.0
    if expected_uint8 is not None:
        np.testing.assert_allclose(x, expected_uint8.astype(np.float32) / 255, rtol=0, atol=1e-7)


# --- IDX reader ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    x = images(3, 5, (4, 5))
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte", x, gz=gz)), x)
    ints = np.arange(-3, 3, dtype=np.int64)
    got = read_idx(write_idx(tmp_path / "b-idx1-int", ints, gz=gz))
    assert got.dtype == np.dtype("int32") and got.dtype.isnative and list(got) == list(ints)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x00",
        b"\x01\x00\x08\x01" + b"\x00" * 8,
        b"\x00\x00\x07\x01\x00\x00\x00\x01\x00",
        b"\x00\x00\x08\x03\x00\x00\x00\x02",
        b"\x00\x00\x08\x01\x00\x00\x00\x05abc",
        b"\x00\x00\x08\x01\x00\x00\x00\x02abc",
    ],
    ids=[
        "empty",
        "short",
        "bad-zero-bytes",
        "bad-type",
        "truncated-header",
        "truncated-data",
        "trailing-data",
    ],
)
def test_read_idx_malformed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad-idx"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", images(2, 0), gz=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="x-idx3-ubyte.gz"):
        read_idx(path)


# --- IDX data sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("subdir", ["", "MNIST/raw"])
def test_mnist_from_idx(tmp_path: Path, gz: bool, subdir: str) -> None:
    arrays = write_idx_set(tmp_path / subdir, MNIST_NAMES, gz=gz)
    d = load_dataset("mnist", tmp_path)
    assert d.name == "mnist" and d.num_classes == 10 and d.classes == tuple("0123456789")
    assert_images(d.x_train, (6, 1, 28, 28), arrays["x_train"][:, None])
    assert_images(d.x_test, (4, 1, 28, 28), arrays["x_test"][:, None])
    assert d.y_train.dtype == np.int64 and list(d.y_train) == [0, 1, 2, 3, 4, 9]
    assert list(d.y_test) == [5, 6, 7, 8]
    assert d.input_shape == (1, 28, 28)


def test_fashion_mnist_from_idx(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, MNIST_NAMES, gz=True)
    d = load_dataset("fashion-mnist", str(tmp_path))
    assert_images(d.x_train, (6, 1, 28, 28), arrays["x_train"][:, None])
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"


@pytest.mark.parametrize("subdir", ["", "EMNIST/raw"])
def test_emnist_digits_are_turned_upright(tmp_path: Path, subdir: str) -> None:
    """EMNIST stores each image transposed; the loader must undo it."""
    upright = write_idx_set(
        tmp_path / subdir, EMNIST_NAMES, gz=subdir == "", stored=lambda x: x.transpose(0, 2, 1)
    )
    d = load_dataset("emnist-digits", tmp_path)
    assert_images(d.x_train, (6, 1, 28, 28), upright["x_train"][:, None])
    assert_images(d.x_test, (4, 1, 28, 28), upright["x_test"][:, None])
    assert list(d.y_test) == [5, 6, 7, 8]


def test_idx_set_rejects_wrong_shapes_and_labels(tmp_path: Path) -> None:
    write_idx_set(tmp_path, MNIST_NAMES, gz=False)
    write_idx(tmp_path / MNIST_NAMES["y_train"], np.array([0, 1, 2, 3, 4, 10], dtype=np.uint8))
    with pytest.raises(DataError, match="outside 0..9"):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / MNIST_NAMES["y_train"], np.array([0, 1, 2], dtype=np.uint8))
    with pytest.raises(DataError, match="expected 6 integer labels"):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / MNIST_NAMES["x_train"], images(6, 0, (32, 32)))
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        load_dataset("mnist", tmp_path)


def test_missing_idx_file_names_the_path(tmp_path: Path) -> None:
    write_idx_set(tmp_path, MNIST_NAMES, gz=False)
    (tmp_path / MNIST_NAMES["y_test"]).unlink()
    expected = str(tmp_path / "t10k-labels-idx1-ubyte")
    for call in (
        lambda: load_dataset("mnist", tmp_path),
        lambda: check_available("mnist", tmp_path),
    ):
        with pytest.raises(DataError, match="file not found") as err:
            call()
        message = str(err.value)
        assert expected in message and "MNIST/raw" in message and "\n" not in message


def test_malformed_idx_file_in_a_data_set(tmp_path: Path) -> None:
    write_idx_set(tmp_path, MNIST_NAMES, gz=False)
    path = tmp_path / MNIST_NAMES["x_test"]
    path.write_bytes(path.read_bytes()[:100])
    check_available("mnist", tmp_path)  # only existence is checked
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", tmp_path)


# --- CIFAR-10 --------------------------------------------------------------------------------


def write_cifar(folder: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Six pickled batches like cifar-10-python.tar.gz: bytes keys, data uint8 (N, 3072)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    all_x, all_y = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [b"x.png"] * per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        all_x.append(data)
        all_y.append(labels)
    return np.concatenate(all_x), np.concatenate(all_y)


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar10_batches(tmp_path: Path, point_at: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    data, labels = write_cifar(folder)
    d = load_dataset("cifar10", tmp_path if point_at == "parent" else folder)
    assert d.input_shape == (3, 32, 32) and d.classes[0] == "airplane" and d.classes[9] == "truck"
    # A row is 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major.
    assert_images(d.x_train, (15, 3, 32, 32), data[:15].reshape(15, 3, 32, 32))
    assert_images(d.x_test, (3, 3, 32, 32), data[15:].reshape(3, 3, 32, 32))
    assert d.y_train.dtype == np.int64 and list(d.y_train) == list(labels[:15])
    assert list(d.y_test) == list(labels[15:])


def test_cifar10_missing_batch_and_code_in_pickle(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        check_available("cifar10", tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(Path("/etc")))
    with pytest.raises(DataError, match="refusing to load pathlib"):
        load_dataset("cifar10", tmp_path)


# --- ARDIS and Southwest ---------------------------------------------------------------------


def write_ardis_csv(folder: Path) -> dict[str, np.ndarray]:
    """The original release: 784 space-separated pixels a row, one-hot label rows."""
    arrays = {
        "x_train": images(5, 2),
        "y_train": np.array([7, 1, 0, 9, 7]),
        "x_test": images(3, 3),
        "y_test": np.array([7, 2, 3]),
    }
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        np.savetxt(
            folder / f"ARDIS_{split}_2828.csv", x.reshape(len(x), -1), fmt="%.1f", delimiter=" "
        )
        np.savetxt(folder / f"ARDIS_{split}_labels.csv", np.eye(10)[y], fmt="%.1f", delimiter=" ")
    return arrays


def test_ardis_csv_release(tmp_path: Path) -> None:
    arrays = write_ardis_csv(tmp_path)
    x_train, y_train, x_test, y_test = load_ardis(tmp_path)
    assert_images(x_train, (5, 1, 28, 28), arrays["x_train"][:, None])
    assert_images(x_test, (3, 1, 28, 28), arrays["x_test"][:, None])
    assert (
        y_train.dtype == np.int64 and list(y_train) == [7, 1, 0, 9, 7] and list(y_test) == [7, 2, 3]
    )
    d = load_dataset("ardis", tmp_path)
    assert d.num_classes == 10 and len(d.y_train) == 5


def test_ardis_csv_bad_labels(tmp_path: Path) -> None:
    write_ardis_csv(tmp_path)
    np.savetxt(tmp_path / "ARDIS_test_labels.csv", np.ones((3, 10)), fmt="%d")
    with pytest.raises(DataError, match="one-hot"):
        load_ardis(tmp_path)
    (tmp_path / "ARDIS_test_labels.csv").unlink()
    with pytest.raises(DataError, match="ARDIS_test_labels.csv"):
        load_ardis(tmp_path)


def test_ardis_npz(tmp_path: Path) -> None:
    x_train, x_test = images(4, 4), images(2, 5)
    np.savez(
        tmp_path / "ardis_iv.npz",
        x_train=x_train,
        y_train=np.array([1, 7, 7, 0], np.uint8),
        x_test=x_test,
        y_test=np.array([7, 3], np.uint8),
    )
    xt, yt, xs, ys = load_ardis(tmp_path)
    assert_images(xt, (4, 1, 28, 28), x_train[:, None])
    assert_images(xs, (2, 1, 28, 28), x_test[:, None])
    assert yt.dtype == np.int64 and list(yt) == [1, 7, 7, 0] and list(ys) == [7, 3]


def test_ardis_needs_a_folder(tmp_path: Path) -> None:
    assert requires_dir("ardis") and default_dir("ardis") is None
    with pytest.raises(ConfigError, match=r"\[data\] dir"):
        load_dataset("ardis")
    with pytest.raises(DataError, match="ardis_iv.npz") as err:
        check_available("ardis", tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="data directory not found"):
        load_ardis(tmp_path / "nope")


def test_southwest_npz_and_pickles(tmp_path: Path) -> None:
    x_train, x_test = images(3, 6, (32, 32, 3)), images(2, 7, (32, 32, 3))
    np.savez(tmp_path / "southwest_airplanes.npz", x_train=x_train, x_test=x_test)
    pkl = tmp_path / "pkl"
    pkl.mkdir()
    (pkl / "southwest_images_new_train.pkl").write_bytes(pickle.dumps(x_train))
    (pkl / "southwest_images_new_test.pkl").write_bytes(pickle.dumps(x_test))
    for folder in (tmp_path, pkl):
        got_train, got_test = load_southwest(folder)
        assert_images(got_train, (3, 3, 32, 32), x_train.transpose(0, 3, 1, 2))
        assert_images(got_test, (2, 3, 32, 32), x_test.transpose(0, 3, 1, 2))


def test_southwest_wrong_content(tmp_path: Path) -> None:
    np.savez(tmp_path / "southwest_airplanes.npz", x_train=images(3, 6, (32, 32)))
    with pytest.raises(DataError, match="lacks array"):
        load_southwest(tmp_path)
    np.savez(
        tmp_path / "southwest_airplanes.npz",
        x_train=images(3, 6, (32, 32)),
        x_test=images(3, 6, (32, 32)),
    )
    with pytest.raises(DataError, match=r"\(N, 32, 32, 3\)"):
        load_southwest(tmp_path)
    (tmp_path / "southwest_airplanes.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="southwest_airplanes.npz"):
        load_southwest(tmp_path)


# --- registry --------------------------------------------------------------------------------


def test_registry_names_and_dirs() -> None:
    assert dataset_names() == NAMES and sorted(DATASETS) == NAMES
    assert not requires_dir("digits") and not requires_dir("mnist5k")
    assert all(
        requires_dir(n) for n in ("fashion-mnist", "mnist", "emnist-digits", "cifar10", "ardis")
    )
    assert default_dir("fashion-mnist") == "/usr/share/datasets/fashion-mnist"
    assert default_dir("mnist") is None and default_dir("digits") is None
    check_available("digits", None)
    check_available("mnist5k", "/ignored")


@pytest.mark.parametrize("call", [load_dataset, requires_dir, default_dir, check_available])
def test_unknown_name_lists_valid_names(call) -> None:
    with pytest.raises(ConfigError, match="unknown data.name 'svhn'; valid: " + ", ".join(NAMES)):
        call("svhn")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data directory not found: {tmp_path / 'absent'}"):
        load_dataset("mnist", tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"mnist: no data directory given; set \[data\] dir"):
        check_available("mnist", None)


def test_stratified_split_is_exact_and_fixed() -> None:
    labels = np.repeat(np.arange(3), [47, 33, 20])
    train, test = stratified_split(labels, 25, seed=0)
    assert len(test) == 25 and len(train) == 75
    assert sorted(np.concatenate([train, test])) == list(range(100))
    assert list(np.bincount(labels[test])) == [12, 8, 5]  # 11.75, 8.25, 5 by largest remainder
    again = stratified_split(labels, 25, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


# --- real data shipped with packages or in the shared folder ------------------------------------


def test_digits_real() -> None:
    d = load_dataset("digits")
    assert d.x_train.shape == (1438, 1, 8, 8) and d.x_test.shape == (359, 1, 8, 8)
    assert d.x_train.dtype == np.float32 and d.x_train.max() == 1.0 and d.x_train.min() == 0.0
    assert set(np.unique(d.y_test)) == set(range(10)) and d.num_classes == 10


def test_mnist5k_real() -> None:
    d = load_dataset("mnist5k")
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.x_train.max() == 1.0 and d.x_train.min() == 0.0
    assert d.y_train.dtype == np.int64 and d.num_classes == 10
    assert list(np.bincount(d.y_train)) == [400] * 10 and list(np.bincount(d.y_test)) == [100] * 10
    assert np.array_equal(load_dataset("mnist5k").y_train, d.y_train)  # the split is fixed


def test_edge_case_sets_real() -> None:
    if not (SHARED_DATA / "ardis_iv.npz").is_file():
        pytest.skip(
            f"shared data folder {SHARED_DATA} with ardis_iv.npz is absent "
            f"(only in the dev workspace)"
        )
    x_train, y_train, x_test, y_test = load_ardis(SHARED_DATA)
    assert x_train.shape == (6600, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert list(np.bincount(y_train)) == [660] * 10 and list(np.bincount(y_test)) == [100] * 10
    sw_train, sw_test = load_southwest(SHARED_DATA)
    assert sw_train.shape == (784, 3, 32, 32) and sw_test.shape == (196, 3, 32, 32)
    assert sw_train.dtype == np.float32 and 0.0 <= sw_train.min() and sw_train.max() <= 1.0


def test_fashion_mnist_real() -> None:
    if not FASHION_DIR.is_dir():
        pytest.skip(f"{FASHION_DIR} is absent; install the Debian package dataset-fashion-mnist")
    d = load_dataset("fashion-mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert list(np.bincount(d.y_test)) == [1000] * 10
