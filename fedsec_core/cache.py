"""Where fedsec keeps what it computes once and reuses: ``~/.cache/fedsec/<kind>``.

Two things are cached on disk, each under a key of everything it depends on: the
pre-trained initial model (``pretrained/``, :mod:`fedsec.pretrain`) and the edge-case
tail density (``tail-density/``, :mod:`attacks.edge_sources`). ``FEDSEC_CACHE`` moves
the whole cache (tests point it at a temporary folder); a config key may name the
folder of one kind (``train.pretrain_cache``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

CACHE_ENV = "FEDSEC_CACHE"
DEFAULT_ROOT = "~/.cache/fedsec"


def cache_dir(kind: str, override: str | Path = "") -> Path:
    """The folder of cached ``kind`` files: ``override`` as given when set, else
    ``$FEDSEC_CACHE/<kind>``, else ``~/.cache/fedsec/<kind>``."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get(CACHE_ENV, DEFAULT_ROOT)).expanduser() / kind


def array_digest(*arrays: np.ndarray) -> str:
    """A content hash of arrays: dtype, shape and every byte of each."""
    h = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()
