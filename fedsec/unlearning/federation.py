"""A federation as unlearning sees it: every client's examples as rows, who owns each.

The rows are every client's examples as it trains on them (the training split, then
the poisoned examples attackers train on that are not in their partitions: triggered
inputs, edge cases, flipped labels), then the test split, so one datamodel artifact
serves every later request, whatever the forget set (a real server would evaluate its
subset models on a forget client's data when the client hands it over).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedsec.config import ExperimentConfig, parse_client_ids
from fedsec_core.errors import ConfigError
from fedsec_core.training import evaluate


@dataclass
class Federation:
    """A config's federation as unlearning sees it: inputs = the clients' examples (the
    training split, then the attackers' poisoned examples), then the test split."""

    config: ExperimentConfig
    task: Any
    inputs: torch.Tensor
    labels: torch.Tensor
    n_train: int  # rows before the test split
    owner: np.ndarray  # client id of every row before the test split (-1: nobody's)
    n_split: int  # rows of the training split (clean); attackers' poisoned examples follow

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> Federation:
        from fedsec.task import get_task

        task = get_task(config)
        (xt, yt), (xs, ys) = task.train_data(), task.test_data()
        owner = np.full(len(yt), -1, dtype=np.int64)
        for pid, idx in enumerate(task.partitions):
            owner[idx] = pid
        inputs, labels, owners = [xt], [yt], [owner]
        for pid in task.schedule.pool if task.attack is not None and task.schedule.enabled else ():
            x, y = poisoned_examples(task, pid)
            inputs.append(x)
            labels.append(y)
            owners.append(np.full(len(y), pid, dtype=np.int64))
        owner = np.concatenate(owners)
        return cls(
            config,
            task,
            torch.cat([*inputs, xs]),
            torch.cat([*labels, ys]),
            len(owner),
            owner,
            len(yt),
        )

    @property
    def num_clients(self) -> int:
        return self.config.data.num_clients

    def client_rows(self, clients) -> np.ndarray:
        return np.flatnonzero(np.isin(self.owner, list(clients)))

    def retained_rows(self, forget) -> np.ndarray:
        return np.flatnonzero((self.owner >= 0) & ~np.isin(self.owner, list(forget)))

    def test_rows(self) -> np.ndarray:
        return np.arange(self.n_train, len(self.labels))

    def new_model(self) -> torch.nn.Module:
        return self.task.new_model()

    def model_from(self, state: dict) -> torch.nn.Module:
        model = self.new_model()
        model.load_state_dict(state)
        return model

    def backdoor_set(self):
        attack = self.task.attack
        return attack.backdoor_test_set(self.task.dataset) if attack is not None else None


def poisoned_examples(task, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples attacker ``partition_id`` trains on that its partition does not hold
    (same input and label): what a cooperating attacker would hand over beyond its clean data."""
    x, y = task.attack.attacker_data(task.pool_context(partition_id))
    own_x, own_y = task.client_data(partition_id)
    own = {(a.numpy().tobytes(), int(b)) for a, b in zip(own_x, own_y, strict=True)}
    new = [
        i
        for i, (a, b) in enumerate(zip(x, y, strict=True))
        if (a.numpy().tobytes(), int(b)) not in own
    ]
    keep = torch.tensor(new, dtype=torch.int64)
    return x[keep].to(own_x.dtype), y[keep].to(own_y.dtype)


def check_forget_set(clients, num_clients: int) -> tuple[int, ...]:
    """The forget set as sorted ids: ConfigError if empty, unknown ids or every client."""
    ids = (
        parse_client_ids(clients, "--clients")
        if isinstance(clients, str)
        else tuple(sorted(set(clients)))
    )
    if not ids:
        raise ConfigError("the forget set is empty: name at least one client (--clients 3,7)")
    bad = [c for c in ids if not 0 <= c < num_clients]
    if bad:
        raise ConfigError(
            f"unknown client id {bad[0]}: the federation has clients 0..{num_clients - 1}"
        )
    if len(ids) >= num_clients:
        raise ConfigError("the forget set is every client: nothing would remain to learn from")
    return ids


def model_metrics(fed: Federation, state: dict, forget) -> dict[str, float]:
    """Accuracy on the test split, the forget and retained clients' data, and BA."""
    model = fed.model_from(state)
    out = {}
    for name, rows in (
        ("test", fed.test_rows()),
        ("forget", fed.client_rows(forget)),
        ("retain", fed.retained_rows(forget)),
    ):
        idx = torch.from_numpy(rows)
        out[f"{name}_accuracy"] = evaluate(model, fed.inputs[idx], fed.labels[idx]).accuracy
    backdoor = fed.backdoor_set()
    if backdoor is not None:
        out["backdoor_accuracy"] = evaluate(model, *backdoor).accuracy
    return out
