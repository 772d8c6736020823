"""Readers for the raw on-disk formats: IDX (gzipped or not), NumPy .npz, pickled arrays.

Every reader raises ``DataError`` with a one-line message naming the file when the file
is missing, truncated or not in the expected format, so a user learns which file to fix.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fedsec_core.errors import DataError

# IDX element type codes (http://yann.lecun.com/exdb/mnist/, "the IDX file format"); data
# are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# The only globals a pickled NumPy array (or a dict / list of them, as in the CIFAR-10
# batches) needs. Anything else in a data file is refused rather than executed.
_PICKLE_GLOBALS = frozenset(
    {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)


def find_file(label: str, dirs: Sequence[Path], names: Iterable[str], hint: str) -> Path:
    """The first of ``dir/name`` then ``dir/name.gz`` that exists, over ``dirs`` in order.

    A plain file wins over its .gz twin because it reads faster (torchvision keeps both).
    Raises DataError naming the first place looked and, if any, the other folders.
    """
    names = list(names)
    for folder in dirs:
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    also = f" (also looked in {', '.join(map(str, dirs[1:]))})" if len(dirs) > 1 else ""
    raise DataError(f"{label}: file not found: {dirs[0] / names[0]}(.gz){also}; {hint}")


def read_bytes(path: Path, label: str) -> bytes:
    """The content of ``path``, gunzipped when the name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{label}: file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{label}: cannot read {path}: {exc}; replace the file with a good copy"
        ) from None


def read_idx(path: Path, label: str = "idx") -> np.ndarray:
    """The array stored in IDX file ``path`` (plain or .gz), in native byte order.

    Layout: two zero bytes, a type code (0x08 = unsigned byte, ...), the number of
    dimensions, one big-endian uint32 size per dimension, then the data. The file must
    hold exactly the bytes that the header promises.
    """
    raw = read_bytes(path, label)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{label}: {path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'}); "
            "expected 0000 + type code 08..0e + number of dimensions"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{label}: {path} is truncated inside its IDX header; replace the file")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{label}: {path} has {len(raw)} bytes but its IDX header {shape} promises {expected}; "
            "the file is truncated or corrupt, replace it"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def read_npz(path: Path, keys: Sequence[str], label: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of .npz archive ``path`` (no pickles allowed)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(
                    f"{label}: {path} lacks array(s) {', '.join(missing)}; "
                    f"it must hold {', '.join(keys)} (it has {', '.join(archive.files) or 'none'})"
                )
            return {k: archive[k] for k in keys}
    except FileNotFoundError:
        raise DataError(f"{label}: file not found: {path}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{label}: cannot read {path} as .npz: {exc}") from None


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays, dicts, lists and scalars, and nothing else."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path, label: str) -> object:
    """Unpickle ``path`` (bytes keys kept as bytes, as in the Python 2 CIFAR-10 batches).

    Only the globals a NumPy array needs may appear, so a data file cannot run code.
    """
    raw = read_bytes(path, label)
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # a malformed pickle can fail in many ways; all mean "bad file"
        raise DataError(
            f"{label}: cannot unpickle {path}: {exc}; expected pickled NumPy arrays"
        ) from None


def check_images(images: np.ndarray, shape: tuple[int, ...], path: Path, label: str) -> np.ndarray:
    """``images`` if it is a uint8 array of per-image ``shape``; DataError otherwise."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != shape:
        got = (
            f"{images.dtype} {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        expected = ", ".join(map(str, shape))
        raise DataError(
            f"{label}: {path} holds {got}; expected uint8 images of shape (N, {expected})"
        )
    return images


def check_labels(
    labels: np.ndarray, count: int, num_classes: int, path: Path, label: str
) -> np.ndarray:
    """``labels`` as int64 if there are ``count`` of them, all in ``range(num_classes)``."""
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{label}: {path} holds labels {labels.dtype} {labels.shape}; "
            f"expected {count} integer labels"
        )
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{label}: {path} has labels outside 0..{num_classes - 1}")
    return labels.astype(np.int64)
