"""Time the batched client trainer against sequential training on one device.

For each model (``lenet`` and ``cnn`` on 1x28x28, ``vgg9`` on 3x32x32, 10 classes) and
each round size (10 and 30 clients), one round of local training, two ways in this
process on the same device, the same clients, data, seeds and starting weights:

- ``sequential``: ``fedsec_core.training.train`` for one client after another (what the
  ClientApp does; the client's data on the CPU, moved one minibatch at a time);
- ``batched``: ``fedsec.batched.train_clients`` for all of them at once (the chunk's
  data moved to the device once, inside the timed call).

Clients have unequal sizes (seeded, uniform in [0.5, 1.5] x ``--examples``), the models
their dropout on, float32, batch ``--batch-size``, SGD with momentum 0.9 and weight
decay 1e-4, as in a fedsec round. Each is the best of ``--repeats`` after one warm-up round
(vmap's tracing, cuDNN's algorithm choice, the allocator), the two alternated so that
they share the machine's drift. It prints the
samples/s of each (examples x epochs / wall time, ``torch.cuda.synchronize`` around
each on CUDA), their ratio (batched / sequential: > 1 means batching pays), the peak
GPU memory of each (CUDA only: ``torch.cuda.max_memory_allocated`` above what was
allocated before), and how far the batched weights are from the sequential ones
(float32 rounding, for the models without dropout; the exact check in float64 is
``tests/test_batched.py``). It ends
with ``batched_speedup: <the smallest ratio>``.

It imports no Flower (``fedsec.batched``, ``fedsec_core.training`` and ``fedsec.models``
need torch and numpy only), so it runs on a GPU machine that has no flwr.

Usage (from the repository root)::

    python benchmarks/batched_clients.py                     # cuda when present, else cpu
    python benchmarks/batched_clients.py --device cpu --quick   # small sizes for the CPU
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fedsec.batched import train_clients  # noqa: E402  # torch/numpy only, no flwr
from fedsec.models import build_model  # noqa: E402
from fedsec_core.training import flatten_params, train  # noqa: E402

SHAPES = {"lenet": (1, 28, 28), "cnn": (1, 28, 28), "vgg9": (3, 32, 32)}
#: mean examples per client: the default (GPU) size and --quick (CPU)
EXAMPLES = {"lenet": 200, "cnn": 200, "vgg9": 250}
QUICK_EXAMPLES = {"lenet": 48, "cnn": 48, "vgg9": 16}
HYPER = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def client_data(model: str, clients: int, mean: int, seed: int):
    """Unequal seeded client sets: sizes uniform in [0.5, 1.5] x ``mean``, Gaussian images,
    random labels (the timing does not depend on what is learnt)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(max(1, mean // 2), max(2, 3 * mean // 2) + 1, size=clients)
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(int(n), *SHAPES[model], generator=g),
            torch.randint(0, 10, (int(n),), generator=g),
        )
        for n in sizes
    ]


def sequential(model, data, seeds, device, epochs, batch_size):
    out = []
    for (x, y), seed in zip(data, seeds, strict=True):
        client = copy.deepcopy(model)
        train(client, x, y, epochs=epochs, batch_size=batch_size, seed=seed, device=device, **HYPER)
        out.append(flatten_params(client))
    return out


def batched(model, data, seeds, device, epochs, batch_size):
    results = train_clients(
        model, data, seeds=seeds, device=device, epochs=epochs, batch_size=batch_size, **HYPER
    )
    names = [n for n, _ in model.named_parameters()]
    return [torch.cat([r.params[n].reshape(-1) for n in names]) for r in results]


def timed(fn, device):
    """Wall time, peak extra GPU memory (bytes, None off CUDA) and result of one call."""
    peak = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    return seconds, peak, result


def measure_pair(first, second, device, repeats):
    """Both after a warm-up each, then alternated ``repeats`` times (so that both share
    the machine's drift): per function the best time, its peak memory and a result."""
    first(), second()  # warm-up
    best = [(float("inf"), None, None), (float("inf"), None, None)]
    for _ in range(repeats):
        for k, fn in enumerate((first, second)):
            run = timed(fn, device)
            if run[0] < best[k][0]:
                best[k] = run
    return best


def mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for the CPU")
    parser.add_argument("--models", default="lenet,cnn,vgg9")
    parser.add_argument("--clients", default="10,30", help="round sizes, comma-separated")
    parser.add_argument("--examples", type=int, default=0, help="mean examples per client")
    parser.add_argument("--epochs", type=int, default=0, help="local epochs (2; 1 with --quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=0, help="(3; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("batched_clients: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs or (1 if args.quick else 2)
    repeats = args.repeats or (1 if args.quick else 3)
    print(
        f"batched_clients: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"batched_clients: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    print(
        f"batched_clients: device {device}, {epochs} local epoch(s), batch {args.batch_size}, "
        f"float32, dropout on, best of {repeats} alternated, after a warm-up"
    )
    ratios = []
    for name in args.models.split(","):
        for clients in (int(c) for c in args.clients.split(",")):
            mean = args.examples or (QUICK_EXAMPLES if args.quick else EXAMPLES)[name]
            data = client_data(name, clients, mean, seed=clients)
            seeds = [1000 + i for i in range(clients)]
            torch.manual_seed(0)
            model = build_model(name, SHAPES[name], 10).to(device)
            samples = sum(len(y) for _, y in data) * epochs
            (t_seq, m_seq, w_seq), (t_bat, m_bat, w_bat) = measure_pair(
                partial(sequential, model, data, seeds, device, epochs, args.batch_size),
                partial(batched, model, data, seeds, device, epochs, args.batch_size),
                device,
                repeats,
            )
            start = flatten_params(model)
            diff = "- (dropout: other masks)"
            if not any(isinstance(m, torch.nn.Dropout) for m in model.modules()):
                worst = max(
                    ((b - s).norm() / (s - start).norm()).item()
                    for s, b in zip(w_seq, w_bat, strict=True)
                )
                diff = f"{worst:.1e} of the update"
            ratio = t_seq / t_bat
            ratios.append(ratio)
            print(
                f"{name:<6} {clients:>3} clients ({samples:>6,} samples): "
                f"sequential {samples / t_seq:>9,.0f} samples/s, batched "
                f"{samples / t_bat:>9,.0f} samples/s, ratio {ratio:5.2f}x; peak memory "
                f"{mib(m_seq)} / {mib(m_bat)}; weights vs sequential {diff}",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"batched_speedup: {min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
