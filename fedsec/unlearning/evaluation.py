"""The KLoM protocol (Georgiev et al. 2024, "Attribute-to-Delete: Machine Unlearning via
Datamodel Matching"): N originals vs N oracles, per method, per split.

1. Train N original federations (training seeds derived from the config's seed, the
   federation itself fixed) and N oracles without the forget clients F.
2. Unlearn F from each original with every method (``retrain`` retrains each original's
   seed without F; ``om`` matches, per original, the mean logits of ``om_oracles``
   federations retrained without F from seeds derived from that original's seed, the
   oracles ``fedsec unlearn --method om`` would train for that request).
3. Per example, KLoM of the N unlearned models' margins against the N oracles'; report
   the 95th percentile over the forget clients' examples, the retained clients' examples
   and the test split, with accuracies (and backdoor accuracy) averaged over models, wall
   time per deletion request, the datamodel's one-off cost and its payoff count.
4. The share of the do-nothing-to-retrain gap each method closes on the forget split,
   with a 95% bootstrap interval over the requests (:func:`gap_intervals`; KLoM
   itself gets none, as the function says why).

Trained federations are kept in ``DIR/models/<inputs hash>/<config hash>/`` (a rerun, say
with other matching settings, trains nothing again; the inputs hash covers the examples
the clients train on, attackers' poisoned ones included, so models trained on other data
are never reused), the datamodel in ``DIR/datamodel.pt``, and every unlearned model in
``DIR/unlearned/<request hash>.pt`` with its seconds and matching report, so that an
evaluation stopped part-way (a matching method on a CNN takes minutes a request) resumes
where it stopped. The request hash covers the method, the model unlearned, the forget
clients, the settings and what the method matches (the datamodel, the oracles' logits).

KLoM is noisy below N of about 80 (the paper's remark); compare methods, not values.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsec.config import ExperimentConfig
from fedsec.unlearning import DEFAULT_KLOM_MODELS, DEFAULT_OM_ORACLES, METHODS
from fedsec.unlearning.artifact import tensor_hash
from fedsec.unlearning.federated import (
    DATAMODEL_FILE,
    Federation,
    UnlearnSettings,
    check_forget_set,
    get_datamodel,
    model_metrics,
    train_federations,
    training_examples,
    unlearn_state,
)
from fedsec.unlearning.klom import klom, margins, percentile
from fedsec.unlearning.matching import MatchingReport
from fedsec.unlearning.settings import auto_count, check_auto_count, check_request
from fedsec.unlearning.subsets import federation_variant
from fedsec_core.atomic import atomic_torch_save
from fedsec_core.errors import ConfigError
from fedsec_core.seeding import derive_seed
from fedsec_core.training import predict_logits

SPLITS = ("forget", "retain", "test")
BOOTSTRAP_RESAMPLES = 2000
INTERVAL = [2.5, 97.5]  # percentiles of the bootstrap distribution: a 95% interval


def gap_intervals(
    forget_margins: dict[str, torch.Tensor],
    oracle_margins: torch.Tensor,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, dict[str, Any]]:
    """95% bootstrap intervals, over the requests, of the share of the do-nothing-to-
    retrain gap each method closes on the forget split, ``(none - method) / (none -
    retrain)`` of the KLoM p95s.

    ``forget_margins``: per method, the (N, n) margins of its N unlearned models on the
    forget examples, row i unlearned from original i (``retrain``: original i's seed
    retrained without F; ``none``: original i itself); ``oracle_margins`` the (N_o, n)
    oracles'. A resample draws N requests with replacement, the same rows for every method
    (their models share the original, so the comparison is paired), and N_o oracles
    independently; KLoM is recomputed on the resampled models. Percentile intervals of
    ``resamples`` draws from a generator seeded with ``seed``; a resample whose gap is not
    positive gives no share (``gap_resamples`` counts those that do).

    Why the share and not KLoM itself: a resample repeats models, which makes each
    example's margin histogram lumpier and its KL larger, so a resampled KLoM p95 is
    biased upwards (on the digits evaluation retrain's p95 of 1.51 resamples to a median
    of 3.1; ``forget_resampled_median`` records it) and a percentile interval of KLoM is
    no confidence interval. The share is a ratio of two such inflated differences, in
    which the inflation largely cancels; ``gap_closed_median`` beside the point estimate
    shows how far it does."""
    gen = torch.Generator().manual_seed(seed)
    n, n_o = next(iter(forget_margins.values())).shape[0], oracle_margins.shape[0]
    p95 = {m: torch.empty(resamples, dtype=torch.float64) for m in forget_margins}
    for b in range(resamples):  # each draw is one vectorised KLoM over all examples
        rows = torch.randint(n, (n,), generator=gen)
        oracles = oracle_margins[torch.randint(n_o, (n_o,), generator=gen)]
        for method, margins_ in forget_margins.items():
            p95[method][b] = percentile(klom(margins_[rows], oracles))
    out: dict[str, dict[str, Any]] = {
        m: {"forget_resampled_median": float(np.median(v.numpy()))} for m, v in p95.items()
    }
    if "none" in p95 and "retrain" in p95:
        gap = p95["none"] - p95["retrain"]
        ok = gap > 0
        for method, values in p95.items():
            share = ((p95["none"] - values) / gap)[ok].numpy()
            out[method]["gap_closed"] = (
                np.percentile(share, INTERVAL).tolist() if len(share) else None
            )
            out[method]["gap_closed_median"] = float(np.median(share)) if len(share) else None
            out[method]["gap_resamples"] = int(ok.sum())
    return out


def most_influential(datamodel, num: int = 1) -> tuple[int, ...]:
    """The ``num`` units with the largest mean |B| (``Datamodel.influence``)."""
    return tuple(
        sorted(int(i) for i in torch.argsort(datamodel.influence(), descending=True)[:num])
    )


def klom_splits(fed: Federation, forget) -> dict[str, np.ndarray]:
    """KLoM's splits of ``fed.inputs``: the forget clients' examples, the retained
    clients' and the test split (rows)."""
    return {
        "forget": fed.client_rows(forget),
        "retain": fed.retained_rows(forget),
        "test": fed.test_rows(),
    }


