"""Train on a subset of units, return logits on fixed inputs: the datamodels' raw data.

A *subset trainer* is a picklable callable ``trainer(mask, seed) -> logits (N, K)`` with
``trainer.num_units``: it trains a fresh model on the units where the boolean ``mask`` is
true, with training randomness from ``seed``, and returns its logits on the trainer's
inputs. Two implementations:

- ``FederatedSubsetTrainer``: units are clients; the federation of the config runs on the
  in-process engine with ``train.exclude_clients`` = the units outside the mask
  (``data.partition_seed`` pinned, so every subset sees the same clients).
- ``ExampleSubsetTrainer``: units are training examples; central training with
  ``fedsec_core.training.train`` (the paper's setting).

``run_parallel`` runs many trainings in spawned worker processes with a tqdm bar;
``train_datamodel`` draws the masks (each unit kept with probability q), trains and fits.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from fedsec.config import ExperimentConfig
from fedsec.unlearning.datamodel import Datamodel, fit_datamodel
from fedsec_core.seeding import derive_seed, rng
from fedsec_core.training import predict_logits, train


# ------------------------------------------------------------------ federations
def federation_variant(config: ExperimentConfig, seed: int, exclude=()) -> ExperimentConfig:
    """``config`` with training seed ``seed`` on the same federation, without ``exclude``.

    The partition and attacker pool stay those of ``config`` (``data.partition_seed`` set
    to its federation seed); checkpoints are off and the in-process engine runs it.
    """
    ids = ",".join(str(int(c)) for c in sorted(exclude))
    config = copy.deepcopy(config)  # the variant shares no mutable part with the original
    return dataclasses.replace(
        config,
        seed=int(seed),
        data=dataclasses.replace(config.data, partition_seed=config.federation_seed),
        train=dataclasses.replace(config.train, exclude_clients=ids),
        engine=dataclasses.replace(config.engine, checkpoint_every=0, name="inprocess"),
    ).validate()


def train_federation(config: ExperimentConfig) -> dict[str, torch.Tensor]:
    """Train ``config``'s federation in memory, quietly (``fedsec.engines.train_inprocess``:
    the round loop of ``fedsec run``); the final global state dict."""
    from fedsec.engines import train_inprocess  # Flower lives behind this import

    logging.getLogger("flwr").setLevel(logging.WARNING)
    return train_inprocess(config).state


@dataclass
class FederatedSubsetTrainer:
    """Units = the config's clients; logits of the final global model on ``inputs``."""

    config: ExperimentConfig
    inputs: torch.Tensor

    @property
    def num_units(self) -> int:
        return self.config.data.num_clients

    def __call__(self, mask: np.ndarray, seed: int) -> torch.Tensor:
        from fedsec.task import get_task

        variant = federation_variant(self.config, seed, np.flatnonzero(~np.asarray(mask, bool)))
        model = get_task(variant).new_model()
        model.load_state_dict(train_federation(variant))
        return predict_logits(model, self.inputs)


@dataclass
class ExampleSubsetTrainer:
    """Units = the rows of (x, y); central training of ``model_fn()`` on the kept rows.

    ``model_fn`` must be picklable (a module-level function) to run with ``workers > 1``.
    """

    model_fn: Callable[[], torch.nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    inputs: torch.Tensor
    train_kwargs: dict[str, Any]

    @property
    def num_units(self) -> int:
        return len(self.y)

    def __call__(self, mask: np.ndarray, seed: int) -> torch.Tensor:
        keep = torch.from_numpy(np.flatnonzero(np.asarray(mask, bool)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init"))
            model = self.model_fn()
        train(model, self.x[keep], self.y[keep], seed=seed, **self.train_kwargs)
        return predict_logits(model, self.inputs)


# ------------------------------------------------------------------ parallel runs
_WORKER_FN: Callable | None = None


def _init_worker(fn: Callable, threads: int) -> None:
    global _WORKER_FN
    _WORKER_FN = fn
    torch.set_num_threads(threads)


def _call_worker(index: int, args: tuple) -> tuple[int, Any, float]:
    start = time.perf_counter()
    out = _WORKER_FN(*args)
    return index, out, time.perf_counter() - start


def run_parallel(
    fn: Callable,
    jobs: list[tuple],
    *,
    workers: int = 1,
    threads: int = 1,
    desc: str = "training",
    progress: bool = True,
) -> tuple[list[Any], list[float]]:
    """``[fn(*job) for job in jobs]`` in ``workers`` spawned processes (1: in this one).

    Each worker uses ``threads`` torch threads. Returns the results in job order and each
    job's own wall time in seconds.
    """
    from tqdm import tqdm

    results: list[Any] = [None] * len(jobs)
    times = [0.0] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    try:
        if workers <= 1:
            _init_worker(fn, threads)
            for i, job in enumerate(jobs):
                _, results[i], times[i] = _call_worker(i, job)
                bar.update()
        else:
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(fn, threads),
            ) as pool:
                futures = [pool.submit(_call_worker, i, job) for i, job in enumerate(jobs)]
                for fut in as_completed(futures):
                    i, out, seconds = fut.result()
                    results[i], times[i] = out, seconds
                    bar.update()
    finally:
        bar.close()
    return results, times


def default_workers(threads_per_worker: int) -> int:
    """Cores // threads per worker (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_worker))


# ------------------------------------------------------------------ datamodels
def subset_masks(num_units: int, num_models: int, q: float, seed: int) -> np.ndarray:
    """(M, U) boolean masks, each unit kept with probability q; never an empty subset."""
    gen = rng(seed, "datamodel-masks")
    masks = gen.random((num_models, num_units)) < q
    for row in np.flatnonzero(~masks.any(1)):
        masks[row, gen.integers(num_units)] = True
    return masks


@dataclass
class DatamodelBuild:
    datamodel: Datamodel
    masks: np.ndarray
    outputs: torch.Tensor
    wall_time_s: float  # the whole build, parallel
    train_time_s: float  # the sum of the trainings' own times (serial cost)


def train_datamodel(
    trainer: Callable,
    *,
    num_models: int,
    q: float,
    seed: int,
    workers: int = 1,
    threads: int = 1,
    lam: float | None = None,
    progress: bool = True,
) -> DatamodelBuild:
    """Train ``num_models`` subset models with ``trainer`` and fit the ridge datamodel."""
    start = time.perf_counter()
    masks = subset_masks(trainer.num_units, num_models, q, seed)
    jobs = [(masks[m], derive_seed(seed, "datamodel-train", m)) for m in range(num_models)]
    outputs, times = run_parallel(
        trainer, jobs, workers=workers, threads=threads, desc="datamodel subsets", progress=progress
    )
    outputs = torch.stack(outputs)
    dm = fit_datamodel(
        torch.from_numpy(masks), outputs, lam=lam, seed=derive_seed(seed, "ridge-val")
    )
    return DatamodelBuild(dm, masks, outputs, time.perf_counter() - start, float(sum(times)))
