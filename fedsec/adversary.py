"""The simulation's adversary: a round's colluding attackers acting together.

Attacks crafted from the round's benign updates (``attacks.collusion``) need what no
single client holds. :class:`RoundAdversary` is that coordination, run by the server
loop (``fedsec.server.run_round``) after the replies arrive and before the defense sees
them: it builds the attackers' view of the round (their own replies with
``attack.knowledge = "partial"``, every valid reply with ``"full"``), asks the attack for
one malicious update and puts it into every attacker's reply. It lives in the server
process because that is where all replies meet in a simulation; it is the adversary of
the experiment, not part of the server's defense, and the defense cannot tell it apart
from the clients.

The replies come in partition order, so the stage computes the same update on every
engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, Message

from attacks.collusion import CollusionAttack
from defenses.adapter import ModelLayout


@dataclass
class Collusion:
    """What the stage did in a round (logged with the round)."""

    crafted: list[int] = field(default_factory=list)  # attackers whose reply it replaced
    view: int = 0  # benign updates it crafted from
    note: str = ""  # why it crafted nothing, when it did not


class RoundAdversary:
    """Replaces the round's attackers' replies with the update ``attack`` crafts."""

    def __init__(self, attack: CollusionAttack) -> None:
        self.attack = attack

    def __call__(
        self,
        global_arrays: ArrayRecord,
        replies: list[Message],
        partition_of: dict[int, int],
        num_clients: int,
        malicious: set[int],
    ) -> Collusion:
        """Craft and write the attackers' update into their ``replies`` (in place).

        ``replies`` are the round's, sorted by partition id; ``partition_of`` maps node id
        to partition id; the round had ``num_clients`` clients, ``malicious`` among them.
        A reply with an error or arrays that do not fit the global model is in no one's
        view (the defense refuses it anyway).
        """
        layout = ModelLayout(global_arrays)
        w0 = layout.flatten(global_arrays, torch.device("cpu"))
        rows, attackers = [], []
        for reply in replies:
            pid = partition_of[reply.metadata.src_node_id]
            if reply.has_error() or (pid not in malicious and self.attack.knowledge != "full"):
                continue
            row = torch.empty(layout.size, dtype=layout.dtype)
            record = reply.content.array_records.get("arrays")
            if record is None or layout.mismatch(record) or layout.load(record, row):
                continue
            rows.append(row - w0)
            if pid in malicious:
                attackers.append(reply)
        outcome = Collusion(view=len(rows))
        if not attackers:
            outcome.note = "no attacker replied with a valid update"
            return outcome
        if len(rows) < self.attack.min_view:
            outcome.note = (
                f"{len(rows)} benign updates in view, {self.attack.min_view} needed: "
                "the attackers sent their honest updates"
            )
            return outcome
        update = self.attack.craft(torch.stack(rows), num_clients, len(malicious))
        crafted = w0 + update.to(w0.dtype)
        for reply in attackers:
            # its floating-point arrays become the crafted update; the rest stay its own
            reply.content["arrays"] = layout.unflatten(crafted, reply.content["arrays"])
            outcome.crafted.append(partition_of[reply.metadata.src_node_id])
        return outcome


def round_adversary(attack) -> RoundAdversary | None:
    """The stage for ``attack`` when it is a colluding attack, else None."""
    return RoundAdversary(attack) if isinstance(attack, CollusionAttack) else None
