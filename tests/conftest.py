"""Fixtures the test files share.

``server_identity``: the task identity Flower's runtime sets in a ServerApp, which a
``Message`` reads when it is built; tests that build messages outside a run use it.

``edge_case_dir``: a folder with the ARDIS IV and Southwest edge-case sets in the format
of ``../shared/data`` (``ardis_iv.npz``: uint8 28x28 digits with labels;
``southwest_airplanes.npz``: uint8 32x32 RGB photos). In the development workspace it is
that folder; in a fresh clone, which has no ``../shared``, it is a small folder of the
same format written once per session (70 train and 100 test images per digit, so the
attacker's 66 sevens and the 100 test sevens of the paper's setting exist), so the
edge-case tests run everywhere instead of skipping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL_ARDIS_PER_DIGIT = (70, 100)  # train, test images per digit in the written file
SMALL_SOUTHWEST = (120, 40)  # train, test photos


def write_edge_case_files(folder: Path, seed: int = 0) -> Path:
    """Write small ``ardis_iv.npz`` and ``southwest_airplanes.npz`` into ``folder``.

    The digits are a bright stroke at a digit-dependent position on noise, so classes
    differ; what the tests check is the format, the counts and the wiring, not the
    pixels of the real sets."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, per_digit in zip(("train", "test"), SMALL_ARDIS_PER_DIGIT, strict=True):
        y = np.repeat(np.arange(10, dtype=np.uint8), per_digit)
        x = rng.integers(0, 60, size=(len(y), 28, 28), dtype=np.uint8)
        rows = 4 + 2 * y.astype(np.int64)
        x[np.arange(len(y)), rows] = 255
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(folder / "ardis_iv.npz", **arrays)
    train, test = SMALL_SOUTHWEST
    np.savez(
        folder / "southwest_airplanes.npz",
        x_train=rng.integers(0, 256, size=(train, 32, 32, 3), dtype=np.uint8),
        x_test=rng.integers(0, 256, size=(test, 32, 32, 3), dtype=np.uint8),
    )
    return folder


@pytest.fixture(scope="session")
def edge_case_dir(tmp_path_factory) -> Path:
    """The shared edge-case folder if present, else a small one in the same format."""
    if (SHARED_DATA / "ardis_iv.npz").is_file() and (
        SHARED_DATA / "southwest_airplanes.npz"
    ).is_file():
        return SHARED_DATA
    return write_edge_case_files(tmp_path_factory.mktemp("edge-cases"))


@pytest.fixture
def server_identity(monkeypatch):
    """Messages record who sends them; Flower's runtime sets this in a ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@pytest.fixture(scope="session", autouse=True)
def fedsec_cache(tmp_path_factory) -> Path:
    """Every on-disk cache fedsec writes without a folder of its own in the config
    (pre-trained models, tail densities; ``FEDSEC_CACHE``) goes to a session folder,
    never ``~/.cache/fedsec``; child processes inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("fedsec-cache")
        patch.setenv("FEDSEC_CACHE", str(folder))
        yield folder


def pytest_addoption(parser):
    parser.addoption(
        "--repin",
        action="store_true",
        help="rewrite the regression tier's pins (tests/regression_pins.json) for this "
        "machine's kernel family from this run: for a change meant to change results",
    )
