"""The in-process engine: the same ServerApp and ClientApp, called in one process.

``InProcessGrid`` implements Flower's ``Grid`` by calling the ClientApp directly for each
message, with a per-node ``Context`` that carries the node's ``partition-id`` and
``num-partitions`` exactly as Flower's simulation gives them. There is no Ray, no
SuperLink and no serialisation round trip beyond what the Message API itself does, so
many small runs (sweeps, datamodel subset trainings) pay almost nothing for the
federation. A ClientApp that raises becomes an error reply, as under Flower.

Batched clients (``engine.batch_clients``): the server loop wraps this grid in
``fedsec.engines.batching.BatchingGrid``, which sends a round's honest clients as one
``train.batch`` message; this grid delivers it like any other message (one ClientApp
call, timed as one).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.task_identity import TaskIdentity

from fedsec_core.protocol import NUM_PARTITIONS, PARTITION_ID

SERVER_NODE_ID = SUPERLINK_NODE_ID


class InProcessGrid(Grid):
    """A Flower Grid whose nodes are ClientApp calls in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    num_nodes : int
        Number of nodes; node ``i`` gets ``partition-id = i``.
    run_config : dict
        The flat run config every node's ``Context`` carries.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict) -> None:
        self.client_app = client_app
        self._contexts = {
            _node_id(pid): Context(
                run_id=0,
                node_id=_node_id(pid),
                node_config={PARTITION_ID: pid, NUM_PARTITIONS: num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for pid in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self._run = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            self._replies[msg.metadata.message_id] = self._deliver(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None) -> Iterable[Message]:
        """Deliver each message in turn; drop a reply whose call took over ``timeout``.

        The nodes of a real federation train concurrently, so a client is late when its
        own call takes longer than the round's timeout, whatever ran before it here.
        Such a reply is discarded, as Flower's engines discard late replies, and the
        client counts as failed. (A call cannot be stopped midway in this process.)
        A batch message (``fedsec.engines.batching``) is one call: all its clients are
        late when it took longer than ``timeout``.
        """
        ids = []
        for msg in messages:
            start = time.monotonic()
            ids += self.push_messages([msg])
            if timeout is not None and time.monotonic() - start > timeout:
                self._replies.pop(ids[-1], None)
        return self.pull_messages(ids)

    def _deliver(self, msg: Message) -> Message:
        context = self._contexts.get(msg.metadata.dst_node_id)
        if context is None:
            raise ValueError(f"no node with id {msg.metadata.dst_node_id}")
        try:
            return self.client_app(msg, context)
        except Exception as exc:  # a failing client must not end the run
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
            )


def in_process_grid(client_app: ClientApp, num_nodes: int, run_config: dict) -> InProcessGrid:
    """The grid of ``num_nodes`` in-process ClientApp nodes, this process the server."""
    # Flower stamps every new Message with the identity of the process's task, which
    # its own runtimes set before running an app; this process is the SuperLink's node.
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 0
    TaskIdentity.node_id = SERVER_NODE_ID
    return InProcessGrid(client_app, num_nodes, run_config)


def run_inprocess(
    server_app: ServerApp, client_app: ClientApp, num_nodes: int, run_config: dict
) -> None:
    """Run ``server_app`` against ``num_nodes`` in-process ClientApp nodes."""
    grid = in_process_grid(client_app, num_nodes, run_config)
    context = Context(
        run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config)
    )
    server_app(grid, context)


def _node_id(partition_id: int) -> int:
    # Deterministic, and distinct from the server's node id.
    return SERVER_NODE_ID + 1 + partition_id
