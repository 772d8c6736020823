"""Local training and evaluation loops, plus flat-parameter helpers.

Every client, the central pre-training and the attacks train through ``train``, and
everything that scores a model goes through ``evaluate`` / ``predict_logits``.  Pure torch
(no Flower), whole data sets as tensors in memory (federated client shards are small),
no DataLoader: minibatches are index slices of a seeded permutation.

The flat-vector helpers (``flatten_params``, ``assign_flat_params``) let attacks treat the
weights that local training moves as one vector: the parameters view of the one model
layout (``fedsec_core.layout``), parameters only, in ``model.parameters()`` order.
Buffers such as BatchNorm running statistics are not in it; the vector a defense aggregates is the
layout's state view, which has them (``fedsec_core.layout`` says which view is used where).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsec_core.errors import ConfigError
from fedsec_core.layout import ModelLayout
from fedsec_core.sgd import SGD

Array = torch.Tensor | np.ndarray
Device = torch.device | str


@dataclass(frozen=True)
class TrainStats:
    """What one ``train`` call did.

    loss: mean cross-entropy per example over the last epoch (measured during training,
    i.e. with dropout active and weights changing; over the examples it used when
    ``max_steps`` ended it early); num_examples: size of the training set (the FedAvg
    weight, not multiplied by epochs); num_steps: optimizer steps taken.
    """

    loss: float
    num_examples: int
    num_steps: int


@dataclass(frozen=True)
class EvalStats:
    """Model quality on a data set: mean cross-entropy, accuracy in [0, 1], size."""

    loss: float
    accuracy: float
    num_examples: int


def _as_tensor(a: Array) -> torch.Tensor:
    """Return ``a`` as a tensor, sharing memory with a numpy array instead of copying it."""
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise if features and labels do not pair up, or there is nothing to use."""
    if y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"need x of shape (N, ...) and labels y of shape (N,), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.shape[0] == 0:
        raise ConfigError(
            "the data set is empty: training or evaluation needs at least one example"
        )


def _check_batch_size(batch_size: int) -> None:
    """Raise ConfigError unless ``batch_size`` is an int >= 1."""
    SGD["batch_size"].check("batch_size", batch_size)


def _check_hyperparameters(
    epochs: int, batch_size: int, lr: float, momentum: float, weight_decay: float
) -> None:
    """Raise ConfigError for training settings outside what SGD accepts: the constraint
    objects ``[train]`` declares its keys with (``fedsec_core.sgd.SGD``), so a value the
    config validated passes here by construction, and an attack's or the unlearning's
    own settings are judged by the same rule."""
    for key, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("lr", lr),
        ("momentum", momentum),
        ("weight_decay", weight_decay),
    ):
        SGD[key].check(key, value)


def _batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    order: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) minibatches on ``device``, in ``order`` if given; the last one may be short."""
    n = y.shape[0]
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            xb, yb = x[index], y[index]
        yield xb.to(device, non_blocking=True), yb.to(device, dtype=torch.long, non_blocking=True)


def _cuda_index(device: torch.device) -> int | None:
    """Index of the CUDA device ``device`` names, or None for a non-CUDA device."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _seed_global_rng(seed: int, cuda_index: int | None) -> None:
    """Seed the global generator that dropout on this device draws from (CPU or one GPU)."""
    if cuda_index is None:
        torch.default_generator.manual_seed(seed)
    else:
        with torch.cuda.device(cuda_index):
            torch.cuda.manual_seed(seed)


def step_count(n: int, epochs: int, batch_size: int, max_steps: int = 0) -> int:
    """The optimizer steps :func:`train` takes on ``n`` examples: ``ceil(n / batch_size)``
    an epoch, capped at ``max_steps`` when that is > 0."""
    steps = epochs * math.ceil(n / batch_size)
    return min(steps, max_steps) if max_steps else steps


