"""CRFL (Xie, Chen, Chen, Li; ICML 2021, arXiv 2106.08283).

"CRFL: Certifiably Robust Federated Learning against Backdoor Attacks". Training: the
server clips the new global model's parameter norm and adds Gaussian noise to it every
round. Evaluation: parameter smoothing (Monte-Carlo votes of noisy copies of the final
model) gives each test example a prediction and a certified radius, the largest trigger
norm a bounded backdoor attacker can use without changing that prediction.

This module holds both halves, free of Flower: :class:`CRFLRule` (the aggregation) and
:func:`certify` with the paper's radius (:class:`RadiusConstants`). The certification is
the rule's post-training step (:meth:`CRFLRule.after_training`, which fedsec's server
runs on the final model, ``fedsec_core.hooks``): it takes the constants that describe the run
(rounds, learning rate, local steps, the attackers' weights) from the run's facts
(:func:`run_constants`) and the others from the rule's parameters, and adds to the last
round's record in metrics.jsonl:

- ``smoothed_accuracy``: the majority vote of the noisy models, right or not certified;
- ``certified_accuracy``: ``{radius: share}``, the test examples predicted correctly with
  a certified radius at least ``radius`` (the rule's ``radii``), non-increasing in it;
- ``certification``: what the radius was computed from (``attack_round``, ``attackers``,
  ``attacker_weights``, ``local_steps``, ``lr``, ``lipschitz``, ``contraction``,
  ``radius_scale``, the samples, ``alpha``, ``smoothing_std``), ``max_radius``, the
  radius of an example on which every noisy model agrees (None: such votes certify
  nothing), and ``abstained``, the share of examples certified at no radius.

The theorem's constants that describe the run:

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedsec_core.hooks import FinalModel
from fedsec_core.layout import ModelLayout
from fedsec_core.seeding import derive_seed

from .base import (
    AggregationResult,
    ClientBatch,
    SeededRule,
    combine,
    non_negative,
    normalized,
    param,
    positive,
)

#: Test examples per forward pass in :func:`certify`.
CERTIFY_BATCH = 1024


def parse_radii(text: str) -> tuple[float, ...]:
    """``"0,0.01,0.1"`` -> ``(0.0, 0.01, 0.1)``, sorted and distinct; ValueError unless
    every item is a finite number >= 0 and there is at least one."""
    values = set()
    for part in str(text).split(","):
        if part.strip():
            value = float(part)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"radius {part.strip()!r} is not a finite number >= 0")
            values.add(value)
    if not values:
        raise ValueError("no radius given")
    return tuple(sorted(values))


def _valid_radii(text: str) -> bool:
    try:
        parse_radii(text)
    except ValueError:
        return False
    return True


def lipschitz_constant(norm_bound: float) -> float:
    """``L_Z = sqrt(2 + 2 rho + rho^2)`` for a model of norm at most ``rho``: the reference
    code's Lipschitz constant (``cal_prob_bound`` in ``certify_mnist.py``, with ``rho``
    the model's norm at the attack round), for its multinomial logistic regression."""
    return math.sqrt(2 + 2 * norm_bound + norm_bound**2)


def clip_to_norm(vector: torch.Tensor, bound: float) -> torch.Tensor:
    """``w * min(1, bound / ||w||_2)`` (the norm in float64); a new tensor."""
    norm = torch.linalg.vector_norm(vector, dtype=torch.float64)
    factor = (bound / norm.clamp_min(torch.finfo(torch.float64).tiny)).clamp(max=1)
    return vector * factor.to(vector.dtype)


