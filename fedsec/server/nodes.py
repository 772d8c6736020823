"""Flower's side of the round: which node is which partition, and a grid that shows a
strategy only the round's sampled nodes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsec.engines.grids import ForwardingGrid
from fedsec_core import protocol
from fedsec_core.errors import ConfigError, RunError
from fedsec_core.protocol import NODE, NUM_PARTITIONS, PARTITION_ID

IDENTIFY = f"{MessageType.QUERY}.{protocol.IDENTIFY}"


class RoundGrid(ForwardingGrid):
    """A grid that shows a strategy only this round's sampled nodes.

    Flower strategies sample with ``random.sample`` over ``grid.get_node_ids()``; given
    exactly the nodes fedsec's seeded sampler chose (and ``fraction_train = 1``), they
    select all of them, so the strategy's own ``configure_train`` still builds the
    messages (and can keep whatever state it needs, such as the global model).
    """

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        super().__init__(grid)
        self._node_ids = node_ids

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)


def discover_partitions(
    grid: Grid, num_clients: int, timeout: float, progress: Callable[[str], None] = print
) -> dict[int, int]:
    """Map partition id -> node id by asking every connected node who it is.

    Node ids are random (simulation) or assigned by the SuperLink (deployment); the
    partition id is what a node's ``node_config`` says, so only the node can tell.
    SuperNodes of a deployment connect one by one: wait for ``num_clients`` of them.
    """
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 10
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RunError(
                f"only {len(node_ids)} of {num_clients} clients connected within "
                f"engine.connect_timeout = {timeout:.0f}s; waited for partition ids "
                f"0..{num_clients - 1} (data.num_clients)"
            )
        if time.monotonic() > next_note:
            progress(f"waiting for clients: {len(node_ids)} of {num_clients} connected")
            next_note += 10
        time.sleep(0.5)
    queries = [
        Message(content=RecordDict(), dst_node_id=node_id, message_type=IDENTIFY)
        for node_id in node_ids
    ]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            continue
        info = reply.content[NODE]
        if int(info[NUM_PARTITIONS]) != num_clients:
            raise ConfigError(
                f"the federation has {int(info[NUM_PARTITIONS])} partitions but "
                f"data.num_clients = {num_clients}; run Flower with "
                f'--federation-config "num-supernodes={num_clients}" or set data.num_clients'
            )
        mapping[int(info[PARTITION_ID])] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(mapping))
    if missing:
        raise RunError(
            f"no node answered the identify query within engine.connect_timeout = "
            f"{timeout:.0f}s for partition ids {missing[:10]}"
        )
    return mapping


def _sample_exactly_the_given_nodes(strategy, round_size: int) -> None:
    """Make a Flower strategy take every node of a ``RoundGrid`` of ``round_size`` nodes
    and evaluate none.

    fedsec evaluates centrally on the server, so federated evaluation is switched off.
    """
    strategy.fraction_train = 1.0
    strategy.min_train_nodes = round_size
    strategy.min_available_nodes = round_size
    strategy.fraction_evaluate = 0.0
    strategy.min_evaluate_nodes = 0
