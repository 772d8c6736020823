"""Split a labelled training set among federated clients.

``partition_indices(labels, num_clients, scheme, seed=...)`` returns one sorted index
array per client. Schemes:

- ``iid``: a seeded random permutation of all examples cut into ``num_clients`` parts of
  equal size (sizes differ by at most one). Every example is used exactly once. This is
  what flwr-datasets' ``IidPartitioner`` gives on a shuffled data set.
- ``dirichlet``: label skew. For every class c, proportions p_c ~ Dirichlet(alpha, ...,
  alpha) over the clients decide which share of class c each client gets (the class's
  examples, in index order, are cut at the cumulative proportions). Small alpha (0.1):
  each client sees few classes and sizes vary a lot; large alpha (100): close to IID.
  The whole draw is repeated while some client has fewer than ``min_size`` examples; 11
  draws in all, then ConfigError. Every example is used exactly once.
- ``pathological``: every client holds exactly ``classes_per_client`` classes. Client i
  gets class ``i mod C`` (C = number of classes) plus classes drawn at random until it
  has k distinct ones; each class's examples are then cut into equal parts among the
  clients holding it. With fewer clients than classes, some classes are left out.

``dirichlet`` and ``pathological`` reproduce, draw for draw, flwr-datasets 0.6.1's
``DirichletPartitioner(alpha=alpha, min_partition_size=min_size, self_balancing=False,
seed=seed)`` and ``PathologicalPartitioner(class_assignment_mode="first-deterministic",
seed=seed)`` (the same client sets; the tests compare them). They are re-implemented on
NumPy arrays because those partitioners read the label column row by row through Hugging
Face ``datasets`` (about 25 us a label, 6 s for EMNIST's 240,000) and return each client
through a ``Dataset.select`` (16 s for 3,383 clients), after a 3 s import.

``min_size`` is honoured by every scheme: a partition with a client below it raises
ConfigError saying what to change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsec_core.errors import ConfigError

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "pathological")
_DIRICHLET_DRAWS = 11  # as flwr-datasets: the first draw and 10 retries


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_size: int = 10,
    seed: int,
) -> list[np.ndarray]:
    """One sorted int64 array of example indices per client (see the module docstring)."""
    labels = _validate(labels, num_clients, scheme, alpha, classes_per_client, min_size)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        owner = _iid_owner(len(labels), num_clients, rng)
    elif scheme == "dirichlet":
        owner = _dirichlet_owner(labels, num_clients, alpha, min_size, rng)
    else:
        owner = _pathological_owner(labels, num_clients, classes_per_client, rng)
    parts = _split_by_owner(owner, num_clients)
    _check_min_size(parts, min_size, scheme)
    return parts


def _validate(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    alpha: float,
    classes_per_client: int,
    min_size: int,
) -> np.ndarray:
    """The labels as an int64 array, once every argument is known to be valid."""
    if scheme not in PARTITION_SCHEMES:
        raise ConfigError(
            f"unknown partition scheme {scheme!r}; valid: {', '.join(PARTITION_SCHEMES)}"
        )
    labels = np.asarray(labels)
    if (
        labels.ndim != 1
        or not np.issubdtype(labels.dtype, np.integer)
        or (labels.size and labels.min() < 0)
    ):
        raise ConfigError(
            f"labels must be a 1-D array of non-negative integers, "
            f"got {labels.dtype} {labels.shape}"
        )
    n = len(labels)
    if not 1 <= num_clients <= n:
        raise ConfigError(
            f"[data] num_clients must be in 1..{n} (the number of training examples), "
            f"got {num_clients}"
        )
    if min_size < 1 or min_size * num_clients > n:
        raise ConfigError(
            f"[data] min_partition_size must be in 1..{n // num_clients} ({n} examples among "
            f"{num_clients} clients), got {min_size}"
        )
    if scheme == "dirichlet" and not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"[data] alpha must be a finite number > 0, got {alpha}")
    num_classes = len(np.unique(labels))
    if scheme == "pathological" and not 1 <= classes_per_client <= num_classes:
        raise ConfigError(
            f"[data] classes_per_client must be in 1..{num_classes} (the number of classes), "
            f"got {classes_per_client}"
        )
    return labels.astype(np.int64, copy=False)


def _iid_owner(n: int, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Client of each example: a random permutation cut into equal parts."""
    owner = np.empty(n, dtype=np.int64)
    for client, members in enumerate(np.array_split(rng.permutation(n), num_clients)):
        owner[members] = client
    return owner


