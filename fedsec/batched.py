"""Many clients trained at once: the honest clients of a round as one vectorized computation.

``fedsec_core.training.train`` trains one client after another. On a GPU a small client (a
LeNet at batch 32) leaves the device mostly idle, so :func:`train_clients` trains a
round's clients together: their parameters are stacked along a leading client axis and
one ``torch.func.vmap`` of ``torch.func.grad`` over ``functional_call`` computes every
client's gradient on its own minibatch in one call per step. Pure torch (no Flower).

It reproduces ``fedsec_core.training.train`` client by client:

- data order: client ``i`` draws its epochs' permutations from
  ``torch.Generator().manual_seed(seeds[i])`` exactly as ``train`` does, and cuts each
  into ``ceil(n_i / batch_size)`` minibatches, the last one possibly short;
- loss: the mean cross-entropy of the minibatch (padding rows of a short batch, or of a
  client smaller than the batch, carry weight 0, the real ones ``1 / b``);
- optimizer: ``torch.optim.SGD`` with momentum and weight decay (dampening 0, not
  Nesterov), per client: ``d = g + wd * p; buf = m * buf + d; p -= lr * buf`` with a
  zero buffer before the first step, which is SGD's ``buf = d`` on that step exactly;
  a fresh buffer per call, as ``train`` makes a fresh optimizer; no gradient clipping
  (``train`` has none);
- clients of unequal sizes take different numbers of steps: the clients are ordered by
  their number of steps, longest first, so the ones still training at any step are a
  prefix of the stack and each step works on a view of that prefix (no masking of
  finished clients, no compute spent on them);
- ``max_steps`` > 0 ends a client after that many steps, as ``train`` does (its step
  count is the smaller of the two; its last epoch is the one that step falls in);
- the reported loss is ``train``'s: the last epoch's mean cross-entropy per example
  (over the examples it used, when ``max_steps`` cut it short).

Where it differs from ``train``, and why:

- rounding: batched kernels sum in another order, so float32 results are close to the
  sequential ones but not bit-identical (float64 agrees to about 1e-12 relative; the
  tests require 1e-6). That is why ``engine.batch_clients = "auto"`` batches on CUDA
  only and the CPU default stays sequential: committed CPU results stay bit for bit.
- dropout: vmap draws every client's masks in one call (``randomness="different"``)
  from torch's global generator of the device, seeded with one seed derived from the
  clients' seeds (inside ``fork_rng``, as ``train`` does). Each client gets masks of the
  same distribution as under ``train`` and independent of the others', but not the same
  masks: a client's masks depend on which clients train beside it (and on the chunking).
  The same config and seed still give the same results on the same machine.
- models with buffers (BatchNorm's running statistics: ``resnet18``) are not supported:
  the batched forward would have to update per-client buffers in place, which
  ``functional_call`` under ``vmap`` does not do; :func:`supports` says no and callers
  train them sequentially.
- memory: a chunk holds its clients' parameters, gradients and momentum (about 3 copies
  of the model per client) plus one minibatch's activations per client. A chunk that
  does not fit (``torch.OutOfMemoryError``, or the CPU allocator's failure) is split in
  half and retried, down to one client; ``max_chunk`` caps it up front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fedsec.config import ExperimentConfig
from fedsec_core.sgd import SGD
from fedsec_core.training import (
    Array,
    Device,
    TrainStats,
    _as_tensor,
    _check_data,
    _check_hyperparameters,
    _cuda_index,
    _seed_global_rng,
    step_count,
)


@dataclass(frozen=True)
class ClientResult:
    """One client's training: its parameters (``model.named_parameters()`` names, on the
    training device) and what ``train`` would have reported."""

    params: dict[str, torch.Tensor]
    stats: TrainStats


def supports(model: nn.Module) -> str | None:
    """None if :func:`train_clients` can train ``model`` exactly; else why not (one line)."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return (
            f"{type(model).__name__} has buffers ({buffers[0]}, ...: BatchNorm statistics), "
            "which the batched trainer cannot update per client"
        )
    return None


def model_problem(name: str) -> str | None:
    """None if model ``name`` can be trained batched; else why not (built on the meta device,
    so nothing is allocated)."""
    from fedsec.models import build_model

    with torch.device("meta"):
        model = build_model(name, (3, 32, 32), 10)
    reason = supports(model)
    return None if reason is None else f"model {name!r}: {reason}"


#: The engines whose nodes can each read every partition (simulations), where a round's
#: honest clients can go to one node as one batch (``fedsec.engines.batching``).
BATCHING_ENGINES = ("inprocess", "flower")


