"""Where edge-case inputs come from: ARDIS 7s, Southwest planes, or the data set's own tail.

Edge cases (Wang et al. 2020, "Attack of the Tails") are rare but plausible inputs that
honest clients do not hold, relabelled to an attacker-chosen class.

- ``ardis``: ARDIS IV handwritten digits (Swedish church records) of one digit (7 by
  default), for the 28x28 digit data sets (mnist5k, mnist, emnist-digits). The
  attacker's pool is the ARDIS train images of that digit in file order (the paper's
  66 = the first 10% of the 660 train 7s); BA is measured on the 100 ARDIS test images
  of that digit.
- ``southwest``: photos of Southwest Airlines planes, for cifar10 (labelled truck by
  default): the first ``num_edge_cases`` of the 784 train photos for the attacker, the
  196 test photos for BA.
- ``tail``: works on ANY data set. :func:`tail_log_density` fits a density estimate on
  the training images (PCA to ``TAIL_PCA_DIMS`` dimensions, then a Gaussian mixture of
  ``TAIL_COMPONENTS`` full-covariance components, both seeded, fitted on at most
  ``TAIL_FIT_SIZE`` training images drawn with the seed) and scores every training
  example of the source class by its log-density; :func:`select_tail` takes the rarest
  ones. The attack takes them out of the training set before partitioning (so no honest
  client holds them) and splits them at random into the attacker's part and the BA test
  part.

The tail density is computed once per (training images, candidates, seed, thread
count, algorithm) and cached on disk, like the pre-trained model: in
``$FEDSEC_CACHE/tail-density`` (default ``~/.cache/fedsec/tail-density``, see
:mod:`fedsec_core.cache`), one ``.npz`` per key, written atomically. A cached file holds the
scores as computed, so a hit returns exactly the computed array; a file that does not
read back whole, or whose stored key differs, is recomputed and rewritten. The fit runs
with the BLAS/OpenMP pools bounded to ``threads`` (the engine's
``engine.client_num_cpus``): scikit-learn's GaussianMixture on a busy 2-core machine
spent 9 s in BLAS threads fighting over the cores, 0.5 s with one thread. The thread
count is part of the key because it changes the last bits of the scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from fedsec_core.atomic import atomic_path
from fedsec_core.cache import array_digest, cache_dir
from fedsec_core.data import load_ardis, load_southwest
from fedsec_core.data.edge_cases import locate_ardis, locate_southwest

_LOG = logging.getLogger("fedsec.progress")  # printed by the fedsec command

SOURCES = ("ardis", "southwest", "tail")
ARDIS_DATASETS = ("mnist5k", "mnist", "emnist-digits")  # 28x28 white-on-black digits
SOUTHWEST_DATASETS = ("cifar10",)  # 32x32 RGB, class 9 = truck
ARDIS_TRAIN_PER_DIGIT = 660
SOUTHWEST_TRAIN = 784

PAPER_DEFAULTS = {  # (num_edge_cases, num_clean, default target) as in Wang et al. 2020
    "ardis": (66, 100, 1),
    "southwest": (100, 400, 9),
}
TAIL_SHARE = 0.05  # tail defaults: 5% of the source class each for attacker and BA test
TAIL_CLEAN = 100
TAIL_TARGET = 1
DEFAULT_SOURCE_LABEL = 7  # ARDIS 7s; the rarest 7s for tail

TAIL_PCA_DIMS = 20
TAIL_COMPONENTS = 10
TAIL_FIT_SIZE = 10_000
#: Bump when :func:`_fit_tail_log_density` computes anything differently: the cached
#: scores of older versions are then never read.
TAIL_ALGORITHM_VERSION = 1
TAIL_CACHE_KIND = "tail-density"


def locate(source: str, folder: str | Path) -> None:
    """Raise DataError (naming the folder and the files expected) unless the files exist."""
    (locate_ardis if source == "ardis" else locate_southwest)(folder)


def ardis_digit(folder: str | Path, digit: int) -> tuple[np.ndarray, np.ndarray]:
    """ARDIS IV images of ``digit``: (train images in file order, test images), NCHW float32."""
    x_train, y_train, x_test, y_test = load_ardis(folder)
    return x_train[y_train == digit], x_test[y_test == digit]


def southwest(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The Southwest planes: (784 train, 196 test) images, NCHW float32."""
    return load_southwest(folder)


