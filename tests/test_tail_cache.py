"""The edge-case tail density is computed once and cached on disk (attacks/edge_sources.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attacks import edge_sources as src
from fedsec import task as task_module
from fedsec.config import load_config
from fedsec.task import get_task
from fedsec_core.data import load_dataset
from tests.runs import tiny_digits

FIT = src._fit_tail_log_density  # the computation itself, never cached


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty disk cache, and an empty per-process task cache (a fresh process)."""
    monkeypatch.setenv("FEDSEC_CACHE", str(tmp_path))
    monkeypatch.setattr(task_module, "_TASK_CACHE", {})
    return tmp_path / src.TAIL_CACHE_KIND


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits")
    return d.x_train, np.flatnonzero(d.y_train == 7)


@pytest.fixture
def fits(monkeypatch) -> list[int | None]:
    """The thread bound of each real fit, recorded while it still runs."""
    calls = []

    def counted(x, candidates, seed, threads):
        calls.append(threads)
        return FIT(x, candidates, seed, threads)

    monkeypatch.setattr(src, "_fit_tail_log_density", counted)
    return calls


def test_a_cache_hit_returns_the_computed_scores_bit_for_bit(cache, digits, fits):
    x, members = digits
    first = src.tail_log_density(x, members, seed=5, threads=1)
    assert fits == [1] and len(list(cache.glob("*.npz"))) == 1
    again = src.tail_log_density(x, members, seed=5, threads=1)
    assert fits == [1]  # read back, not fitted again
    direct = FIT(x, members, 5, 1)  # computed afresh, no cache involved
    assert again.dtype == first.dtype == direct.dtype and again.shape == (len(members),)
    assert np.array_equal(again, first) and np.array_equal(again, direct)


def test_the_key_changes_with_seed_data_candidates_and_threads(cache, digits, fits):
    x, members = digits
    src.tail_log_density(x, members, seed=5, threads=1)
    edited = x.copy()
    edited[0, 0, 0, 0] += 0.5  # one pixel of one image
    src.tail_log_density(x, members, seed=6, threads=1)
    src.tail_log_density(edited, members, seed=5, threads=1)
    src.tail_log_density(x, members[1:], seed=5, threads=1)
    src.tail_log_density(x, members, seed=5, threads=2)
    assert fits == [1, 1, 1, 1, 2] and len(list(cache.glob("*.npz"))) == 5
    for args in ((x, members, 5, 1), (x, members, 6, 1), (edited, members, 5, 1)):
        src.tail_log_density(*args)  # each is now a hit
    assert len(fits) == 5
    key = src.tail_cache_key(x, members, 5, 1)
    assert key["algorithm"] == src.TAIL_ALGORITHM_VERSION
    bumped = dict(key, algorithm=key["algorithm"] + 1)
    assert src.tail_cache_path(bumped) != src.tail_cache_path(key)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other-key", "other-length"])
def test_a_damaged_cache_file_is_recomputed_and_rewritten(cache, digits, fits, damage):
    x, members = digits
    scores = src.tail_log_density(x, members, seed=5, threads=1)
    (path,) = cache.glob("*.npz")
    if damage == "truncated":  # a file cut short (not written by fedsec: its writes are atomic)
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "other-key":  # a digest collision, or a hand-copied file
        np.savez(path.with_suffix(""), scores=scores + 1, key=np.array("{}"))
    else:
        stored = json.dumps(src.tail_cache_key(x, members, 5, 1), sort_keys=True)
        np.savez(path.with_suffix(""), scores=scores[:-1], key=np.array(stored))
    again = src.tail_log_density(x, members, seed=5, threads=1)
    assert fits == [1, 1] and np.array_equal(again, scores)
    assert np.array_equal(src.tail_log_density(x, members, seed=5, threads=1), scores)
    assert fits == [1, 1]  # the rewritten file is whole again


def test_the_fit_runs_with_the_engines_cpu_share_of_blas_threads(cache, monkeypatch):
    """The GaussianMixture fit sees at most engine.client_num_cpus BLAS threads."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_info

    seen = []
    fit = GaussianMixture.fit

    def spy(self, *args, **kwargs):
        seen.append(max(pool["num_threads"] for pool in threadpool_info()))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(GaussianMixture, "fit", spy)
    config = load_config(
        None, [*tiny_digits(rounds=1, seed=0), "attack.name=edge-case", "engine.client_num_cpus=1"]
    )
    task = get_task(config)
    assert task.attack.source == "tail" and seen == [1]
    assert task.attack.fit_threads == 1


def test_a_second_process_reuses_the_tail_of_the_first(cache, monkeypatch):
    """get_task caches per process; a fresh process (a sweep's child run) reads the disk
    cache: same tail, no new fit."""
    argv = [*tiny_digits(rounds=1, seed=3), "attack.name=edge-case"]
    first = get_task(load_config(None, argv)).attack.tail_indices
    monkeypatch.setattr(task_module, "_TASK_CACHE", {})  # as in a new process

    def no_fit(*args):
        raise AssertionError("the tail density must come from the disk cache")

    monkeypatch.setattr(src, "_fit_tail_log_density", no_fit)
    assert np.array_equal(get_task(load_config(None, argv)).attack.tail_indices, first)