def _dirichlet_owner(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Client of each example under Dirichlet(alpha) label skew, redrawn until min_size holds."""
    alphas = np.full(num_clients, float(alpha))
    classes = np.unique(labels)
    for _ in range(_DIRICHLET_DRAWS):
        owner = np.empty(len(labels), dtype=np.int64)
        for c in classes:
            members = np.flatnonzero(labels == c)
            cuts = (np.cumsum(rng.dirichlet(alphas)) * len(members)).astype(np.int64)[:-1]
            owner[members] = np.repeat(
                np.arange(num_clients), np.diff(cuts, prepend=0, append=len(members))
            )
        smallest = int(np.bincount(owner, minlength=num_clients).min())
        if smallest >= min_size:
            return owner
    raise ConfigError(
        f"dirichlet partition: some client got fewer than [data] min_partition_size = {min_size} "
        f"examples in all {_DIRICHLET_DRAWS} draws (smallest in the last draw: {smallest}); lower "
        f"[data] min_partition_size, raise [data] alpha (now {alpha}) "
        f"or use fewer clients (now {num_clients})"
    )


def _pathological_owner(
    labels: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> np.ndarray:
    """Client of each example when each client holds ``classes_per_client`` classes (-1: unused)."""
    classes, counts = np.unique(labels, return_counts=True)
    held = []
    for client in range(num_clients):
        own = [classes[client % len(classes)]]
        while len(own) < classes_per_client:
            drawn = rng.choice(classes, size=1)[0]
            if drawn not in own:
                own.append(drawn)
        held.append(own)
    owner = np.full(len(labels), -1, dtype=np.int64)
    for c, count in zip(classes, counts, strict=True):
        holders = [client for client, own in enumerate(held) if c in own]
        if not holders:
            continue
        if len(holders) > count:
            raise ConfigError(
                f"pathological partition: class {c} has {count} examples "
                f"but {len(holders)} clients hold it; "
                f"use fewer clients or a smaller [data] classes_per_client"
            )
        for client, members in zip(
            holders, np.array_split(np.flatnonzero(labels == c), len(holders)), strict=True
        ):
            owner[members] = client
    return owner


def _split_by_owner(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Sorted index array of each client, given each example's client (-1: nobody)."""
    used = np.flatnonzero(owner >= 0)
    grouped = used[np.argsort(owner[used], kind="stable")]  # stable: ascending within a client
    bounds = np.cumsum(np.bincount(owner[used], minlength=num_clients))[:-1]
    return [part.astype(np.int64, copy=False) for part in np.split(grouped, bounds)]


def _check_min_size(parts: Sequence[np.ndarray], min_size: int, scheme: str) -> None:
    """ConfigError if some client got fewer than ``min_size`` examples."""
    sizes = [len(p) for p in parts]
    smallest = min(sizes)
    if smallest < min_size:
        raise ConfigError(
            f"{scheme} partition: client {sizes.index(smallest)} gets {smallest} examples, "
            f"fewer than [data] min_partition_size = {min_size}; "
            f"lower min_partition_size or use fewer clients"
        )


def label_histogram(
    labels: np.ndarray, partitions: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Counts of each class at each client: an int64 (num_clients, num_classes) array."""
    labels = np.asarray(labels)
    sizes = [len(p) for p in partitions]
    if not partitions or not sum(sizes):
        return np.zeros((len(partitions), num_classes), dtype=np.int64)
    client_labels = labels[np.concatenate(partitions)]
    if client_labels.min() < 0 or client_labels.max() >= num_classes:
        raise ConfigError(
            f"labels must be in 0..{num_classes - 1} for a {num_classes}-class histogram"
        )
    client = np.repeat(np.arange(len(partitions)), sizes)
    flat = np.bincount(
        client * num_classes + client_labels, minlength=len(partitions) * num_classes
    )
    return flat.reshape(len(partitions), num_classes).astype(np.int64)


def plot_label_histogram(
    hist: np.ndarray,
    path: str | Path,
    classes: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of ``hist``: one horizontal bar per client, stacked by class; returns the path.

    Each class is one collection of rectangles (not one artist per bar), so thousands of
    clients plot in about a second. Uses matplotlib's object API with the Agg canvas: no
    display needed, pyplot's global state untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    hist = np.asarray(hist)
    num_clients, num_classes = hist.shape
    names = list(classes) if classes is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names for a histogram of {num_classes} classes")
    fig = Figure(figsize=(9, min(2 + 0.25 * num_clients, 20)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = np.arange(num_clients)
    right = np.cumsum(hist, axis=1)
    for c, colour in enumerate(_class_colours(num_classes)):
        left = right[:, c] - hist[:, c]
        top, bottom = rows - 0.45, rows + 0.45
        corners = [(left, top), (right[:, c], top), (right[:, c], bottom), (left, bottom)]
        verts = np.stack([np.stack(xy, axis=-1) for xy in corners], axis=1)  # (clients, 4, 2)
        ax.add_collection(PolyCollection(verts, facecolors=[colour], linewidths=0, label=names[c]))
    ax.set_xlim(0, max(int(right[:, -1].max()) if num_clients else 0, 1) * 1.02)
    ax.set_ylim(num_clients - 0.5, -0.5)  # client 0 on top
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("examples")
    ax.set_ylabel("client")
    ax.set_title(title or f"label distribution over {num_clients} clients")
    ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def _class_colours(num_classes: int) -> list:
    """One distinct colour per class: tab10 / tab20 when they suffice, else viridis."""
    from matplotlib import colormaps

    if num_classes <= 10:
        return [colormaps["tab10"](i) for i in range(num_classes)]
    if num_classes <= 20:
        return [colormaps["tab20"](i) for i in range(num_classes)]
    return [colormaps["viridis"](x) for x in np.linspace(0, 1, num_classes)]
