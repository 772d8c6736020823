"""Seeded client sampling and seed streams."""

from fedsec_core.sampling import ClientSampler
from fedsec_core.seeding import derive_seed


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
    assert (
        len(
            {
                derive_seed(0, "x", 1),
                derive_seed(1, "x", 1),
                derive_seed(0, "y", 1),
                derive_seed(0, "x", 2),
            }
        )
        == 4
    )
    assert 0 <= derive_seed(123, "partition") < 2**32


def schedule(**attack):
    from fedsec.config import AttackConfig
    from fedsec_core.sampling import AttackSchedule

    return AttackSchedule(
        AttackConfig(name="sign-flip", **attack),
        num_clients=20,
        clients_per_round=10,
        rounds=30,
        seed=0,
    )


def test_fixed_frequency_puts_one_attacker_in_rounds_1_11_21_only():
    s = schedule(num_attackers=2, every=10)
    assert len(s.pool) == 2
    for r in range(1, 31):
        clients, malicious = s.sample(r)
        assert len(clients) == 10 == len(set(clients))
        if r in (1, 11, 21):
            assert len(malicious) == 1 and malicious[0] in s.pool and malicious[0] in clients
        else:
            assert malicious == [] and not set(clients) & set(s.pool)  # the pool sits out
    # attackers take turns across attack rounds
    assert [s.sample(r)[1][0] for r in (1, 11, 21)] == [s.pool[0], s.pool[1], s.pool[0]]


def test_window_and_random_pool():
    s = schedule(num_attackers=5, schedule="random-pool", start_round=5, end_round=8)
    for r in range(1, 31):
        clients, malicious = s.sample(r)
        expected = sorted(set(clients) & set(s.pool)) if 5 <= r <= 8 else []
        assert malicious == expected
        assert all(s.is_malicious(c, r) == (c in expected) for c in clients)
    every = schedule(schedule="every-round", attackers_per_round=1, end_round=3)
    assert [len(every.sample(r)[1]) for r in range(1, 6)] == [1, 1, 1, 0, 0]