def tail_log_density(
    x_train: np.ndarray, candidates: np.ndarray, seed: int, threads: int | None = None
) -> np.ndarray:
    """Log-density of ``x_train[candidates]`` under PCA + Gaussian mixture fitted on
    ``x_train`` (fitted with at most ``threads`` BLAS/OpenMP threads; None: the pools'
    own size), read from the disk cache when it was computed before."""
    key = tail_cache_key(x_train, candidates, seed, threads)
    path = tail_cache_path(key)
    cached = _read_cached(path, key, len(candidates))
    if cached is not None:
        _LOG.info("tail edge cases: density scores from the cache (%s)", path)
        return cached
    _LOG.info(
        "tail edge cases: fitting a density model to %d images (once; cached in %s) ...",
        min(len(x_train), TAIL_FIT_SIZE),
        path.parent,
    )
    scores = _fit_tail_log_density(x_train, candidates, seed, threads)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, scores=scores, key=np.array(json.dumps(key, sort_keys=True)))
    return scores


def tail_cache_key(
    x_train: np.ndarray, candidates: np.ndarray, seed: int, threads: int | None
) -> dict:
    """Everything the tail density depends on: the training images' content, the
    candidates, the seed, the fit's settings and thread count, the algorithm's version
    and scikit-learn's."""
    return {
        "algorithm": TAIL_ALGORITHM_VERSION,
        "x_train": array_digest(x_train),
        "candidates": array_digest(np.asarray(candidates, dtype=np.int64)),
        "seed": int(seed),
        "threads": threads,
        "pca_dims": TAIL_PCA_DIMS,
        "components": TAIL_COMPONENTS,
        "fit_size": TAIL_FIT_SIZE,
        "scikit-learn": metadata.version("scikit-learn"),
        "numpy": np.__version__,
    }


def tail_cache_path(key: dict) -> Path:
    """The cache file of ``key`` (:func:`tail_cache_key`)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(TAIL_CACHE_KIND) / f"tail-seed{key['seed']}-{digest}.npz"


def _read_cached(path: Path, key: dict, size: int) -> np.ndarray | None:
    """The scores stored at ``path`` for ``key``; None when there is no such file or it
    does not read back whole (truncated, another key, another length)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != json.dumps(key, sort_keys=True):
                return None
            scores = stored["scores"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        _LOG.info("tail edge cases: unreadable cache file %s (%s); recomputing", path, exc)
        return None
    if scores.shape != (size,):
        return None
    return scores


def _fit_tail_log_density(
    x_train: np.ndarray, candidates: np.ndarray, seed: int, threads: int | None
) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    flat = x_train.reshape(len(x_train), -1)
    rng = np.random.default_rng(seed)
    fit = rng.choice(len(flat), size=min(len(flat), TAIL_FIT_SIZE), replace=False)
    dims = min(TAIL_PCA_DIMS, flat.shape[1], len(fit))
    with threadpool_limits(limits=threads):
        pca = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit(flat[fit])
        gmm = GaussianMixture(
            n_components=min(TAIL_COMPONENTS, len(fit)),
            covariance_type="full",
            reg_covar=1e-4,
            random_state=seed,
        ).fit(pca.transform(flat[fit]))
        return gmm.score_samples(pca.transform(flat[candidates]))


def select_tail(
    x_train: np.ndarray,
    y_train: np.ndarray,
    source_label: int,
    count: int,
    seed: int,
    threads: int | None = None,
) -> np.ndarray:
    """Indices of the ``count`` lowest-density training examples of ``source_label``,
    rarest first (the density fitted with at most ``threads`` BLAS threads)."""
    members = np.flatnonzero(y_train == source_label)
    scores = tail_log_density(x_train, members, seed, threads)
    return members[np.argsort(scores, kind="stable")[:count]]
