"""Seeded choice of the clients that train in each round.

Flower samples node ids with ``random.sample`` over ids drawn from ``os.urandom``, which
no seed controls. fedsec samples *partition ids* instead, from a stream that depends only
on (seed, round): the same seed gives the same clients on every engine, and a resumed
run samples what the uninterrupted run would have.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import numpy as np

from fedsec_core.seeding import rng

ROUND_WALK_LIMIT = 10_000
"""Rounds of a ``random-pool`` schedule sampled one by one to find its round shapes."""


def _words(ids: list[int]) -> str:
    """ "3", "3 and 7", "3, 7 and 9"; long lists are cut after 10."""
    if len(ids) > 10:
        return ", ".join(map(str, ids[:10])) + f" and {len(ids) - 10} more"
    return " and ".join(filter(None, [", ".join(map(str, ids[:-1])), str(ids[-1])]))


class ClientSampler:
    """Chooses ``clients_per_round`` of ``num_clients`` partition ids per round.

    Parameters
    ----------
    num_clients : int
        Number of partitions (clients) in the federation.
    clients_per_round : int
        Clients sampled, without replacement, in each round.
    seed : int
        Experiment seed.
    exclude : sequence of int
        Partition ids that never train (``train.exclude_clients``). Rounds sample from
        the others; if fewer than ``clients_per_round`` remain, every one of them trains.
    """

    def __init__(
        self, num_clients: int, clients_per_round: int, seed: int, exclude: tuple[int, ...] = ()
    ) -> None:
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.exclude = tuple(exclude)

    def sample(self, server_round: int) -> list[int]:
        """Sorted partition ids of the clients of ``server_round``."""
        generator = rng(self.seed, "sampling", server_round)
        if self.exclude:
            remaining = np.setdiff1d(np.arange(self.num_clients), self.exclude)
            chosen = generator.choice(
                remaining, size=min(self.clients_per_round, len(remaining)), replace=False
            )
        else:
            chosen = generator.choice(self.num_clients, size=self.clients_per_round, replace=False)
        return sorted(int(c) for c in np.asarray(chosen))


class AttackSchedule:
    """Which clients train in each round, and which of them are malicious.

    Wraps the plain sampler with the attack config's schedule (see
    ``fedsec.config.AttackConfig``). Server and clients build the same schedule from the
    same config, so a client knows whether it attacks without any message saying so,
    and the strategy sees nothing but the replies.

    Parameters
    ----------
    attack : AttackConfig
        The ``[attack]`` section.
    num_clients, clients_per_round, rounds, seed
        As in the experiment config.
    pool_seed : int, optional
        Seed of the attacker pool (the config's ``federation_seed``); default ``seed``.
    exclude : sequence of int
        Partition ids that never train (``train.exclude_clients``), attackers included:
        an excluded pool member never attacks, and the others take the turns.
    """

    def __init__(
        self,
        attack,
        num_clients: int,
        clients_per_round: int,
        rounds: int,
        seed: int,
        pool_seed: int | None = None,
        exclude: tuple[int, ...] = (),
    ) -> None:
        self.attack = attack
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.rounds = rounds
        self.seed = seed
        self.pool_seed = seed if pool_seed is None else pool_seed
        self.exclude = tuple(exclude)

    @classmethod
    def for_config(cls, config) -> AttackSchedule:
        """The schedule of an ``ExperimentConfig``."""
        c = config
        return cls(
            c.attack,
            c.data.num_clients,
            c.train.clients_per_round,
            c.train.rounds,
            c.seed,
            pool_seed=c.federation_seed,
            exclude=c.train.excluded(),
        )

    @property
    def enabled(self) -> bool:
        return self.attack.name != "none"

    @functools.cached_property
    def pool(self) -> list[int]:
        """The attacker pool: sorted partition ids, fixed by the seed."""
        if not self.enabled:
            return []
        size = self.attack.pool_size(self.num_clients)
        return sorted(
            int(c) for c in rng(self.pool_seed, "attackers").permutation(self.num_clients)[:size]
        )

    def in_window(self, server_round: int) -> bool:
        a = self.attack
        return self.enabled and a.start_round <= server_round <= a.last_round(self.rounds)

    def attack_rounds_before(self, server_round: int) -> int | None:
        """Index k of ``server_round`` among the scheduled attack rounds, else None."""
        if not self.in_window(server_round) or self.attack.schedule == "random-pool":
            return None
        every = 1 if self.attack.schedule == "every-round" else self.attack.every
        offset = server_round - self.attack.start_round
        return offset // every if offset % every == 0 else None

    def is_malicious(self, partition_id: int, server_round: int) -> bool:
        """Whether client ``partition_id`` attacks when it trains in ``server_round``."""
        return self.in_window(server_round) and partition_id in self.pool

    @property
    def periodic(self) -> bool:
        """Whether the rounds follow a period (no attack, ``fixed-frequency``,
        ``every-round``): a round's shape depends only on whether it is an attack round."""
        return not self.enabled or self.attack.schedule != "random-pool"

    def _window(self) -> range:
        """The rounds of the attack window inside ``1..rounds`` (empty if none)."""
        a = self.attack
        return range(a.start_round, min(a.last_round(self.rounds), self.rounds) + 1)

    def _periodic_attack_rounds(self) -> range:
        """The attack rounds of a periodic schedule, without sampling any round."""
        if not self.enabled or not [c for c in self.pool if c not in self.exclude]:
            return range(0)
        every = 1 if self.attack.schedule == "every-round" else self.attack.every
        window = self._window()
        return range(window.start, window.stop, every)

    def attack_rounds(self) -> list[int]:
        """The rounds in which some client attacks."""
        if self.periodic:
            return list(self._periodic_attack_rounds())
        return list(self._sampled_attack_rounds())

    def _sampled_attack_rounds(self) -> Iterator[int]:
        return (r for r in range(1, self.rounds + 1) if self.sample(r)[1])

    def round_shapes(self) -> dict[tuple[int, int], int]:
        """``{(clients, attackers): the first round with that many}`` over every round.

        Computed in time independent of ``rounds``: in a periodic schedule a round's
        clients are its attackers (none outside the attack rounds) and honest clients up
        to ``clients_per_round``, so its shape depends only on whether it is an attack
        round, and the first attack round (``start_round``) and the first other one
        (round 1, 2 or the one after the window) show every shape. ``random-pool``
        rounds are sampled in order until every attacker count the pool allows has
        appeared; after ``ROUND_WALK_LIMIT`` rounds, the counts not seen yet are counted
        as possible from the window's first round (they change a defense's caveats,
        never the round size).
        """
        shapes: dict[tuple[int, int], int] = {}
        if self.periodic:
            window = self._window()
            candidates = {1, 2, window.start, window.stop}
            for r in sorted(c for c in candidates if 1 <= c <= self.rounds):
                clients, malicious = self.sample(r)
                shapes.setdefault((len(clients), len(malicious)), r)
            return shapes
        size = len(self.sample(1)[0])
        pool = len([c for c in self.pool if c not in self.exclude])
        honest = self.num_clients - len(self.exclude) - pool
        window = self._window()
        counts = range(max(0, size - honest), min(pool, size) + 1) if window else range(0)
        possible = {(size, m) for m in counts}
        if len(window) < self.rounds:
            possible.add((size, 0))
        for r in range(1, min(self.rounds, ROUND_WALK_LIMIT) + 1):
            clients, malicious = self.sample(r)
            shapes.setdefault((len(clients), len(malicious)), r)
            if possible <= shapes.keys():
                return shapes
        if self.rounds <= ROUND_WALK_LIMIT:  # every round was sampled
            return shapes
        for shape in sorted(possible - shapes.keys()):
            shapes[shape] = window.start if shape[1] else 1
        return shapes

    def describe(self) -> str:
        """The schedule in words, e.g. "sign-flip by clients 3 and 7, in rounds 1, 11, 21"."""
        if not self.enabled:
            return "no attack"
        a = self.attack
        pool = [c for c in self.pool if c not in self.exclude]
        if not pool:
            return (
                f"{a.name}: no one attacks, every attacker-pool client "
                f"({_words(self.pool)}) is in train.exclude_clients"
            )
        who = _words(pool)
        if self.periodic or self.rounds <= ROUND_WALK_LIMIT:
            rounds = self._periodic_attack_rounds() if self.periodic else self.attack_rounds()
            count = f"{len(rounds)} rounds"
        else:  # random-pool over very many rounds: the first ones, not counted
            rounds = list(itertools.islice(self._sampled_attack_rounds(), 9))
            count = f"of {self.rounds}, whenever sampled"
        shown = ", ".join(map(str, rounds[:8])) + (f", ... ({count})" if len(rounds) > 8 else "")
        if a.schedule == "random-pool":
            how = (
                f"attacking whenever sampled in rounds {a.start_round}.."
                f"{a.last_round(self.rounds)} (random-pool)"
            )
        else:
            every = 1 if a.schedule == "every-round" else a.every
            how = (
                f"{min(a.attackers_per_round, max(len(pool), 1))} a round, every {every} "
                f"round(s) from round {a.start_round} ({a.schedule})"
            )
        where = f"in rounds {shown}" if rounds else "in no round"
        return f"{a.name} by client{'s' if len(pool) > 1 else ''} {who}, {how}: {where}"

    def sample(self, server_round: int) -> tuple[list[int], list[int]]:
        """(sorted clients of the round, sorted malicious clients among them)."""
        plain = ClientSampler(self.num_clients, self.clients_per_round, self.seed, self.exclude)
        if not self.enabled:
            return plain.sample(server_round), []
        pool = [c for c in self.pool if c not in self.exclude]
        if self.attack.schedule == "random-pool":
            clients = plain.sample(server_round)
        else:
            honest = np.setdiff1d(np.arange(self.num_clients), self.pool)
            if self.exclude:
                honest = np.setdiff1d(honest, self.exclude)
            k = self.attack_rounds_before(server_round)
            per_round = (
                0 if k is None or not pool else min(self.attack.attackers_per_round, len(pool))
            )
            chosen = rng(self.seed, "sampling", server_round).choice(
                honest, size=min(self.clients_per_round - per_round, len(honest)), replace=False
            )
            # Attackers take turns: attack round k uses pool members k*m .. k*m + m - 1.
            attackers = [pool[(k * per_round + j) % len(pool)] for j in range(per_round)]
            clients = sorted(int(c) for c in chosen) + attackers
            clients.sort()
        malicious = [c for c in clients if self.is_malicious(c, server_round)]
        return clients, malicious
