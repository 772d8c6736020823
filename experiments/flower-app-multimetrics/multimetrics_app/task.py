"""The model, the data split by partition id, training and evaluation."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

TEST_SIZE = 297  # the last 297 of the 1,797 digits are the server's test set


def new_model(seed: int = 0) -> nn.Module:
    """An 8x8-pixel digit classifier: 64 -> 32 -> 10."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def partition(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``num_partitions``-th training digit, starting at ``partition_id``."""
    x, y = _digits()
    train_x, train_y = x[:-TEST_SIZE], y[:-TEST_SIZE]
    return train_x[partition_id::num_partitions], train_y[partition_id::num_partitions]


def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _digits()
    return x[-TEST_SIZE:], y[-TEST_SIZE:]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> float:
    """Plain SGD in batches of 32; returns the mean loss of the last epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(epochs):
        losses = []
        for start in range(0, len(x), 32):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[start : start + 32]), y[start : start + 32])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses) / len(losses)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(dim=1) == y).float().mean().item()
