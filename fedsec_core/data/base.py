"""The in-memory data set every loader returns, and the small helpers loaders share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Dataset:
    """A labelled image data set, already split into train and test.

    Images are float32 arrays of shape (N, C, H, W) scaled to [0, 1]; labels are int64
    class indices in ``range(num_classes)``; ``classes[i]`` is the human name of class i.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        """Catch a loader bug early: shapes, dtypes and class names must agree."""
        for x, y in ((self.x_train, self.y_train), (self.x_test, self.y_test)):
            if (
                x.dtype != np.float32
                or x.ndim != 4
                or y.dtype != np.int64
                or y.shape != x.shape[:1]
            ):
                raise ValueError(
                    f"{self.name}: images must be float32 (N, C, H, W) and labels int64 (N,); "
                    f"got {x.dtype} {x.shape} and {y.dtype} {y.shape}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in shape")
        if len(self.classes) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image: what a model's first layer must accept."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


def to_unit_nchw(
    images: np.ndarray, *, channels_last: bool = False, scale: float = 255.0
) -> np.ndarray:
    """Pixels as float32 (N, C, H, W) in [0, 1].

    ``images`` is (N, H, W) (one channel) or, with ``channels_last``, (N, H, W, C);
    ``scale`` is the largest pixel value of the source (255 for bytes, 16 for sklearn digits).
    """
    x = np.asarray(images, dtype=np.float32)
    x = x.transpose(0, 3, 1, 2) if channels_last else x[:, None, :, :]
    x = x / np.float32(scale)
    return np.ascontiguousarray(x)


def stratified_split(
    labels: np.ndarray, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/test index arrays with ``test_size`` test examples, class shares kept.

    Class c gets ``floor(n_c * test_size / n)`` test examples and the remainder goes to the
    classes with the largest fractional parts (largest-remainder rounding), so the total is
    exactly ``test_size``. Within each class the test examples are a seeded random subset;
    both index arrays come back in a seeded random order. NumPy only, so that loading a
    small data set does not pay the import of scikit-learn's model_selection (about 1 s).
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / len(labels)
    per_class = np.floor(exact).astype(np.int64)
    short = test_size - int(per_class.sum())
    per_class[np.argsort(-(exact - per_class), kind="stable")[:short]] += 1
    train, test = [], []
    for c, n_test in zip(classes, per_class, strict=True):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
