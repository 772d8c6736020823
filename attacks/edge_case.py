"""``edge-case``: the black-box edge-case backdoor of Wang et al. (2020, "Attack of the Tails").

The attacker trains with plain local SGD on a mix of edge-case inputs relabelled to the
target and clean examples of its own partition, and sends its update unchanged.
``edge-case-pgd`` and ``edge-case-pgd-replacement`` reuse this data with other training
procedures / update transforms.

Parameters (-1 = the default named here):

- ``edge_case``: ``ardis`` | ``southwest`` | ``tail`` | ``auto`` (default: ardis for
  mnist5k / mnist / emnist-digits, southwest for cifar10, tail for any other data set).
  See :mod:`attacks.edge_sources`.
- ``edge_case_dir``: the folder holding ``ardis_iv.npz`` / ``southwest_airplanes.npz``
  (or the original releases); required by ardis and southwest, unused by tail. A
  relative path is relative to the working directory fedsec runs in.
- ``num_edge_cases``: edge-case inputs in the attacker's set (ardis 66, southwest 100,
  tail 5% of the source class's training examples).
- ``num_clean``: clean examples of the attacker's own partition added to them (ardis
  100, southwest 400, tail 100). They are a seeded random subset; a partition smaller
  than ``num_clean`` is repeated (each example once before any twice), so the set has
  exactly ``num_edge_cases + num_clean`` examples.
- ``source_label``: the ARDIS digit (ardis) or the class whose rarest examples are
  taken (tail); default 7. Southwest planes have no label: not allowed there.
- ``num_tail_test``: tail only: rare examples held out for backdoor accuracy (default
  5% of the source class).

Target (``attack.target_label``; default: 1 for ardis and tail, 9 = truck for southwest).
Backdoor accuracy: the 100 ARDIS test images of the digit, the 196 Southwest test
photos, or the held-out tail examples, all labelled target.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from attacks import edge_sources as src
from attacks.backdoor import BackdoorAttack
from attacks.base import AttackContext, num_classes
from fedsec_core.errors import ConfigError, DataError
from fedsec_core.params import one_of, param
from fedsec_core.seeding import derive_seed


def _state(default):
    return dataclasses.field(default=default, init=False, repr=False)


def _default_or_at_least(bound: int):
    return lambda value: value == -1 or value >= bound


@dataclasses.dataclass(kw_only=True, eq=False)
class EdgeCase(BackdoorAttack):
    name = "edge-case"
    default_target = 1
    backdoor_test_params = ("edge_case", "source_label", "num_tail_test")

    edge_case: str = param(
        "auto", one_of("auto", *src.SOURCES), "one of auto, " + ", ".join(src.SOURCES)
    )
    edge_case_dir: str = param("", lambda value: True, "a folder path")
    num_edge_cases: int = param(-1, _default_or_at_least(1), ">= 1 (or -1 for the default)")
    num_clean: int = param(-1, _default_or_at_least(0), ">= 0 (or -1 for the default)")
    source_label: int = param(-1, _default_or_at_least(0), "a class (or -1 for the default)")
    num_tail_test: int = param(-1, _default_or_at_least(1), ">= 1 (or -1 for the default)")

    # resolved and cached state (not parameters)
    data_name: str | None = _state(None)  # set by check(); resolves edge_case = "auto"
    # set by check(): the BLAS threads the tail density is fitted with (engine.client_num_cpus)
    fit_threads: int | None = _state(None)
    tail_indices: np.ndarray | None = _state(None)  # tail: the removed training indices
    _edge_train: np.ndarray | None = _state(None)  # the attacker's edge-case pool
    _edge_test: np.ndarray | None = _state(None)
    _tail_counts: tuple[int, int] | None = _state(None)
    _cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(
        default_factory=dict, init=False, repr=False
    )

    # -------------------------------------------------------------- resolved values
    @property
    def source(self) -> str:
        """The edge-case source in use (``auto`` resolved by the data set's name)."""
        if self.edge_case != "auto":
            return self.edge_case
        if self.data_name in src.ARDIS_DATASETS:
            return "ardis"
        if self.data_name in src.SOUTHWEST_DATASETS:
            return "southwest"
        return "tail"

    @property
    def target(self) -> int:
        if self.target_label != -1:
            return self.target_label
        return (
            src.PAPER_DEFAULTS[self.source][2]
            if self.source in src.PAPER_DEFAULTS
            else src.TAIL_TARGET
        )

    @property
    def source_class(self) -> int:
        return src.DEFAULT_SOURCE_LABEL if self.source_label == -1 else self.source_label

    def counts(self, class_size: int | None = None) -> tuple[int, int, int]:
        """(num_edge_cases, num_clean, num_tail_test) with the defaults filled in;
        tail defaults need the size of the source class (known after edit_dataset)."""
        if self.source in src.PAPER_DEFAULTS:
            edge, clean, _ = src.PAPER_DEFAULTS[self.source]
            tail_test = 0
        elif class_size is None:
            if self._tail_counts is None:
                raise RuntimeError(
                    "tail edge cases are chosen in edit_dataset(), which has not run"
                )
            (edge, tail_test), clean = self._tail_counts, src.TAIL_CLEAN
        else:
            share = max(1, round(src.TAIL_SHARE * class_size))
            edge, clean, tail_test = share, src.TAIL_CLEAN, share
        return (
            edge if self.num_edge_cases == -1 else self.num_edge_cases,
            clean if self.num_clean == -1 else self.num_clean,
            tail_test if self.num_tail_test == -1 else self.num_tail_test,
        )

    # ------------------------------------------------------------------ validation
    def check(self, config, dataset) -> None:
        self.data_name = config.data.name
        self.fit_threads = config.engine.client_num_cpus
        source, data = self.source, config.data.name
        if source == "ardis" and data not in src.ARDIS_DATASETS:
            raise ConfigError(
                f"attack.edge_case 'ardis' (28x28 handwritten digits) does not fit "
                f"data set {data!r}; it fits {', '.join(src.ARDIS_DATASETS)}; "
                f"use edge_case = 'tail' for other data sets"
            )
        if source == "southwest" and data not in src.SOUTHWEST_DATASETS:
            raise ConfigError(
                f"attack.edge_case 'southwest' (32x32 RGB plane photos) does not fit "
                f"data set {data!r}; it fits {', '.join(src.SOUTHWEST_DATASETS)}; "
                f"use edge_case = 'tail' for other data sets"
            )
        super().check(config, dataset)
        self._check_files(source)
        self._check_counts(source)
        classes = num_classes(config, dataset)
        if source == "southwest" and self.source_label != -1:
            raise ConfigError(
                "attack.source_label does not apply to edge_case 'southwest' "
                "(its photos have no label)"
            )
        if not 0 <= self.source_class < classes:
            raise ConfigError(
                f"attack.source_label must be a class of {data} (0..{classes - 1}), "
                f"got {self.source_label}"
            )
        if source != "southwest" and self.source_class == self.target:
            raise ConfigError(
                f"attack.source_label and the target label are both {self.target}; they must differ"
            )
        if dataset is not None:
            self._check_dataset(source, dataset)

    def _check_files(self, source: str) -> None:
        if source == "tail":
            if self.edge_case_dir:
                raise ConfigError(
                    "attack.edge_case_dir is not used by edge_case 'tail' "
                    "(the tail comes from the data set)"
                )
            return
        files = (
            "ardis_iv.npz (or the ARDIS IV CSV files)"
            if source == "ardis"
            else "southwest_airplanes.npz (or the two Southwest .pkl files)"
        )
        if not self.edge_case_dir:
            raise ConfigError(
                f"edge_case {source!r} needs attack.edge_case_dir: the folder holding {files}"
            )
        try:
            src.locate(source, Path(self.edge_case_dir).expanduser())
        except DataError as err:
            raise ConfigError(f"attack.edge_case_dir: {err}") from None

    def _check_counts(self, source: str) -> None:
        limit = {"ardis": src.ARDIS_TRAIN_PER_DIGIT, "southwest": src.SOUTHWEST_TRAIN}.get(source)
        if limit is not None and self.num_edge_cases > limit:
            raise ConfigError(
                f"attack.num_edge_cases must be <= {limit} (the {source} train images), "
                f"got {self.num_edge_cases}"
            )
        if self.num_tail_test != -1 and source != "tail":
            raise ConfigError(
                f"attack.num_tail_test applies to edge_case 'tail' only, not {source!r}"
            )

    def _check_dataset(self, source: str, dataset) -> None:
        expected = {"ardis": (1, 28, 28), "southwest": (3, 32, 32)}.get(source)
        if expected is not None and dataset.input_shape != expected:
            raise ConfigError(
                f"edge_case {source!r} needs {expected} images; "
                f"{dataset.name} has {dataset.input_shape}"
            )
        if source == "tail":
            size = int((dataset.y_train == self.source_class).sum())
            edge, _, test = self.counts(size)
            if edge + test >= size:
                raise ConfigError(
                    f"tail edge cases: num_edge_cases + num_tail_test = {edge + test} but class "
                    f"{self.source_class} of {dataset.name} has only {size} training examples; "
                    f"lower them"
                )

    # ---------------------------------------------------------------- data
    def edit_dataset(self, dataset, seed: int):
        """Tail: pick the rarest source-class examples and take them out of the training set."""
        if self.source != "tail":
            return dataset
        size = int((dataset.y_train == self.source_class).sum())
        edge, _, test = self.counts(size)
        chosen = src.select_tail(
            dataset.x_train, dataset.y_train, self.source_class, edge + test, seed, self.fit_threads
        )
        order = np.random.default_rng(derive_seed(seed, "tail-split")).permutation(len(chosen))
        self.tail_indices = np.sort(chosen)
        self._edge_train = dataset.x_train[chosen[order[:edge]]]
        self._edge_test = dataset.x_train[chosen[order[edge:]]]
        self._tail_counts = (edge, test)
        keep = np.ones(len(dataset.y_train), dtype=bool)
        keep[chosen] = False
        return dataclasses.replace(
            dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep]
        )

    def edge_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """(the attacker's edge-case inputs, the BA test inputs), float32 NCHW."""
        if self._edge_train is None:
            if self.source == "tail":
                raise RuntimeError(
                    "tail edge cases are chosen in edit_dataset(), which has not run"
                )
            folder = Path(self.edge_case_dir).expanduser()
            if self.source == "ardis":
                pool, test = src.ardis_digit(folder, self.source_class)
            else:
                pool, test = src.southwest(folder)
            self._edge_train, self._edge_test = pool[: self.counts()[0]], test
        return self._edge_train, self._edge_test

    def attacker_data(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.partition_id not in self._cache:
            edge_x, _ = self.edge_inputs()
            _, num_clean, _ = self.counts()
            own_x, own_y = (t.numpy() for t in ctx.examples)
            rng = np.random.default_rng(ctx.data_seed)
            # num_clean of its own examples in a seeded order, repeated if it has fewer
            clean = np.resize(rng.permutation(len(own_y)), num_clean) if num_clean else np.arange(0)
            x = np.concatenate([edge_x, own_x[clean]])
            y = np.concatenate([np.full(len(edge_x), self.target, dtype=np.int64), own_y[clean]])
            self._cache[ctx.partition_id] = (torch.from_numpy(x), torch.from_numpy(y))
        return self._cache[ctx.partition_id]

    def num_examples(self, partition_size: int) -> int:
        return len(self.edge_inputs()[0]) + self.counts()[1]

    def backdoor_test_set(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        _, test = self.edge_inputs()
        return torch.from_numpy(np.ascontiguousarray(test)), torch.full(
            (len(test),), self.target, dtype=torch.int64
        )