def train(
    model: nn.Module,
    x: Array,
    y: Array,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    seed: int,
    device: Device = "cpu",
    max_steps: int = 0,
    after_step: Callable[[int], None] | None = None,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    constraint: Callable[[nn.Module], None] | None = None,
    lr_factor: Callable[[int], float] | None = None,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    | None = None,
) -> TrainStats:
    """Train ``model`` in place with minibatch SGD (momentum, weight decay) on cross-entropy.

    Each epoch visits every example once in the order of ``torch.randperm`` drawn from a
    ``torch.Generator`` seeded with ``seed``; the last, possibly partial, batch is used, so
    an epoch has ceil(N / batch_size) steps.  ``after_step(k)`` runs after the k-th
    optimizer step (k = 1, 2, ... over all epochs): attacks hook in there, e.g. PGD projects
    the weights back onto a norm ball every few steps.  ``penalty(model)``, when given, is
    added to every batch's loss before the backward pass (an attacker's soft pull on its
    own weights); the reported loss is the cross-entropy alone.  ``constraint(model)``,
    when given, runs after every optimizer step, before ``after_step``: an attacker's hard
    constraint, which moves the weights back into a set in place.  ``lr_factor(e)``, when
    given, sets the learning rate of epoch ``e`` (0-based) to ``lr * lr_factor(e)`` (an
    attacker's step schedule); ``batch_transform(xb, yb)``, when given, replaces every
    minibatch (on the device) before the forward pass (an attacker that poisons part of
    every batch); the reported loss is that of the transformed batches. ``max_steps`` > 0
    stops training after that many optimizer steps, mid-epoch if need be (FedSGD:
    ``epochs=1, max_steps=1`` takes one minibatch of the epoch's seeded permutation);
    0 trains every epoch in full.

    Dropout draws its masks from torch's global generator (of the training device), not
    from our generator, so that generator is seeded with ``seed`` too: the same model, data
    and seed then give bit-identical weights (at the same ``torch.set_num_threads``).  The
    seeding happens inside ``torch.random.fork_rng``, so the caller's global random stream
    is left as it was.  A fresh optimizer is made per call (no momentum carried over between
    rounds, as for an FL client).  The model is moved to ``device`` and stays in train mode;
    the data may live on the CPU and travels one batch at a time.
    """
    _check_hyperparameters(epochs, batch_size, lr, momentum, weight_decay)
    SGD["max_steps"].check("max_steps", max_steps)
    x, y = _as_tensor(x), _as_tensor(y)
    _check_data(x, y)
    device = torch.device(device)
    n = y.shape[0]
    last = step_count(n, epochs, batch_size, max_steps)  # the step training ends after
    model.to(device)
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    order_rng = torch.Generator().manual_seed(seed)
    step = 0
    cuda_index = _cuda_index(device)
    with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
        _seed_global_rng(seed, cuda_index)
        per_epoch = math.ceil(n / batch_size)
        while step < last:
            epoch = step // per_epoch
            if lr_factor is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr * lr_factor(epoch)
            loss_sum = torch.zeros((), device=device)
            seen = 0  # examples of this epoch used so far (all n unless max_steps cut it)
            order = torch.randperm(n, generator=order_rng).to(x.device)
            for xb, yb in _batches(x, y, batch_size, device, order):
                seen += yb.shape[0]
                if batch_transform is not None:
                    xb, yb = batch_transform(xb, yb)
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                (loss if penalty is None else loss + penalty(model)).backward()
                optimizer.step()
                if constraint is not None:
                    constraint(model)
                loss_sum += loss.detach() * yb.shape[0]
                step += 1
                if after_step is not None:
                    after_step(step)
                if step == last:
                    break
    return TrainStats(loss=loss_sum.item() / seen, num_examples=n, num_steps=step)


def evaluate(
    model: nn.Module, x: Array, y: Array, *, batch_size: int = 1024, device: Device = "cpu"
) -> EvalStats:
    """Mean cross-entropy and accuracy of ``model`` on (x, y), in eval mode without gradients.

    The model is moved to ``device`` and left in eval mode.
    """
    _check_batch_size(batch_size)
    x, y = _as_tensor(x), _as_tensor(y)
    _check_data(x, y)
    device = torch.device(device)
    model.to(device)
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for xb, yb in _batches(x, y, batch_size, device):
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
    n = y.shape[0]
    return EvalStats(loss=loss_sum.item() / n, accuracy=correct.item() / n, num_examples=n)


def predict_logits(
    model: nn.Module, x: Array, batch_size: int = 1024, device: Device = "cpu"
) -> torch.Tensor:
    """Logits of ``model`` for every row of ``x``: an (N, classes) tensor on the CPU.

    Runs in eval mode under ``torch.no_grad`` (not inference mode, so the result can still
    be used as a constant in later autograd computations); leaves the model in eval mode.
    """
    _check_batch_size(batch_size)
    x = _as_tensor(x)
    if x.shape[0] == 0:
        raise ConfigError("the data set is empty: prediction needs at least one example")
    device = torch.device(device)
    model.to(device)
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [
                model(x[i : i + batch_size].to(device)).cpu()
                for i in range(0, x.shape[0], batch_size)
            ]
        )


def parameter_count(model: nn.Module) -> int:
    """Number of scalars in ``model.parameters()`` (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def flatten_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one detached 1-D copy, in ``model.parameters()`` order, on their
    device: the parameters view of ``fedsec_core.layout.ModelLayout``."""
    return ModelLayout.of_module(model, buffers=False).flatten_module(model)


def assign_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy the 1-D vector ``flat`` into the model's parameters in place
    (inverse of ``flatten_params``).

    The values are copied (converted to each parameter's dtype and device), so later changes
    to ``flat`` do not reach the model.  Raises ValueError if the length does not match.
    """
    ModelLayout.of_module(model, buffers=False).load_module(model, flat)
