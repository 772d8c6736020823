"""Defense-aware backdoors: the math of ``attack.evasion`` (``attacks.backdoor``).

Two ways for a backdoor attacker who knows the server's rule (Kerckhoffs: the defense is
public) to keep its update in the aggregate:

- :func:`largest_kept_scale` (``evasion = "scaling"``): the attacker runs the rule on its
  view of the round (benign updates it knows or estimates, plus its candidate) and keeps
  the largest ``lam`` in ``[0, 1]`` for which the rule keeps
  ``u_benign + lam (u_backdoor - u_benign)``; against a rule that keeps everyone (median,
  trimmed mean, clipping, ...) it matches the benign updates' median norm instead.
- ``evasion = "multi-metrics"``: Bagdasaryan et al.'s "constrain and scale" (AISTATS
  2020) applied to the three features Multi-metrics (Huang et al., ICCV 2023) scores:
  the update's Manhattan and Euclidean norms and its cosine distance to the global
  model. :func:`multi_metrics_penalty` is the soft part, a loss term that pulls those
  features towards the attacker's own benign update's; :func:`benign_metrics_constraint`
  the hard part, a projection after every optimizer step that keeps the Euclidean norm
  and the cosine distance at most the benign update's (a penalty alone cannot: benign
  updates of a pre-trained model are about 100x smaller than a backdoor's, and a penalty
  strong enough to hold that gap makes SGD with momentum diverge);
  :func:`benign_metrics_scale` the final scale, which brings the tightest of the three
  features to the benign value.

Pure functions of flat vectors and rules; vectorised. The scaling search works on the
vectors the server's rule sees (the state view of ``fedsec_core.layout``: parameters and
floating buffers), the multi-metrics penalty and projection on the parameters that local
training moves (its parameters view).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from fedsec_core.layout import ModelLayout
from fedsec_core.training import assign_flat_params, flatten_params

#: Values of ``attack.evasion``.
EVASIONS = ("none", "scaling", "multi-metrics")
#: Which rule the scaling search copies (``attack.rule_state``): a fresh one built from the
#: config, or (full knowledge only) the server's own, with the state it has this round.
RULE_STATES = ("fresh", "server")
#: Bisection steps of :func:`largest_kept_scale`: lam to within 2**-10 of the boundary.
SCALE_STEPS = 10


def metric_features(update: torch.Tensor, global_flat: torch.Tensor) -> torch.Tensor:
    """``(||u||_1, ||u||_2, 1 - cos(w0 + u, w0))`` in float64: what Multi-metrics' paper
    variant measures of one client. The cosine distance is computed from ``u`` (Lagrange's
    identity), so that a tiny angle does not cancel to zero in float32; differentiable."""
    u, w0 = update.double(), global_flat.double()
    w = w0 + u
    u_sq, w0_sq, u_dot = u.square().sum(), w0.square().sum(), u @ w0
    w_norm, w0_norm = w.square().sum().sqrt(), w0_sq.sqrt()
    across = (u_sq * w0_sq - u_dot.square()).clamp_min(0)  # ||w||^2 ||w0||^2 - <w, w0>^2
    distance = across / (w_norm * w0_norm * (w_norm * w0_norm + w @ w0)).clamp_min(1e-300)
    # + tiny: a finite gradient at u = 0, where the penalty starts (the model is w0)
    return torch.stack([u.abs().sum(), (u_sq + 1e-300).sqrt(), distance])


def multi_metrics_penalty(
    global_flat: torch.Tensor, benign: torch.Tensor, weight: float
) -> Callable[[torch.nn.Module], torch.Tensor]:
    """``penalty(model)``: ``weight * ||u_b||^2 * sum_m ((m - m_b) / m_b)^2`` over the three
    :func:`metric_features` ``m`` of the model's update (the cosine distance as its square
    root) and ``m_b`` those of the benign update ``benign``.

    Each feature grows linearly with the update (hence the square root of the cosine
    distance), so a relative deviation means the same for all three, and the factor
    ``||u_b||^2`` turns it back into parameter units: the penalty's gradient is about
    ``2 * weight`` times the relative deviation whatever the update's scale, beside a
    cross-entropy gradient of order 1 (a bare relative penalty has gradients of order
    ``1 / ||u_b||``). Its curvature is a few times ``weight``, so plain SGD stays stable
    while ``lr * weight`` is well below 1 (at ``lr = 0.05``, ``weight = 1`` shrinks the
    relative gap of all three features about 12-50x on a small linear model,
    ``tests/test_attacks_evasion.py``)."""
    target = _linear_features(benign, global_flat).detach()
    scale = target.clamp_min(torch.finfo(torch.float64).tiny)
    strength = weight * float(benign.double().square().sum())
    center = global_flat.detach()

    def penalty(model: torch.nn.Module) -> torch.Tensor:
        w = ModelLayout.of_module(model, buffers=False).flatten_module(model, grad=True)
        features = _linear_features(w - center.to(w.device), center.to(w.device))
        deviation = (features - target.to(w.device)) / scale.to(w.device)
        return (strength * deviation.square().sum()).to(w.dtype)

    return penalty


def _linear_features(update: torch.Tensor, global_flat: torch.Tensor) -> torch.Tensor:
    """:func:`metric_features` with the cosine distance as its square root (all three
    then grow linearly with the update); a finite gradient at ``u = 0``."""
    l1, l2, distance = metric_features(update, global_flat).unbind()
    return torch.stack([l1, l2, (distance + 1e-300).sqrt()])


def benign_metric_bounds(update: torch.Tensor, global_flat: torch.Tensor) -> torch.Tensor:
    """``(||u||_1, ||u||_2, ||P u||_2)`` in float64, ``P`` the projection orthogonal to
    ``w0``: the three features of an update the multi-metrics evasion holds to its benign
    update's.

    All three are norms (``c u`` has ``c`` times each). The third stands for the cosine
    distance: ``w0 + u`` makes the angle ``atan(||P u|| / (||w0|| + <u, w0> / ||w0||))``
    with ``w0``, so an update with the benign ``<u, w0>`` and no larger ``||P u||`` has the
    benign cosine distance or less."""
    u, unit = update.double(), _unit(global_flat)
    across = u - (u @ unit) * unit
    return torch.stack(
        [u.abs().sum(), torch.linalg.vector_norm(u), torch.linalg.vector_norm(across)]
    )


def constrain_to_benign(
    update: torch.Tensor, benign: torch.Tensor, global_flat: torch.Tensor
) -> torch.Tensor:
    """The Euclidean projection of ``update`` onto ``C = {u : <u, w0> = <u_b, w0>,
    ||P u|| <= ||P u_b||}`` (``u_b = benign``, ``P`` as in :func:`benign_metric_bounds`):
    its component along ``w0`` becomes the benign one's, its orthogonal part is shrunk
    onto the ball of the benign one's radius (the two parts are orthogonal, so the
    composition is the projection). In ``C`` the Euclidean norm and the cosine distance
    are at most the benign update's.

    Why this set: along ``w0`` an update of a trained model is mostly weight decay's
    shrink, which carries most of a benign update's norm and none of a backdoor; what
    the backdoor learns lies orthogonal to ``w0``, where the bound holds its angle to
    the benign one's. The Manhattan norm is left to :func:`benign_metrics_scale`."""
    unit = _unit(global_flat)
    radius = float(benign_metric_bounds(benign, global_flat)[2])
    return _project(update, unit, benign.double() @ unit, radius)


