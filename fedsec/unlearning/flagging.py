"""``--flagged``: the clients a run's defense rejected significantly more often than its
base rate, as a forget set (:class:`Flagging`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsec_core.errors import FedsecError
from fedsec_core.protocol import RoundRecord

DEFAULT_FLAG_LEVEL = 0.05
OUTLIER_Z = 3.5  # modified z-score cut-off for --flagged (Iglewicz & Hoaglin 1993)


@dataclass
class Flagging:
    """Which clients a run's defense rejected significantly more often than its base rate.

    A defense that keeps a quota (Multi-metrics keeps 3 of 10 clients a round, Krum 1)
    rejects most clients in most rounds by design, so a share of rejected rounds says
    nothing. Instead: the base rejection rate ``p0`` = rejected client-rounds / judged
    client-rounds over the run (judged: in ``accepted_clients`` or ``rejected_clients``);
    a client rejected in ``k`` of its ``n`` judged rounds gets the one-sided binomial
    p-value P(X >= k | n, p0), and is flagged when it is below ``level`` divided by the
    number of clients judged at least once (Bonferroni: with honest clients only, the
    chance that anyone is flagged is at most ``level``), *and* its rejection rate
    ``k / n`` is an outlier among the clients' rates: modified z-score
    ``0.6745 (rate - median) / MAD > 3.5`` (Iglewicz & Hoaglin's cut-off; with MAD = 0,
    any rate above the median).

    Why both: a selection defense does not reject honest clients at random. It ranks
    them, so a consistently atypical honest client (its data, its size) is rejected in
    nearly every round, and in a real Multi-metrics run of honest clients only several
    are rejected in every round: each alone is significant against ``p0``, yet they are
    many and the others are spread out, so none stands out from the clients' rates. A
    client is flagged only when it is rejected more than the base rate explains *and*
    more than the other clients are. No rule on verdicts can tell an honest client that
    the defense always rejects from an attacker it always rejects: a flag is the
    defense's judgement, not proof.
    """

    level: float
    rejected_total: int
    judged_total: int
    rejected: dict[int, int]  # client -> rounds it was rejected in
    judged: dict[int, int]  # client -> rounds it was judged in
    p_values: dict[int, float]

    @property
    def base_rate(self) -> float:
        return self.rejected_total / self.judged_total

    @property
    def threshold(self) -> float:
        return self.level / len(self.judged)

    @property
    def clients(self) -> tuple[int, ...]:
        return tuple(
            sorted(
                c for c, p in self.p_values.items() if p < self.threshold and self.rate_outlier(c)
            )
        )

    def rate(self, client: int) -> float:
        return self.rejected[client] / self.judged[client]

    def rate_outlier(self, client: int) -> bool:
        """Whether ``client``'s rejection rate stands out from the clients' rates."""
        rates = np.array([self.rate(c) for c in sorted(self.judged)])
        median = float(np.median(rates))
        mad = float(np.median(np.abs(rates - median)))
        if mad == 0:
            return self.rate(client) > median
        return 0.6745 * (self.rate(client) - median) / mad > OUTLIER_Z

    def rule(self) -> str:
        """The test and its numbers, in words."""
        return (
            f"base rejection rate p0 = {self.rejected_total}/{self.judged_total} = "
            f"{self.base_rate:.3f}; a client is flagged when P(X >= k | n, p0) < "
            f"{self.level:g} / {len(self.judged)} clients = {self.threshold:.3g} and its "
            f"rejection rate is an outlier among the clients' (modified z > {OUTLIER_Z:g})"
        )

    def evidence(self, client: int) -> str:
        """Client ``client``'s k of n rounds rejected against p0, and its p-value."""
        return (
            f"rejected in {self.rejected[client]} of {self.judged[client]} rounds vs base "
            f"rate {self.base_rate:.3f}, p = {self.p_values[client]:.3g}"
        )


def flagged_clients(records: list[RoundRecord], level: float = 0.05) -> Flagging:
    """The significance test of :class:`Flagging` on a run's rounds (``metrics.jsonl``);
    rounds without a verdict (no ``rejected_clients``) are left out."""
    from scipy.stats import binom

    rejected: dict[int, int] = {}
    judged: dict[int, int] = {}
    for r in records:
        if r.rejected_clients is None:
            continue
        for c in set(r.rejected_clients) | set(r.accepted_clients or []):
            judged[int(c)] = judged.get(int(c), 0) + 1
        for c in set(r.rejected_clients):
            rejected[int(c)] = rejected.get(int(c), 0) + 1
    if not judged:
        raise FedsecError(
            "the run's defense recorded no verdicts (no rejected_clients in "
            "metrics.jsonl); name the clients with --clients"
        )
    ids = sorted(judged)
    k = np.array([rejected.get(c, 0) for c in ids])
    n = np.array([judged[c] for c in ids])
    p0 = k.sum() / n.sum()
    p_values = binom.sf(k - 1, n, p0)  # P(X >= k) for X ~ Binomial(n, p0)
    return Flagging(
        level=level,
        rejected_total=int(k.sum()),
        judged_total=int(n.sum()),
        rejected={c: int(x) for c, x in zip(ids, k, strict=True)},
        judged={c: int(x) for c, x in zip(ids, n, strict=True)},
        p_values={c: float(p) for c, p in zip(ids, p_values, strict=True)},
    )


def flagged_forget_set(flagging: Flagging, num_clients: int, allow_majority: bool = False) -> str:
    """``--flagged``'s forget set as "3,7": FedsecError when nobody is flagged (nothing to
    forget), or when more than half of the federation is, unless ``allow_majority``."""
    ids = flagging.clients
    if not ids:
        best = min(flagging.p_values, key=lambda c: (flagging.p_values[c], c))
        why = (
            f"is not below {flagging.level:g} / {len(flagging.judged)} clients = "
            f"{flagging.threshold:.3g}"
            if flagging.p_values[best] >= flagging.threshold
            else "is significant, but its rejection rate does not stand out from the other "
            "clients' (a selection defense rejects atypical honest clients as often)"
        )
        raise FedsecError(
            f"--flagged flags no client: the smallest p-value, client {best}'s "
            f"({flagging.evidence(best)}), {why}; nothing to forget"
        )
    if len(ids) > num_clients / 2 and not allow_majority:
        raise FedsecError(
            f"--flagged names {len(ids)} of {num_clients} clients, more than half "
            "of the federation; pass --allow-majority to forget them anyway"
        )
    return ",".join(map(str, ids))
