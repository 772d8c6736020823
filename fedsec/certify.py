"""CRFL's certification of the final global model (Xie et al., ICML 2021).

After the last round of a run whose defense is ``crfl``, the server smooths the final
model (``defenses.rules.crfl.certify``) on the test split and adds to that round's
record in metrics.jsonl:

- ``smoothed_accuracy``: the majority vote of the noisy models, right or not certified;
- ``certified_accuracy``: ``{radius: share}``, the test examples predicted correctly with
  a certified radius at least ``radius`` (the rule's ``radii``), non-increasing in it;
- ``certification``: what the radius was computed from (``attack_round``, ``attackers``,
  ``attacker_weights``, ``local_steps``, ``lr``, ``lipschitz``, ``contraction``,
  ``radius_scale``, the samples, ``alpha``, ``smoothing_std``), ``max_radius``, the
  radius of an example on which every noisy model agrees (None: such votes certify
  nothing), and ``abstained``, the share of examples certified at no radius.

The theorem's constants that describe the run come from the config:

- ``t_adv``: the last round in which the attack schedule has an attacker (the theorem
  covers one attack round; with several, the radius covers an attacker who poisons only
  in the last, whose effect the fewest noisy rounds contract). Without an attack: the
  last round, with one hypothetical attacker holding the round's largest partition.
- ``p_i``: each attacker's share of the examples of that round's sampled clients (its
  FedAvg weight; an attacker's poisoned set counted at its size, as the server tells it).
- ``tau_i``: ``train.local_epochs * ceil(n_i / train.batch_size)`` local SGD steps.
- ``eta``: the client learning rate of round ``t_adv``, ``train.lr * train.lr_decay **
  (t_adv - 1)``, divided by ``1 - train.momentum``: the theorem assumes plain SGD, and
  with momentum one gradient moves the model by at most ``eta / (1 - momentum)`` in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ArrayRecord

from defenses.rules.crfl import CRFLRule, certified_radius, certify
from fedsec.task import FederatedTask, resolve_device
from fedsec_core.seeding import derive_seed


def final_certification(
    task: FederatedTask,
    rule: Any,
    arrays: ArrayRecord,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The keys CRFL adds to the last round's record (see the module docstring) for the
    final global model ``arrays``, and one progress line; ``{}`` for any other rule, or
    when its ``num_samples`` is 0."""
    if not isinstance(rule, CRFLRule) or rule.num_samples == 0:
        return {}
    state = arrays.to_torch_state_dict()
    config = task.config
    device = resolve_device(config.engine.device)
    model = task.new_model()
    model.load_state_dict(state)  # its non-floating entries are the final model's
    flat = torch.cat([v.reshape(-1) for v in state.values() if v.is_floating_point()])
    constants = rule.radius_constants(**run_constants(task))
    x, y = task.test_data()
    result = certify(
        model,
        flat.to(device),
        x,
        y,
        constants=constants,
        num_samples=rule.num_samples,
        alpha=rule.alpha,
        seed=derive_seed(config.seed, "crfl-certify"),
    )
    accuracies = result.certified_accuracy(rule.radius_list())
    certified = {f"{r:g}": value for r, value in accuracies.items()}
    unanimous = (rule.alpha / 2) ** (1 / rule.num_samples)  # p_A when every draw agrees
    record = {
        "smoothed_accuracy": result.smoothed_accuracy,
        "certified_accuracy": certified,
        "certification": {
            "samples": rule.num_samples,
            "alpha": rule.alpha,
            "smoothing_std": constants.smoothing_std,
            "abstained": result.abstained,
            "attack_round": config.train.rounds - constants.rounds_after_attack,
            "attackers": len(constants.attacker_weights),
            "attacker_weights": list(constants.attacker_weights),
            "local_steps": list(constants.local_steps),
            "lr": constants.lr,
            "lipschitz": constants.lipschitz,
            "contraction": constants.contraction(),
            "radius_scale": _finite(constants.scale()),
            "max_radius": _finite(certified_radius(unanimous, 1 - unanimous, constants)),
        },
    }
    progress(
        f"crfl certification ({rule.num_samples} samples): smoothed accuracy "
        f"{result.smoothed_accuracy:.4f}, certified accuracy "
        + ", ".join(f"{v:.4f} at r={r}" for r, v in certified.items())
        + f", abstained {result.abstained:.4f}, largest possible radius "
        + f"{record['certification']['max_radius']}"
    )
    return record


def run_constants(task: FederatedTask) -> dict[str, Any]:
    """The run's part of the radius constants (see the module docstring):
    ``rounds_after_attack``, ``attacker_weights``, ``local_steps`` and ``lr``."""
    config, schedule = task.config, task.schedule
    rounds = config.train.rounds
    attack_rounds = schedule.attack_rounds()
    t_adv = attack_rounds[-1] if attack_rounds else rounds
    sampled, malicious = schedule.sample(t_adv)
    sizes = {c: len(task.partitions[c]) for c in sampled}
    if malicious:
        sizes.update({c: task.attack.num_examples(sizes[c]) for c in malicious})
    else:
        malicious = [max(sampled, key=lambda c: sizes[c])]
    total = sum(sizes.values())
    t = config.train
    return {
        "rounds_after_attack": rounds - t_adv,
        "attacker_weights": [sizes[c] / total for c in malicious],
        "local_steps": [t.local_epochs * math.ceil(sizes[c] / t.batch_size) for c in malicious],
        "lr": t.lr * t.lr_decay ** (t_adv - 1) / (1 - t.momentum),
    }


def _finite(value: Any) -> float | None:
    """``value`` as a float, None when it is NaN or infinite (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None