def _project(
    update: torch.Tensor, unit: torch.Tensor, along: torch.Tensor, radius: float
) -> torch.Tensor:
    """:func:`constrain_to_benign` given ``w0 / ||w0||``, the benign component along it
    and the benign radius across it."""
    u = update.double()
    across = u - (u @ unit) * unit
    norm = float(torch.linalg.vector_norm(across))
    if norm > radius:
        across = across * (radius / norm)
    return (across + along * unit).to(update.dtype)


def benign_metrics_scale(
    update: torch.Tensor, bounds: torch.Tensor, global_flat: torch.Tensor
) -> float:
    """``gamma`` for which ``gamma * update`` has every feature of
    :func:`benign_metric_bounds` at most ``bounds`` and the tightest one equal to its
    bound ("scale", after "constrain"); 0 for a zero update."""
    features = benign_metric_bounds(update, global_flat)
    if not bool((features > 0).any()):
        return 0.0
    ratios = torch.where(features > 0, bounds / features.clamp_min(1e-300), torch.inf)
    return float(ratios.min())


def benign_metrics_constraint(
    global_flat: torch.Tensor, benign: torch.Tensor
) -> Callable[[torch.nn.Module], None]:
    """``constraint(model)``: projects the model's update onto the set of
    :func:`constrain_to_benign`, in place; ``fedsec_core.training.train`` runs it after every
    optimizer step."""
    center = global_flat.detach()
    # what the projection needs of w0 and the benign update, once for all steps
    unit = _unit(center)
    along = benign.detach().double() @ unit
    radius = float(benign_metric_bounds(benign.detach(), center)[2])

    def constraint(model: torch.nn.Module) -> None:
        with torch.no_grad():
            w = flatten_params(model)
            w0 = center.to(w.device)
            moved = _project(w - w0, unit.to(w.device), along.to(w.device), radius)
            assign_flat_params(model, w0 + moved)

    return constraint


