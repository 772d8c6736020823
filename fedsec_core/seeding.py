"""One experiment seed, many independent random streams.

Every random choice in a run (partition, initial model, client sampling, each client's
training in each round, attacks, defense noise) draws from its own stream derived from
the experiment seed and a stream name, so changing one part (say, the number of rounds)
does not shift the randomness of another, and a resumed run draws what the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, *stream: int | str) -> int:
    """A 32-bit seed for the stream named by ``stream`` under experiment ``seed``.

    32 bits because some consumers (NumPy's legacy RandomState, Hugging Face datasets'
    shuffling inside flwr-datasets partitioners) accept no more.
    """
    keys = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in stream]
    return int(np.random.SeedSequence([int(seed), *keys]).generate_state(1)[0])


def rng(seed: int, *stream: int | str) -> np.random.Generator:
    """A NumPy generator for the named stream."""
    return np.random.default_rng(derive_seed(seed, *stream))
