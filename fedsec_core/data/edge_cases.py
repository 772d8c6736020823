"""Edge-case sources of the "Attack of the Tails" backdoor: ARDIS IV digits, Southwest planes.

Both read either the ``.npz`` archives of the shared data folder or the original releases
(ARDIS: four space-separated CSV files with one-hot labels; Southwest: two pickled NumPy
arrays). The folder is always an argument: a user's clone has no default location.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsec_core.data.base import to_unit_nchw
from fedsec_core.data.formats import check_images, check_labels, read_npz, read_pickle
from fedsec_core.errors import DataError

ARDIS_NPZ = "ardis_iv.npz"
ARDIS_CSV = {
    "x_train": "ARDIS_train_2828.csv",
    "y_train": "ARDIS_train_labels.csv",
    "x_test": "ARDIS_test_2828.csv",
    "y_test": "ARDIS_test_labels.csv",
}
SOUTHWEST_NPZ = "southwest_airplanes.npz"
SOUTHWEST_PKL = {
    "x_train": "southwest_images_new_train.pkl",
    "x_test": "southwest_images_new_test.pkl",
}

_ARDIS_HINT = (
    f"the folder must hold {ARDIS_NPZ} or the ARDIS IV CSV release "
    f"({', '.join(ARDIS_CSV.values())})"
)
_SOUTHWEST_HINT = f"the folder must hold {SOUTHWEST_NPZ} or {' and '.join(SOUTHWEST_PKL.values())}"


def locate_ardis(folder: str | Path) -> dict[str, Path]:
    """The ARDIS files in ``folder``: {"npz": path} or the four CSV paths by array name."""
    return _locate(Path(folder), "ardis", ARDIS_NPZ, ARDIS_CSV, _ARDIS_HINT)


def locate_southwest(folder: str | Path) -> dict[str, Path]:
    """The Southwest files in ``folder``: {"npz": path} or the two pickle paths."""
    return _locate(Path(folder), "southwest", SOUTHWEST_NPZ, SOUTHWEST_PKL, _SOUTHWEST_HINT)


def _locate(
    folder: Path, label: str, npz: str, originals: dict[str, str], hint: str
) -> dict[str, Path]:
    """The .npz if present, else every original file; DataError naming what is missing."""
    if not folder.is_dir():
        raise DataError(f"{label}: data directory not found: {folder}; {hint}")
    if (folder / npz).is_file():
        return {"npz": folder / npz}
    paths = {key: folder / name for key, name in originals.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if len(missing) == len(paths):
        raise DataError(f"{label}: file not found: {folder / npz}; {hint}")
    if missing:
        raise DataError(f"{label}: file not found: {', '.join(missing)}; {hint}")
    return paths


def load_ardis(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ARDIS IV as (x_train, y_train, x_test, y_test): float32 (N, 1, 28, 28) in [0, 1],
    int64 labels.

    6,600 train and 1,000 test digits, white on black like MNIST, labels 0-9.
    """
    files = locate_ardis(folder)
    if "npz" in files:
        arrays = read_npz(files["npz"], list(ARDIS_CSV), "ardis")
        source = {key: files["npz"] for key in arrays}
    else:
        arrays = {key: _read_ardis_csv(path, key.startswith("y")) for key, path in files.items()}
        source = files
    out = []
    for split in ("train", "test"):
        x = check_images(arrays[f"x_{split}"], (28, 28), source[f"x_{split}"], "ardis")
        y = check_labels(arrays[f"y_{split}"], len(x), 10, source[f"y_{split}"], "ardis")
        out += [to_unit_nchw(x), y]
    return out[0], out[1], out[2], out[3]


def _read_ardis_csv(path: Path, one_hot: bool) -> np.ndarray:
    """One ARDIS CSV file: pixel rows as uint8 (N, 28, 28), or one-hot rows as labels (N,)."""
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"ardis: cannot read {path}: {exc}; expected space-separated numbers"
        ) from None
    width = 10 if one_hot else 28 * 28
    if table.shape[1] != width:
        raise DataError(f"ardis: {path} has {table.shape[1]} values a row; expected {width}")
    if one_hot:
        if not (np.isin(table, (0.0, 1.0)).all() and (table.sum(axis=1) == 1).all()):
            raise DataError(
                f"ardis: {path} must hold one-hot rows (a single 1 among ten 0/1 values)"
            )
        return table.argmax(axis=1)
    if not (np.all(table == np.round(table)) and table.min() >= 0 and table.max() <= 255):
        raise DataError(f"ardis: {path} must hold whole pixel values in 0..255")
    return table.astype(np.uint8).reshape(-1, 28, 28)


def load_southwest(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Southwest Airlines planes as (x_train, x_test): float32 (N, 3, 32, 32) in [0, 1].

    784 train and 196 test photos at CIFAR-10 resolution; they carry no label of their
    own (the attack assigns one).
    """
    files = locate_southwest(folder)
    if "npz" in files:
        arrays = read_npz(files["npz"], list(SOUTHWEST_PKL), "southwest")
        source = {key: files["npz"] for key in arrays}
    else:
        arrays = {key: read_pickle(path, "southwest") for key, path in files.items()}
        source = files
    x_train, x_test = (
        to_unit_nchw(
            check_images(arrays[key], (32, 32, 3), source[key], "southwest"), channels_last=True
        )
        for key in ("x_train", "x_test")
    )
    return x_train, x_test