def model_margins(fed: Federation, model_states) -> torch.Tensor:
    """(models, inputs): each model's margin on every input of ``fed``."""
    return torch.stack(
        [margins(predict_logits(fed.model_from(s), fed.inputs), fed.labels) for s in model_states]
    )


def request_hash(
    method: str,
    state: dict,
    forget,
    seed: int,
    settings: UnlearnSettings,
    *,
    datamodel_B: torch.Tensor | None = None,
    om_target: torch.Tensor | None = None,
) -> str:
    """sha256 naming one unlearning request: the method, the model's tensors, the forget
    clients, the seed (the matching's batches), the settings and what the method matches:
    the datamodel's ``B`` for DMM, the oracles' mean logits for OM, nothing for the others.
    So an OM model stays valid when the datamodel changes, a DMM model when the oracles do.
    """
    matched = (datamodel_B if method == "dmm" else None, om_target if method == "om" else None)
    h = hashlib.sha256(f"{method}|{tuple(forget)}|{seed}|{settings!r}".encode())
    for name in sorted(state):
        h.update(f"{name}:{tensor_hash(state[name])}".encode())
    for x in matched:
        h.update(b"-" if x is None else tensor_hash(x).encode())
    return h.hexdigest()


def unlearn_cached(cache_dir: Path, method: str, *, state: dict, forget, seed: int, **kwargs):
    """``unlearn_state`` once per request: (state dict, seconds, MatchingReport or None),
    read back from ``cache_dir`` when that request was already unlearned."""
    datamodel = kwargs.get("datamodel")
    key = request_hash(
        method,
        state,
        forget,
        seed,
        kwargs["settings"],
        datamodel_B=datamodel.B if datamodel is not None else None,
        om_target=kwargs.get("om_target"),
    )
    path = cache_dir / f"{key[:32]}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        report = saved["matching"] and MatchingReport(**saved["matching"])
        return saved["state"], saved["seconds"], report
    t0 = time.perf_counter()
    outcome = unlearn_state(kwargs.pop("fed"), state, method, forget, seed=seed, **kwargs)
    seconds = time.perf_counter() - t0
    matching = outcome.matching.as_dict() if outcome.matching is not None else None
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"state": outcome.state, "seconds": seconds, "matching": matching}, path)
    return outcome.state, seconds, outcome.matching


