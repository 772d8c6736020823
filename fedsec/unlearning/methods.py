"""Unlearning clients from a federation's global model (DMM, OM and baselines).

A request's matching set is the server's reference set (a seeded sample of the retained
clients' clean training examples, by default 3x the forget clients' example count, the
paper's retain sample), plus the forget clients' own data, as they trained on it, only
when they cooperate (a detected attacker does not: without its triggered inputs, DMM
corrects the model on clean inputs only). Methods (Georgiev et al. 2024,
"Attribute-to-Delete: Machine Unlearning via Datamodel Matching"), each a function of an
:class:`UnlearnRequest` registered in ``fedsec.unlearning.METHODS``:

- ``dmm``: match f(x; theta) - sum_{i in F} B[i, x, :] on the matching set;
- ``om``: match the mean logits of ``om_oracles`` models retrained without F (the upper
  bound: it pays for the retraining it avoids);
- ``retrain``: the oracle, the federation retrained from scratch without F (same seed);
- ``finetune``: cross-entropy on the reference set; ``gradient-ascent``: ascend the
  cross-entropy of the forget data (needs cooperating clients); ``none``: do nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsec.unlearning import METHODS
from fedsec.unlearning.datamodel import Datamodel, predicted_oracle
from fedsec.unlearning.federation import Federation
from fedsec.unlearning.matching import (
    MatchingConfig,
    MatchingReport,
    finetune_retain,
    gradient_ascent,
    match_logits,
)
from fedsec.unlearning.subsets import federation_variant, train_federation
from fedsec_core.errors import ConfigError
from fedsec_core.params import param
from fedsec_core.schema import Interval
from fedsec_core.seeding import derive_seed, rng
from fedsec_core.training import predict_logits


@dataclass
class UnlearnSettings:
    """How a request is unlearned; judged by ``settings.check_request``, with the rest."""

    cooperative: bool = True  # the forget clients hand over their data for matching
    # 0 = 3x the forget clients' example count
    reference_size: int = param(0, Interval(int, 0, None, closed="left"))
    matching: MatchingConfig = field(default_factory=MatchingConfig)


def matching_rows(
    fed: Federation, forget, settings: UnlearnSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(reference rows, forget rows used for matching); the latter empty without cooperation.

    The reference set stands in for the server's own data: clean training examples of
    retained clients, never a retained attacker's poisoned ones.
    """
    forget_rows = fed.client_rows(forget)
    retained = fed.retained_rows(forget)
    retained = retained[retained < fed.n_split]
    size = min(settings.reference_size or 3 * len(forget_rows), len(retained))
    reference = np.sort(
        rng(fed.config.federation_seed, "unlearning-reference").choice(
            retained, size=size, replace=False
        )
    )
    return reference, (forget_rows if settings.cooperative else forget_rows[:0])


@dataclass(frozen=True)
class Unlearned:
    """What an unlearning method returns: the new model's state dict and, for the
    fine-tuning methods, how far the fine-tuning got."""

    state: dict[str, torch.Tensor]
    matching: MatchingReport | None = None


def unlearn_state(
    fed: Federation,
    state: dict,
    method: str,
    forget,
    *,
    seed: int,
    settings: UnlearnSettings | None = None,
    datamodel: Datamodel | None = None,
    om_target: torch.Tensor | None = None,
) -> Unlearned:
    """Unlearn ``forget`` from the model ``state`` (trained with seed ``seed``) by ``method``
    (a name in ``fedsec.unlearning.METHODS``)."""
    request = UnlearnRequest(
        fed, state, tuple(forget), seed, settings or UnlearnSettings(), datamodel, om_target
    )
    return METHODS.resolve(method)(request)


@dataclass(frozen=True)
class UnlearnRequest:
    """What every unlearning method gets: the federation, the trained model's state and
    its training seed, the clients to forget, the settings and, for the methods that
    need them, the datamodel (dmm) and the oracles' mean logits (om)."""

    fed: Federation
    state: dict
    forget: tuple[int, ...]
    seed: int
    settings: UnlearnSettings
    datamodel: Datamodel | None = None
    om_target: torch.Tensor | None = None


@dataclass(frozen=True)
class _MatchingSet:
    """The model to change and the rows it is matched on: the reference (retained) rows
    first, then the forget clients' rows (empty unless they cooperate)."""

    model: torch.nn.Module
    rows: torch.Tensor
    x: torch.Tensor
    n_reference: int
    seed: int


def _matching_set(request: UnlearnRequest) -> _MatchingSet:
    fed = request.fed
    reference, forget_rows = matching_rows(fed, request.forget, request.settings)
    rows = torch.from_numpy(np.concatenate([reference, forget_rows]))
    return _MatchingSet(
        fed.model_from(request.state),
        rows,
        fed.inputs[rows],
        len(reference),
        derive_seed(request.seed, "unlearn-match"),
    )


def _state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def keep_model(request: UnlearnRequest) -> Unlearned:
    """``none``: the trained model as it is (the baseline every method must beat)."""
    return Unlearned(copy.deepcopy(request.state))


def retrain(request: UnlearnRequest) -> Unlearned:
    """``retrain``: the federation trained again without the forget clients (the oracle)."""
    config = federation_variant(request.fed.config, request.seed, request.forget)
    return Unlearned(train_federation(config))


def finetune(request: UnlearnRequest) -> Unlearned:
    """``finetune``: fine-tune on the retained clients' reference rows."""
    m = _matching_set(request)
    labels = request.fed.labels[m.rows[: m.n_reference]]
    report = finetune_retain(
        m.model, m.x[: m.n_reference], labels, seed=m.seed, settings=request.settings.matching
    )
    return Unlearned(_state_of(m.model), report)


def gradient_ascent_method(request: UnlearnRequest) -> Unlearned:
    """``gradient-ascent``: ascend the loss on the forget clients' data (they must cooperate)."""
    m = _matching_set(request)
    if m.n_reference == len(m.rows):
        raise ConfigError("gradient-ascent needs the forget clients' data; they do not cooperate")
    labels = request.fed.labels[m.rows[m.n_reference :]]
    report = gradient_ascent(
        m.model, m.x[m.n_reference :], labels, seed=m.seed, settings=request.settings.matching
    )
    return Unlearned(_state_of(m.model), report)


def datamodel_matching(request: UnlearnRequest) -> Unlearned:
    """``dmm``: match the logits the datamodel predicts for the model trained without the
    forget clients (Georgiev et al. 2024)."""
    if request.datamodel is None:
        raise ValueError("dmm needs a datamodel")
    m = _matching_set(request)
    target = predicted_oracle(
        predict_logits(m.model, m.x), request.datamodel, request.forget, m.rows
    )
    report = match_logits(m.model, m.x, target, seed=m.seed, settings=request.settings.matching)
    return Unlearned(_state_of(m.model), report)


def oracle_matching(request: UnlearnRequest) -> Unlearned:
    """``om``: match the mean logits of models retrained without the forget clients."""
    if request.om_target is None:
        raise ValueError("om needs the oracles' mean logits")
    m = _matching_set(request)
    report = match_logits(
        m.model, m.x, request.om_target[m.rows], seed=m.seed, settings=request.settings.matching
    )
    return Unlearned(_state_of(m.model), report)