def use_batched(config: ExperimentConfig) -> tuple[bool, str]:
    """Whether ``config``'s honest clients train batched, and the run header's words for
    the path.

    ``engine.batch_clients``: ``false`` never; ``true`` always (``validate`` rejected it
    for the deployment engine and for models with buffers); ``auto`` (the default) when
    the training device is CUDA and the model has no buffers. ``auto`` never batches on
    the CPU: batched float32 results are not bit-identical to the sequential ones, and the
    committed CPU results must stay as they are (on this project's 2-core CPUs batching
    is also slower for conv models, see ``benchmarks/README.md``).

    Both simulation engines batch (:data:`BATCHING_ENGINES`: a round's honest clients go
    to one node as one message, ``fedsec.engines.batching``); the ``deployment`` engine
    never does: each SuperNode holds only its own partition.
    """
    from fedsec.task import resolve_device

    e = config.engine
    if e.name not in BATCHING_ENGINES:
        return False, (
            f"each client on its own node ({e.name} engine: a node holds only its own "
            "data, so clients cannot be batched across nodes)"
        )
    # how the clients train when they are not batched
    apart = (
        "one client after another" if e.name == "inprocess" else "each in its own ClientApp call"
    )
    if e.batch_clients == "false":
        return False, f"{apart} (engine.batch_clients = false)"
    problem = model_problem(config.model.name)
    if problem:
        return False, f"{apart} ({problem})"
    device = resolve_device(e.device)
    if e.batch_clients == "auto" and device.type != "cuda":
        return False, f"{apart} (engine.batch_clients = auto on {device.type})"
    return True, (
        f"honest clients of a round batched on {device.type}, one message to one node "
        f"(engine.batch_clients = {e.batch_clients}); attackers apart, {apart}"
    )


def train_clients(
    model: nn.Module,
    data: Sequence[tuple[Array, Array]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    seeds: Sequence[int],
    device: Device = "cpu",
    max_steps: int = 0,
    max_chunk: int | None = None,
) -> list[ClientResult]:
    """Train one copy of ``model`` per client on ``data[i]`` with seed ``seeds[i]``, together.

    Every client starts from ``model``'s weights (left unchanged; the model is moved to
    ``device`` and set to train mode, as ``train`` does) and trains as
    ``fedsec_core.training.train(copy, x_i, y_i, epochs=..., seed=seeds[i], ...)`` would (see
    the module docstring for what is the same and what is not). Returns one
    :class:`ClientResult` per client, in the order of ``data``. Clients go in chunks of
    at most ``max_chunk`` (None: all at once), halved while a chunk runs out of memory.
    """
    _check_hyperparameters(epochs, batch_size, lr, momentum, weight_decay)
    SGD["max_steps"].check("max_steps", max_steps)
    if len(data) != len(seeds):
        raise ValueError(f"got {len(data)} clients' data but {len(seeds)} seeds")
    if not data:
        return []
    reason = supports(model)
    if reason is not None:
        raise ValueError(reason)
    if max_chunk is not None and max_chunk < 1:
        raise ValueError(f"max_chunk must be >= 1 or None, got {max_chunk!r}")
    tensors = []
    for x, y in data:
        x, y = _as_tensor(x), _as_tensor(y)
        _check_data(x, y)
        tensors.append((x, y))
    device = torch.device(device)
    model = model.to(device)
    model.train()
    # Longest first: the clients still training at a step are a prefix of a chunk.
    steps = [step_count(y.shape[0], epochs, batch_size, max_steps) for _, y in tensors]
    order = sorted(range(len(tensors)), key=lambda i: -steps[i])
    chunk = len(order) if max_chunk is None else min(max_chunk, len(order))
    results: dict[int, ClientResult] = {}
    start = 0
    while start < len(order):
        members = order[start : start + chunk]
        try:
            trained = _train_chunk(
                model,
                [tensors[i] for i in members],
                [int(seeds[i]) for i in members],
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                device=device,
                max_steps=max_steps,
            )
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if chunk == 1 or not _out_of_memory(exc):
                raise
            chunk = (chunk + 1) // 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        results.update(zip(members, trained, strict=True))
        start += len(members)
    return [results[i] for i in range(len(tensors))]


def _out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error or the CPU allocator's failure."""
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)


def dropout_seed(seeds: Sequence[int]) -> int:
    """The seed of the global generator that a chunk's dropout masks are drawn from."""
    return int(np.random.SeedSequence([int(s) for s in seeds]).generate_state(1)[0])


