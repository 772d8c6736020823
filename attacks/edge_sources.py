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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsec.data import load_ardis, load_southwest
from fedsec.data.edge_cases import locate_ardis, locate_southwest

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


def tail_log_density(x_train: np.ndarray, candidates: np.ndarray, seed: int) -> np.ndarray:
    """Log-density of ``x_train[candidates]`` under PCA + Gaussian mixture fitted on ``x_train``."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    flat = x_train.reshape(len(x_train), -1)
    rng = np.random.default_rng(seed)
    fit = rng.choice(len(flat), size=min(len(flat), TAIL_FIT_SIZE), replace=False)
    dims = min(TAIL_PCA_DIMS, flat.shape[1], len(fit))
    pca = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit(flat[fit])
    gmm = GaussianMixture(
        n_components=min(TAIL_COMPONENTS, len(fit)),
        covariance_type="full",
        reg_covar=1e-4,
        random_state=seed,
    ).fit(pca.transform(flat[fit]))
    return gmm.score_samples(pca.transform(flat[candidates]))


def select_tail(
    x_train: np.ndarray, y_train: np.ndarray, source_label: int, count: int, seed: int
) -> np.ndarray:
    """Indices of the ``count`` lowest-density training examples of ``source_label``,
    rarest first."""
    members = np.flatnonzero(y_train == source_label)
    scores = tail_log_density(x_train, members, seed)
    return members[np.argsort(scores, kind="stable")[:count]]