def _unit(global_flat: torch.Tensor) -> torch.Tensor:
    """``w0 / ||w0||`` in float64."""
    w0 = global_flat.double()
    return w0 / torch.linalg.vector_norm(w0).clamp_min(torch.finfo(torch.float64).tiny)


def largest_kept_scale(
    rule,
    view: torch.Tensor,
    view_weights: torch.Tensor,
    benign: torch.Tensor,
    candidate: torch.Tensor,
    weight: float,
    global_flat: torch.Tensor,
    client_ids: Sequence[int] | None = None,
) -> float:
    """The largest ``lam`` in [0, 1] (bisection, :data:`SCALE_STEPS` steps) such that
    ``rule`` keeps ``benign + lam (candidate - benign)`` in a round of the ``(k, d)``
    benign updates ``view`` (weights ``view_weights``) plus that update (weight
    ``weight``); 0 when not even the benign update is kept.

    Each trial runs a copy of ``rule``, which the search leaves as it was; the copy holds
    whatever state ``rule`` has: none for a rule built from the config (the attacker knows
    the rule, not its state across rounds), the server's for the server's own rule
    (``attack.rule_state = "server"``). A rule that needs the server's root update gets
    the view's mean. A rule that keeps per-client histories (FoolsGold, FLDetector) is
    given ``client_ids``, the ids of the view's rows and then the candidate's; by default
    the distinct placeholders ``0..k``, which serve a rule with no history. For a rule
    that keeps every client (``selects_clients`` False) "kept" means a norm no larger
    than the view's median norm. Assumes acceptance shrinks as ``lam`` grows, as it does
    for distance- and norm-based rules.
    """
    direction = candidate - benign
    if rule.selects_clients:
        models = torch.cat([view, benign[None]]) + global_flat
        weights = torch.cat([view_weights, torch.tensor([float(weight)], dtype=view_weights.dtype)])
        root = view.mean(dim=0) if view.shape[0] else None
        ids = list(range(models.shape[0])) if client_ids is None else list(client_ids)
        if len(ids) != models.shape[0]:
            raise ValueError(f"client_ids has {len(ids)} ids for {models.shape[0]} updates")

        def kept(lam: float) -> bool:
            models[-1] = global_flat + benign + lam * direction
            result = copy.deepcopy(rule).aggregate(models, weights, global_flat, ids, root)
            return bool(result.accepted[-1])

    else:
        bound = torch.linalg.vector_norm(view, dim=1).median()

        def kept(lam: float) -> bool:
            return bool(torch.linalg.vector_norm(benign + lam * direction) <= bound)

    if kept(1.0):
        return 1.0
    if not kept(0.0):
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(SCALE_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if kept(middle) else (low, middle)
    return low