def klom_evaluation(
    config: ExperimentConfig,
    clients: str,
    out_dir: str | Path,
    *,
    n_models: int = DEFAULT_KLOM_MODELS,
    methods: tuple[str, ...] = tuple(METHODS.names()),
    num_models: int | None = None,
    q: float | None = None,
    workers: int | None = None,
    settings: UnlearnSettings | None = None,
    om_oracles: int = DEFAULT_OM_ORACLES,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the protocol and write ``klom.json``, ``klom.md``, ``klom.png`` into ``out_dir``.

    ``clients``: ids like ``"3,7"``, or ``"auto"`` / ``"auto:K"`` for the K most influential
    clients by the datamodel.
    """
    out_dir = Path(out_dir)
    settings = settings or UnlearnSettings()
    check_request(
        settings, subsets=num_models, q=q, workers=workers, om_oracles=om_oracles, models=n_models
    )
    auto = auto_count(clients)
    if auto is not None:
        check_auto_count(auto, config.data.num_clients)
    if "gradient-ascent" in methods and not settings.cooperative:  # before any training
        raise ConfigError(
            "gradient-ascent needs the forget clients' data: drop it from --methods "
            "or --no-forget-data"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Unlearning runs here with the threads a client trains with, as retraining does.
    torch.set_num_threads(config.engine.client_num_cpus)
    base = federation_variant(config, config.seed)  # the federation pinned, as every model's
    fed = Federation.from_config(base)
    art = None
    if "dmm" in methods or auto is not None:
        art, _ = get_datamodel(
            fed,
            out_dir / DATAMODEL_FILE,
            num_models=num_models,
            q=q,
            workers=workers,
            progress=progress,
            log=log,
        )
    if auto is not None:
        forget = most_influential(art.datamodel, auto)
        log(f"fedsec: most influential client(s) by the datamodel: {forget}")
    forget = check_forget_set(clients if auto is None else forget, config.data.num_clients)

    seeds = [derive_seed(config.seed, "klom-original", i) for i in range(n_models)]
    oracle_seeds = [derive_seed(config.seed, "klom-oracle", i) for i in range(n_models)]
    jobs = [(s, ()) for s in seeds] + [(s, forget) for s in oracle_seeds]
    if "retrain" in methods:
        jobs += [(s, forget) for s in seeds]
    om_start = len(jobs)
    if "om" in methods:  # each request (original) retrains its own OM oracles, as in unlearn_run
        jobs += [(derive_seed(s, "om-oracle", j), forget) for s in seeds for j in range(om_oracles)]
    t0 = time.perf_counter()
    states, times = train_federations(
        base,
        jobs,
        workers=workers,
        desc="originals + oracles",
        progress=progress,
        cache_dir=out_dir / "models" / tensor_hash(fed.inputs)[:16],
    )
    log(f"fedsec: trained {len(jobs)} federations in {time.perf_counter() - t0:.1f}s")
    originals, oracles = states[:n_models], states[n_models : 2 * n_models]
    retrain_time = float(np.mean(times))  # one federation's own training time
    retrained = states[2 * n_models : om_start]
    # What a retraining computes, averaged over the requests (which clients a round
    # samples follows each training's seed).
    retrain_examples = np.mean(
        [training_examples(federation_variant(config, s, forget)) for s in seeds]
    )

    rows = klom_splits(fed, forget)

    oracle_margins = model_margins(fed, oracles)
    om_targets = [None] * n_models
    if "om" in methods:
        for i in range(n_models):
            group = states[om_start + i * om_oracles : om_start + (i + 1) * om_oracles]
            om_targets[i] = torch.stack(
                [predict_logits(fed.model_from(g), fed.inputs) for g in group]
            ).mean(0)

    report: dict[str, Any] = {
        "forget_clients": list(forget),
        "n_models": n_models,
        "forget_examples": len(rows["forget"]),
        "methods": {},
    }
    per_example: dict[str, dict[str, torch.Tensor]] = {}
    forget_margins: dict[str, torch.Tensor] = {}
    forget_rows = torch.from_numpy(rows["forget"])
    for method in methods:
        matching = []
        if method == "retrain":
            unlearned, seconds = retrained, retrain_time
        else:
            unlearned, request_seconds = [], []
            for s, state, target in zip(seeds, originals, om_targets, strict=True):
                state, took, how_far = unlearn_cached(
                    out_dir / "unlearned",
                    method,
                    fed=fed,
                    state=state,
                    forget=forget,
                    seed=s,
                    settings=settings,
                    datamodel=art.datamodel if art else None,
                    om_target=target,
                )
                unlearned.append(state)
                request_seconds.append(took)
                if how_far is not None:
                    matching.append(how_far)
            seconds = float(np.mean(request_seconds))  # each request's own time
            if method == "om":
                seconds += om_oracles * retrain_time  # every request needs its own oracles
        method_margins = model_margins(fed, unlearned)
        forget_margins[method] = method_margins[:, forget_rows]
        k = klom(method_margins, oracle_margins)
        per_example[method] = {split: k[torch.from_numpy(r)] for split, r in rows.items()}
        metrics = [model_metrics(fed, s, forget) for s in unlearned]
        entry = {split: percentile(per_example[method][split]) for split in SPLITS}
        entry.update(
            {f"{split}_mean": per_example[method][split].mean().item() for split in SPLITS}
        )
        entry.update({key: float(np.mean([m[key] for m in metrics])) for key in metrics[0]})
        entry["wall_time_per_request_s"] = seconds
        entry["examples_per_request"] = float(np.mean([r.examples for r in matching] or [0]))
        if method == "retrain":
            entry["examples_per_request"] = float(retrain_examples)
        elif method == "om":  # its own oracles' training, then the matching
            entry["examples_per_request"] += om_oracles * retrain_examples
        if matching:  # how far the fine-tuning got, over the N requests
            entry["matching"] = {
                "steps_mean": float(np.mean([r.steps for r in matching])),
                "start_loss_mean": float(np.mean([r.start_loss for r in matching])),
                "end_loss_mean": float(np.mean([r.end_loss for r in matching])),
                "converged": (
                    None
                    if matching[0].converged is None
                    else sum(bool(r.converged) for r in matching)
                ),
            }
        report["methods"][method] = entry
        log(
            f"fedsec: {method:16s} KLoM p95 forget {entry['forget']:.3f} "
            f"retain {entry['retain']:.3f} test {entry['test']:.3f}  "
            f"test acc {entry['test_accuracy']:.4f}  {seconds:.2f}s/request"
        )

    m = report["methods"]
    if "none" in m and "retrain" in m:
        gap = m["none"]["forget"] - m["retrain"]["forget"]
        report["gap_closed"] = {
            meth: (m["none"]["forget"] - v["forget"]) / gap if gap > 0 else None
            for meth, v in m.items()
        }
    report["intervals"] = gap_intervals(
        forget_margins,
        oracle_margins[:, forget_rows],
        seed=derive_seed(config.seed, "klom-bootstrap"),
    )
    if art is not None:
        report["datamodel"] = {
            "num_models": art.num_models,
            "q": art.q,
            "lambda": art.datamodel.lam,
            "build_wall_time_s": art.build_wall_time_s,
            "build_train_time_s": art.build_train_time_s,
        }
        if "dmm" in m and "retrain" in m:
            saving = m["retrain"]["wall_time_per_request_s"] - m["dmm"]["wall_time_per_request_s"]
            report["datamodel"]["speedup_per_request"] = (
                m["retrain"]["wall_time_per_request_s"] / m["dmm"]["wall_time_per_request_s"]
            )
            examples = m["dmm"].get("examples_per_request")
            report["datamodel"]["examples_ratio_per_request"] = (
                m["retrain"]["examples_per_request"] / examples if examples else None
            )
            report["datamodel"]["payoff_requests"] = (
                int(np.ceil(art.build_train_time_s / saving)) if saving > 0 else None
            )
    (out_dir / "klom.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "klom.md").write_text(markdown_table(report))
    plot_klom(
        per_example, out_dir / "klom.png", title=f"forget clients {list(forget)}, N={n_models}"
    )
    return report


def markdown_table(report: dict[str, Any]) -> str:
    has_ba = any("backdoor_accuracy" in v for v in report["methods"].values())
    head = ["method", "KLoM p95 forget", "retain", "test", "acc forget", "acc retain", "acc test"]
    head += ["BA"] if has_ba else []
    head += ["gap closed [95% bootstrap over requests]", "s / request"]
    head += ["example-gradients / request"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    gaps = report.get("gap_closed", {})
    for name, v in report["methods"].items():
        cells = [name] + [f"{v[s]:.3f}" for s in SPLITS]
        cells += [f"{v[f'{s}_accuracy']:.4f}" for s in SPLITS]
        cells += [f"{v['backdoor_accuracy']:.4f}"] if has_ba else []
        g = gaps.get(name)
        share = report.get("intervals", {}).get(name, {}).get("gap_closed")
        gap = "" if g is None else f"{100 * g:.0f}%"
        if gap and share and name not in ("none", "retrain"):
            gap += f" [{100 * share[0]:.0f}, {100 * share[1]:.0f}]"
        cells += [gap, f"{v['wall_time_per_request_s']:.2f}"]
        cells += [f"{v.get('examples_per_request', 0):,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_klom(per_example: dict[str, dict[str, torch.Tensor]], path: Path, title: str = "") -> None:
    """Empirical CDFs of per-example KLoM, one panel per split, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPLITS), figsize=(4.2 * len(SPLITS), 3.6), sharey=True)
    for ax, split in zip(axes, SPLITS, strict=True):
        for method, splits in per_example.items():
            v = np.sort(splits[split].numpy())
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=method)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_title(f"{split} examples")
        ax.set_xlabel("per-example KLoM")
        ax.axhline(0.95, color="gray", lw=0.5, ls=":")
    axes[0].set_ylabel("fraction of examples")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