@dataclass(kw_only=True)
class CRFLRule(SeededRule):
    """Data-size-weighted mean of the client models, clipped to L2 norm ``norm_bound``,
    plus ``N(0, noise_std^2)`` on every parameter; certification of the final model by
    parameter smoothing (:func:`certify`).

    Aggregation, every round: ``w = sum_i p_i w_i`` (FedAvg, ``p_i`` the data sizes,
    normalised), ``w <- w min(1, norm_bound / ||w||)``, ``w <- w + N(0, noise_std^2 I)``.
    As every rule, it sees the floating-point entries of the state dict as one vector
    (BatchNorm running statistics included), and both the clipping and the noise apply to
    all of them, as in :class:`~defenses.rules.WeakDPRule`. Every client is accepted;
    there are no scores.

    Where the paper, its code (github.com/AI-secure/CRFL) and this rule differ:

    - The reference clips the norm of the trainable parameters only (``named_parameters``)
      but adds noise to every state-dict entry; its models (multinomial logistic
      regression on MNIST, EMNIST and LOAN) have no buffers, so the two agree there.
    - The reference grows the bound over rounds, ``rho_t = min(param_clip_thres, a t +
      b)`` (MNIST ``min(15, 0.1 t + 2)``, EMNIST ``min(100, 0.25 t + 4)``); here it is
      the constant ``norm_bound`` (the theorem holds for any ``rho_t``).
    - The reference evaluates and releases the clipped model of round ``T`` without
      noise and smooths that. Here round ``T`` adds its noise like every other round
      (the released global model is ``clip + noise``), and the certification smooths
      the released model with one more step of the same kind: clip to ``norm_bound``,
      add ``N(0, smoothing_std^2)``. The theorem's contraction then has one factor per
      training round after the attack and one for the smoothing step (see
      :class:`RadiusConstants`).

    Parameters
    ----------
    norm_bound : float (default: 15.0)
        ``rho``, the bound on the global model's L2 norm: the reference's MNIST
        ``param_clip_thres`` (the cap of its growing bound). fedsec's models start near
        norm 8-12 (LeNet 8.9, the digits MLP 11.7), so 15 leaves them room to train;
        EMNIST's reference value is 100.
    noise_std : float (default: 0.01)
        ``sigma``, the standard deviation of the noise added each round (the reference's
        ``sigma_param`` on MNIST, EMNIST and LOAN).
    num_samples : int (default: 100)
        ``M``, noisy models drawn for the certification (the reference draws 1000: ten
        times the cost for tighter bounds, larger radii); 0 skips the certification.
        Unanimous votes give ``p_A >= (alpha/2)^(1/M)``, so with ``alpha = 0.001`` fewer
        than 11 samples certify nothing.
    alpha : float (default: 0.001)
        The certificate fails with probability at most ``alpha`` per example (the
        reference's ``alpha``): the two Clopper-Pearson bounds are each taken at level
        ``alpha / 2``.
    smoothing_std : float or None (default: None, = noise_std)
        ``sigma_T``, the noise of the smoothing step (the reference's ``test_sigma``,
        0.01, equal to its training noise).
    attack_scale : float (default: 10.0)
        ``gamma``, the factor the certificate allows an attacker to scale its update by
        (the reference's ``scale_factor``: 10 in its EMNIST config and the paper's main
        MNIST figures, 100 in its MNIST config; 1 for attackers that do not boost).
    poison_fraction : float (default: 0.05)
        ``q_B / n_B``, the share of poisoned examples in each of an attacker's batches
        that the certificate allows (the reference's MNIST ``poisoning_per_batch /
        batch_size`` = 5 / 100).
    lipschitz : float or None (default: None)
        ``L_Z``; None takes :func:`lipschitz_constant` of ``norm_bound``,
        ``sqrt(2 + 2 rho + rho^2)`` (16.03 for 15). The reference puts the model's norm at
        the attack round in place of ``rho`` (3 on MNIST, its growing bound at round 10).
    radii : str (default: "0,0.0001,0.0003,0.001,0.003,0.01,0.1,1")
        The radii (trigger L2 norms) at which certified accuracy is reported,
        comma-separated (a string: config values are scalars). The radius scales with
        ``1 / eta``: fedsec's default training (``lr = 0.05``, momentum 0.9) certifies
        radii near 1e-3, the paper's (``eta = 0.001``, no momentum) near 1.
    seed : int (default: 0)
        Seeds the noise: each call draws from a stream derived from the seed and the
        number of earlier calls, so a run (and a resumed run) is reproducible.

    Cost: FedAvg's pass over the ``(n, d)`` models, a norm and ``d`` normal draws per
    round; the certification, once, ``num_samples`` forward passes over the test set and
    ``num_samples * d`` normal draws, one noisy model in memory at a time.
    """

    name = "crfl"
    final_summary_keys = ("smoothed_accuracy", "certified_accuracy")
    selects_clients = False
    norm_bound: float = param(15.0, positive, "a number > 0")
    noise_std: float = param(0.01, non_negative, "a number >= 0")
    num_samples: int = param(100, lambda v: v >= 0, "an int >= 0 (0: no certification)")
    alpha: float = param(0.001, lambda v: 0 < v < 1, "a number in (0, 1)")
    smoothing_std: float | None = param(
        None, lambda v: v is None or non_negative(v), "a number >= 0 or None (= noise_std)"
    )
    attack_scale: float = param(10.0, positive, "a number > 0")
    poison_fraction: float = param(0.05, lambda v: 0 < v <= 1, "a number in (0, 1]")
    lipschitz: float | None = param(
        None, lambda v: v is None or positive(v), "a number > 0 or None (from norm_bound)"
    )
    radii: str = param(
        "0,0.0001,0.0003,0.001,0.003,0.01,0.1,1",
        _valid_radii,
        'comma-separated numbers >= 0, e.g. "0,0.1,1"',
    )

    def _aggregate(self, batch: ClientBatch) -> AggregationResult:
        model = clip_to_norm(combine(batch, normalized(batch.weights)), self.norm_bound)
        noise = self._standard_normal_like(model)
        accepted = torch.ones(batch.n, dtype=torch.bool, device=batch.models.device)
        return AggregationResult(model.add_(noise, alpha=self.noise_std), accepted)

    def after_training(self, final: FinalModel) -> dict[str, Any]:
        """The certification of the final model (see the module docstring): the keys it
        adds to the last round's record, and one progress line; ``{}`` when
        ``num_samples`` is 0."""
        if self.num_samples == 0:
            return {}
        model = final.new_model()
        model.load_state_dict(final.state)  # its non-floating entries are the final model's
        constants = self.radius_constants(**run_constants(final))
        x, y = final.test_data
        flat = ModelLayout.of_module(model).flatten(final.state)  # the vector the rules see
        result = certify(
            model,
            flat.to(final.device),
            x,
            y,
            constants=constants,
            num_samples=self.num_samples,
            alpha=self.alpha,
            seed=derive_seed(final.seed, "crfl-certify"),
        )
        accuracies = result.certified_accuracy(self.radius_list())
        certified = {f"{r:g}": value for r, value in accuracies.items()}
        unanimous = (self.alpha / 2) ** (1 / self.num_samples)  # p_A when every draw agrees
        record = {
            "smoothed_accuracy": result.smoothed_accuracy,
            "certified_accuracy": certified,
            "certification": {
                "samples": self.num_samples,
                "alpha": self.alpha,
                "smoothing_std": constants.smoothing_std,
                "abstained": result.abstained,
                "attack_round": final.train.rounds - constants.rounds_after_attack,
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
        final.progress(
            f"crfl certification ({self.num_samples} samples): smoothed accuracy "
            f"{result.smoothed_accuracy:.4f}, certified accuracy "
            + ", ".join(f"{v:.4f} at r={r}" for r, v in certified.items())
            + f", abstained {result.abstained:.4f}, largest possible radius "
            + f"{record['certification']['max_radius']}"
        )
        return record

    def radius_list(self) -> tuple[float, ...]:
        """The radii of ``radii``, sorted."""
        return parse_radii(self.radii)

    def radius_constants(
        self,
        *,
        rounds_after_attack: int,
        attacker_weights: Sequence[float],
        local_steps: Sequence[int],
        lr: float,
    ) -> RadiusConstants:
        """The theorem's constants: the rule's own, and those of the run given here."""
        return RadiusConstants(
            noise_std=self.noise_std,
            smoothing_std=self.noise_std if self.smoothing_std is None else self.smoothing_std,
            norm_bound=self.norm_bound,
            rounds_after_attack=rounds_after_attack,
            attacker_weights=tuple(float(p) for p in attacker_weights),
            local_steps=tuple(int(t) for t in local_steps),
            lr=lr,
            lipschitz=lipschitz_constant(self.norm_bound)
            if self.lipschitz is None
            else self.lipschitz,
            attack_scale=self.attack_scale,
            poison_fraction=self.poison_fraction,
        )


# ------------------------------------------------------------------ the certificate


@dataclass(frozen=True)
class RadiusConstants:
    """The constants of CRFL's certified radius (the paper's Theorem; the reference's
    ``cal_prob_bound`` in ``certify_mnist.py``).

    With ``R`` attackers attacking in round ``t_adv`` of ``T``, the prediction ``c_A`` of
    the smoothed model on an input is the same for every such attack whose trigger has
    L2 norm below

        RAD = sigma sqrt(-ln(1 - (sqrt(p_A) - sqrt(p_B))^2))
              / sqrt(2 R sum_i (p_i tau_i)^2 L_Z^2 gamma^2 eta^2 (q_B/n_B)^2 C)

    when ``p_A > p_B`` bound the probabilities of ``c_A`` and of every other class under
    the smoothing noise, where ``C = (2 Phi(rho / sigma) - 1)^(T - t_adv)
    (2 Phi(rho / sigma_T) - 1)`` is the contraction of the clipped, noised rounds after
    the attack and of the smoothing step (``2 Phi(x) - 1 = erf(x / sqrt 2)``). With
    equal ``tau_i = tau`` the sum is the paper's ``R tau^2 sum_i p_i^2``; the form per
    attacker follows from the same Cauchy-Schwarz step. The reference's product runs
    over rounds ``t_adv + 1 .. T - 1`` with ``sigma`` and round ``T`` with ``sigma_T``,
    because its round ``T`` adds no training noise (see :class:`CRFLRule`).

    The bound assumes plain SGD and a loss gradient that is ``L_Z``-Lipschitz in the
    input, as for the paper's models (multinomial logistic regression); for other models
    the radius is the formula's value, not a proof. Where the paper's experiments take
    their values (the reference's ``configs/*_params.yaml``): ``sigma = sigma_T = 0.01``,
    ``q_B/n_B = 5/100`` (MNIST), ``gamma = 10`` (MNIST main runs, EMNIST), ``p_i = 1/N``,
    ``tau`` = local examples / batch size, ``eta = 0.001``.

    noise_std: ``sigma``, the training noise (that of the attack round).
    smoothing_std: ``sigma_T``, the noise of the smoothing step.
    norm_bound: ``rho``, the clipping bound of every round and of the smoothing step.
    rounds_after_attack: ``T - t_adv``, training rounds after the attack round.
    attacker_weights: ``p_i``, each attacker's weight in the attack round's aggregate.
    local_steps: ``tau_i``, each attacker's local SGD steps in that round.
    lr: ``eta``, the local learning rate of the attack round.
    lipschitz: ``L_Z``. attack_scale: ``gamma``. poison_fraction: ``q_B / n_B``.
    """

    noise_std: float
    smoothing_std: float
    norm_bound: float
    rounds_after_attack: int
    attacker_weights: tuple[float, ...]
    local_steps: tuple[int, ...]
    lr: float
    lipschitz: float
    attack_scale: float
    poison_fraction: float

    def contraction(self) -> float:
        """``C``: ``(2 Phi(rho/sigma) - 1)^(T - t_adv) (2 Phi(rho/sigma_T) - 1)``."""

        def factor(std: float) -> float:
            return 1.0 if std == 0 else math.erf(self.norm_bound / (std * math.sqrt(2)))

        return factor(self.noise_std) ** self.rounds_after_attack * factor(self.smoothing_std)

    def scale(self) -> float:
        """The radius per unit of ``sqrt(-ln(1 - (sqrt(p_A) - sqrt(p_B))^2))`` (inf when
        the denominator is 0)."""
        spread = len(self.attacker_weights) * sum(
            (p * t) ** 2 for p, t in zip(self.attacker_weights, self.local_steps, strict=True)
        )
        step = self.lipschitz * self.attack_scale * self.lr * self.poison_fraction
        denominator = 2 * spread * step**2 * self.contraction()
        if denominator == 0:
            return math.inf
        return self.noise_std / math.sqrt(denominator)


def certified_radius(
    p_a: np.ndarray | float, p_b: np.ndarray | float, constants: RadiusConstants
) -> np.ndarray:
    """The radius of :class:`RadiusConstants` for bounds ``p_A`` (lower) and ``p_B``
    (upper), elementwise; NaN where ``p_A <= p_B`` (no certificate: the smoothed
    model abstains), inf where ``p_A = 1`` and ``p_B = 0``.

    (The reference computes a radius whatever the order of the bounds; the square
    ``(sqrt(p_A) - sqrt(p_B))^2`` hides the sign.)"""
    p_a = np.asarray(p_a, dtype=np.float64)
    p_b = np.asarray(p_b, dtype=np.float64)
    scale = constants.scale()
    gap = np.sqrt(p_a) - np.sqrt(p_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = -np.log1p(-(np.minimum(gap, 1.0) ** 2))
        radius = np.zeros_like(divergence) if scale == 0 else scale * np.sqrt(divergence)
    return np.where(p_a > p_b, radius, np.nan)


def clopper_pearson(counts: np.ndarray, trials: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds at level ``alpha`` each: ``(lower, upper)`` with
    ``P(p < lower) <= alpha`` and ``P(p > upper) <= alpha`` for ``counts`` successes in
    ``trials`` Bernoulli(p) draws (lower 0 at no success, upper 1 at all)."""
    from scipy.stats import beta  # scipy.stats takes a while to import; only here

    k = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(k > 0, beta.ppf(alpha, k, trials - k + 1), 0.0)
        upper = np.where(k < trials, beta.ppf(1 - alpha, k + 1, trials - k), 1.0)
    return lower, upper


@dataclass
class Certification:
    """Per test example: the smoothed model's vote and its certificate.

    labels: the true classes. votes: the class most noisy models predict (ties to the
    lower class). predictions: ``votes`` where certified, -1 where the smoothed model
    abstains (``p_A <= p_B``). p_a_lower, p_b_upper: the bounds. radius: the certified
    radius, NaN where it abstains.
    """

    labels: np.ndarray
    votes: np.ndarray
    predictions: np.ndarray
    p_a_lower: np.ndarray
    p_b_upper: np.ndarray
    radius: np.ndarray

    @property
    def smoothed_accuracy(self) -> float:
        """Share of examples whose majority vote is the true class (no abstention)."""
        return float(np.mean(self.votes == self.labels))

    @property
    def abstained(self) -> float:
        """Share of examples the smoothed model cannot certify at any radius."""
        return float(np.mean(self.predictions < 0))

    def certified_accuracy(self, radii: Sequence[float]) -> dict[float, float]:
        """Per radius ``r``: share of examples predicted correctly with radius ``>= r``."""
        correct = self.predictions == self.labels
        with np.errstate(invalid="ignore"):
            return {float(r): float(np.mean(correct & (self.radius >= r))) for r in radii}


def certify(
    model: torch.nn.Module,
    flat: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    constants: RadiusConstants,
    num_samples: int,
    alpha: float,
    seed: int,
    batch_size: int = CERTIFY_BATCH,
) -> Certification:
    """Parameter smoothing of the flat model ``flat`` and its certified radii.

    ``model`` is a module of the model's architecture (its non-floating entries are used
    as they are); ``flat`` its floating-point state-dict entries in order, as the rules
    see them (the state view of ``fedsec_core.layout``), on the device to run on. ``flat`` is
    clipped to ``constants.norm_bound``; each of ``num_samples`` draws adds
    ``N(0, constants.smoothing_std^2)`` to every entry (a stream seeded by ``seed``) and
    classifies every input, in batches of ``batch_size``. Per input, the top class
    ``c_A`` of the votes and the runner-up's count give one-sided Clopper-Pearson bounds
    ``p_A`` (lower) and ``p_B`` (upper), each at level ``alpha / 2``, so both hold with
    probability ``1 - alpha``; the radius is :func:`certified_radius`. The same draws
    choose ``c_A`` and bound it, as the reference does (Cohen et al.'s separate selection
    draws would be stricter).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    layout = ModelLayout.of_module(model)
    center = clip_to_norm(flat, constants.norm_bound)
    generator = torch.Generator(device=center.device)
    generator.manual_seed(seed)
    counts: torch.Tensor | None = None
    for _ in range(num_samples):  # one noisy model in memory at a time
        noise = torch.randn(
            center.shape, generator=generator, dtype=center.dtype, device=center.device
        )
        layout.load_module(model, center + constants.smoothing_std * noise)
        predicted, num_classes = _predict(model, inputs, center.device, batch_size)
        if counts is None:
            counts = torch.zeros(
                (inputs.shape[0], num_classes), dtype=torch.int64, device=center.device
            )
        counts.scatter_add_(1, predicted[:, None], torch.ones_like(predicted[:, None]))
    assert counts is not None
    votes_tensor = counts.argmax(dim=1)  # the first maximum: ties go to the lower class
    top = counts.gather(1, votes_tensor[:, None]).squeeze(1)
    runner_up = counts.scatter(1, votes_tensor[:, None], 0).max(dim=1).values
    p_a, _ = clopper_pearson(top.cpu().numpy(), num_samples, alpha / 2)
    _, p_b = clopper_pearson(runner_up.cpu().numpy(), num_samples, alpha / 2)
    radius = certified_radius(p_a, p_b, constants)
    votes = votes_tensor.cpu().numpy()
    return Certification(
        labels=labels.cpu().numpy().astype(np.int64),
        votes=votes,
        predictions=np.where(np.isnan(radius), -1, votes),
        p_a_lower=p_a,
        p_b_upper=p_b,
        radius=radius,
    )


def _predict(
    model: torch.nn.Module, inputs: torch.Tensor, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, int]:
    """The model's class for every input (on ``device``), and the number of classes."""
    model.to(device).eval()
    predicted, num_classes = [], 0
    with torch.no_grad():
        for chunk in inputs.split(batch_size):
            logits = model(chunk.to(device))
            num_classes = logits.shape[1]
            predicted.append(logits.argmax(dim=1))
    return torch.cat(predicted), num_classes


def run_constants(final: FinalModel) -> dict[str, Any]:
    """The run's part of the radius constants (see the module docstring):
    ``rounds_after_attack``, ``attacker_weights``, ``local_steps`` and ``lr``."""
    t = final.train
    rounds = t.rounds
    t_adv = final.attack_rounds[-1] if final.attack_rounds else rounds
    sampled, malicious = final.sample(t_adv)
    bad = set(malicious)
    sizes = {c: final.examples(c, c in bad) for c in sampled}
    if not malicious:
        malicious = [max(sampled, key=lambda c: sizes[c])]
    total = sum(sizes.values())
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
