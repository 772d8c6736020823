"""A Flower ``Grid`` that forwards every call to another grid: the base of the grids
fedsec puts between a strategy and the engine's grid (``fedsec.server.RoundGrid``,
which shows a strategy only the round's nodes; ``fedsec.engines.batching.BatchingGrid``,
which sends a round's honest clients as one message). A subclass overrides what it
changes and nothing else."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.serverapp import Grid


class ForwardingGrid(Grid):
    """Every ``Grid`` call goes to ``grid`` unchanged."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def set_run(self, run):  # pragma: no cover - the real grid owns the run
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, *args, **kwargs):  # pragma: no cover - deprecated in Flower
        return self._grid.create_message(*args, **kwargs)

    def push_messages(self, messages):
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        return self._grid.send_and_receive(messages, timeout=timeout)
