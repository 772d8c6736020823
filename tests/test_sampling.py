"""Seeded client sampling and seed streams."""

from fedsec.sampling import ClientSampler
from fedsec.seeding import derive_seed


def test_same_seed_same_clients_and_rounds_differ():
    a = ClientSampler(20, 10, seed=1)
    b = ClientSampler(20, 10, seed=1)
    rounds = [a.sample(r) for r in range(1, 6)]
    assert rounds == [b.sample(r) for r in range(1, 6)]
    assert len({tuple(r) for r in rounds}) > 1
    assert all(len(set(r)) == 10 and r == sorted(r) and 0 <= r[0] and r[-1] < 20 for r in rounds)


def test_round_sample_does_not_depend_on_history():
    # A resumed run asks for round 5 first; it must get what the full run got.
    full = ClientSampler(20, 10, seed=4)
    for r in range(1, 5):
        full.sample(r)
    assert full.sample(5) == ClientSampler(20, 10, seed=4).sample(5)


def test_every_client_is_sampled_about_equally_often():
    s = ClientSampler(10, 3, seed=0)
    counts = [0] * 10
    for r in range(1, 2001):
        for c in s.sample(r):
            counts[c] += 1
    assert min(counts) > 0.85 * 600 and max(counts) < 1.15 * 600  # expected 600 each


def test_derive_seed_streams():
    assert derive_seed(0, "x", 1) == derive_seed(0, "x", 1)
    assert len({derive_seed(0, "x", 1), derive_seed(1, "x", 1), derive_seed(0, "y", 1),
                derive_seed(0, "x", 2)}) == 4
    assert 0 <= derive_seed(123, "partition") < 2**32
