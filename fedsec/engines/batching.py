"""Batched clients on any engine whose nodes can read every partition: one message a batch.

With the Message API each client's training is its own ClientApp call. To train a
round's honest clients together (``engine.batch_clients``, ``fedsec.batched``),
:class:`BatchingGrid` wraps the engine's grid between the server loop and the nodes:

1. of the train messages of one ``send_and_receive`` call, the honest clients' (no
   attacker facts in the ConfigRecord, ``fedsec_core.protocol.AttackerFacts``) that share
   one global model and round form a batch; attackers' messages and queries go out
   unchanged;
2. a batch becomes ONE message of type :data:`BATCH_TRAIN` (``train.batch``, Flower's
   ``<category>.<action>`` routing) sent to ONE node, the batch's first client's (lowest
   partition id): the global model and ConfigRecord the clients would have received,
   plus a ConfigRecord :data:`BATCH` naming the clients' partition ids, in ascending
   order; that node's ClientApp (``fedsec.apps.client_app.train_together``) trains them
   with ``fedsec.batched.train_clients`` (chunked there when a round does not fit in
   memory) and answers one reply holding each client's ArrayRecord and MetricRecord
   under :func:`arrays_key` / :func:`metrics_key`;
3. the reply is split into one reply per client, built as that client's own ClientApp
   call would have answered it (``Message(content, reply_to=its message)``: its node as
   the source, the record names ``arrays`` and ``metrics``), so the server loop, the
   adversary stage and the strategy see the messages they see without batching, in
   the same order. An error reply to the batch (its ClientApp raised) becomes the same
   error for each of its clients; no reply (the round's timeout passed) means none of
   them answered, as for a late client.

This needs every node to hold every partition, which is true of both simulation
engines (``inprocess`` and ``flower``: each node loads its data set from the run
config). Real SuperNodes (``deployment``) each own their own data, so clients there
cannot be trained together: :func:`batching_grid` returns the grid unchanged and
``fedsec.batched.use_batched`` says so in the run header.

Where it differs from Flower's usual one message per client: the batch's node does the
work of all its clients (in a Ray simulation that node's CPUs / GPU share,
``engine.client_num_cpus`` / ``client_num_gpus``, is what trains them), and the clients
are ordered by partition id, not by the strategy's sampling order (Flower samples nodes
with an unseeded ``random.sample``): the batch, and so its dropout masks, is the same
on every run and engine.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsec.config import ExperimentConfig
from fedsec.engines.grids import ForwardingGrid
from fedsec_core.protocol import (
    ARRAYS,
    BATCH,
    BATCH_ACTION,
    CONFIG,
    METRICS,
    PARTITION_IDS,
    SERVER_ROUND,
    AttackerFacts,
    arrays_key,
    metrics_key,
)

#: The message type of a batch: the ``batch`` action of the ``train`` category (the
#: batch's ConfigRecord :data:`fedsec_core.protocol.BATCH` names its clients' partition ids).
BATCH_TRAIN = f"{MessageType.TRAIN}.{BATCH_ACTION}"


def batching_grid(grid: Grid, config: ExperimentConfig, partition_of: dict[int, int]) -> Grid:
    """``grid`` wrapped in a :class:`BatchingGrid` when ``config`` trains its honest
    clients batched (``fedsec.batched.use_batched``); else ``grid`` itself."""
    from fedsec.batched import use_batched

    return BatchingGrid(grid, partition_of) if use_batched(config)[0] else grid


class BatchingGrid(ForwardingGrid):
    """A grid that sends a round's honest train messages as one batch message.

    Parameters
    ----------
    grid : Grid
        The engine's grid; every message goes out through it.
    partition_of : dict[int, int]
        Node id -> partition id (``fedsec.server.discover_partitions``).
    """

    def __init__(self, grid: Grid, partition_of: dict[int, int]) -> None:
        super().__init__(grid)
        self._partition_of = dict(partition_of)
        self._node_of = {pid: node for node, pid in partition_of.items()}

    def send_and_receive(self, messages, *, timeout=None):
        """Send ``messages`` with each batch as one message; return one reply per client.

        Replies come in the order the grid returns them, each batch's split replies
        where its reply came; the server loop sorts replies by partition id anyway.
        """
        messages = list(messages)
        batches = self._batches(messages)
        batched = {i for members in batches for i in members}
        outgoing, by_node = [], {}
        for members in batches:  # the batches first, then the rest in their order
            batch = self._batch_message([messages[i] for i in members])
            by_node[batch.metadata.dst_node_id] = [messages[i] for i in members]
            outgoing.append(batch)
        outgoing += [m for i, m in enumerate(messages) if i not in batched]
        replies = []
        for reply in self._grid.send_and_receive(outgoing, timeout=timeout):
            originals = by_node.get(reply.metadata.src_node_id)
            if reply.metadata.message_type != BATCH_TRAIN or originals is None:
                replies.append(reply)
                continue
            replies += [self._client_reply(reply, msg) for msg in originals]
        return replies

    def _batches(self, messages: list[Message]) -> list[list[int]]:
        """Indices of the honest train messages, grouped by global model and round and
        ordered by partition id within a group."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, msg in enumerate(messages):
            if msg.metadata.message_type != MessageType.TRAIN:
                continue
            if ARRAYS not in msg.content or CONFIG not in msg.content:
                continue  # not a strategy's train message: it goes out as it is
            if msg.metadata.dst_node_id not in self._partition_of:
                continue  # a node the server does not know: the grid answers as usual
            record = msg.content[CONFIG]
            if AttackerFacts.told(record):
                continue  # an attacker trains apart, with its own procedure
            key = (id(msg.content[ARRAYS]), int(record[SERVER_ROUND]))
            groups.setdefault(key, []).append(i)
        return [
            sorted(members, key=lambda i: self._pid(messages[i])) for members in groups.values()
        ]

    def _pid(self, msg: Message) -> int:
        return self._partition_of[msg.metadata.dst_node_id]

    def _batch_message(self, members: list[Message]) -> Message:
        """The one message that trains ``members`` (ascending partition ids) on the first
        one's node: their global model and ConfigRecord, and their partition ids."""
        first = members[0]
        content = RecordDict(
            {
                ARRAYS: first.content[ARRAYS],
                CONFIG: first.content[CONFIG],
                BATCH: ConfigRecord({PARTITION_IDS: [self._pid(m) for m in members]}),
            }
        )
        return Message(
            content=content,
            dst_node_id=first.metadata.dst_node_id,
            message_type=BATCH_TRAIN,
            group_id=first.metadata.group_id,
        )

    def _client_reply(self, reply: Message, msg: Message) -> Message:
        """Client ``msg``'s reply, cut from the batch's ``reply``."""
        if reply.has_error():
            return Message(Error(code=reply.error.code, reason=reply.error.reason), reply_to=msg)
        pid = self._pid(msg)
        content = RecordDict(
            {ARRAYS: reply.content[arrays_key(pid)], METRICS: reply.content[metrics_key(pid)]}
        )
        return Message(content, reply_to=msg)