def _batch_plan(
    sizes: Sequence[int], seeds: Sequence[int], epochs: int, batch_size: int, max_steps: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Which example every client uses in every step, in ``train``'s order.

    Returns ``index`` (clients, steps, width): rows of the clients' concatenated data
    (a padding slot points at the client's first example); ``weight`` of the same shape:
    ``1 / b`` for the ``b`` real examples of that step's minibatch, 0 for padding;
    ``last_epoch`` (clients, steps): the step belongs to the client's last epoch; the
    number of steps of each client; and the examples of its last epoch that it used (its
    size, unless ``max_steps`` cut that epoch short). Clients must come longest first. ``width`` is
    ``batch_size``, or the largest client's size when every client is smaller than a
    batch (then each takes one step an epoch on all its examples: padding to the batch
    size would only add rows of weight 0).
    """
    total = max(step_count(n, epochs, batch_size, max_steps) for n in sizes)
    width = min(batch_size, max(sizes))
    c = len(sizes)
    index = torch.zeros((c, total, width), dtype=torch.long)
    weight = torch.zeros((c, total, width), dtype=torch.float64)
    last_epoch = torch.zeros((c, total), dtype=torch.bool)
    counts, last_seen = [], []
    offset = 0
    for i, (n, seed) in enumerate(zip(sizes, seeds, strict=True)):
        per_epoch = math.ceil(n / batch_size)
        order_rng = torch.Generator().manual_seed(seed)
        # exactly train's draws: one randperm per epoch from the client's generator
        perms = torch.stack([torch.randperm(n, generator=order_rng) for _ in range(epochs)])
        slots = torch.full((epochs, per_epoch * batch_size), -1, dtype=torch.long)
        slots[:, :n] = perms
        # a client's real examples fill the first min(n, batch_size) <= width columns
        slots = slots.reshape(epochs * per_epoch, batch_size)[:, :width]
        count = step_count(n, epochs, batch_size, max_steps)
        slots = slots[:count]
        real = slots >= 0
        rows = real.sum(dim=1, keepdim=True)
        index[i, :count] = torch.where(real, slots, 0) + offset
        weight[i, :count] = real.double() / rows
        first_of_last = (count - 1) // per_epoch * per_epoch
        last_epoch[i, first_of_last:count] = True
        counts.append(count)
        last_seen.append(int(real[first_of_last:count].sum()))
        offset += n
    return index, weight, last_epoch, counts, last_seen


def _train_chunk(
    model: nn.Module,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    seeds: list[int],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
    max_steps: int = 0,
) -> list[ClientResult]:
    """Train the clients of ``data`` (longest first) together; see :func:`train_clients`."""
    c = len(data)
    sizes = [y.shape[0] for _, y in data]
    index, weight, last_epoch, counts, last_seen = _batch_plan(
        sizes, seeds, epochs, batch_size, max_steps
    )
    x_all = torch.cat([x for x, _ in data]).to(device)
    y_all = torch.cat([y for _, y in data]).to(device, dtype=torch.long)
    index, last_epoch = index.to(device), last_epoch.to(device)
    names = [name for name, _ in model.named_parameters()]
    first = dict(model.named_parameters())
    dtype = first[names[0]].dtype
    weight = weight.to(device, dtype=dtype)
    params = [first[n].detach().unsqueeze(0).expand(c, *first[n].shape).clone() for n in names]
    buffers = [torch.zeros_like(p) for p in params]
    loss_sums = torch.zeros(c, device=device, dtype=dtype)

    def client_loss(flat, xb, yb, wb):
        logits = functional_call(model, dict(zip(names, flat, strict=True)), (xb,))
        per_example = F.cross_entropy(logits, yb, reduction="none")
        # the step's loss is the batch mean; train reports mean * b, the batch's sum
        return (per_example * wb).sum(), torch.where(wb > 0, per_example, 0).sum().detach()

    step_grads = vmap(grad(client_loss, has_aux=True), randomness="different")
    # active[s]: how many clients (a prefix) still train at step s
    active = [sum(1 for k in counts if k > s) for s in range(max(counts))]
    cuda_index = _cuda_index(device)
    with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
        _seed_global_rng(dropout_seed(seeds), cuda_index)
        for s, k in enumerate(active):
            rows = index[:k, s]
            live = [p[:k] for p in params]
            grads, losses = step_grads(live, x_all[rows], y_all[rows], weight[:k, s])
            with torch.no_grad():
                # torch.optim.SGD (foreach): d = g + wd p; buf = m buf + d; p -= lr buf
                if weight_decay != 0:
                    grads = torch._foreach_add(grads, live, alpha=weight_decay)
                moments = [b[:k] for b in buffers]
                if momentum != 0:
                    torch._foreach_mul_(moments, momentum)
                    torch._foreach_add_(moments, grads)
                    grads = moments
                torch._foreach_add_(live, grads, alpha=-lr)
                loss_sums[:k] += torch.where(last_epoch[:k, s], losses, 0)
    sums = loss_sums.tolist()
    return [
        ClientResult(
            params={n: p[i].clone() for n, p in zip(names, params, strict=True)},
            stats=TrainStats(
                loss=sums[i] / last_seen[i], num_examples=sizes[i], num_steps=counts[i]
            ),
        )
        for i in range(c)
    ]
