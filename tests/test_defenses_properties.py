"""Property-based: no input makes a defense produce NaN or raise."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import defenses
from defenses.rules import DeepSightRule, MultiMetricsRule
from defenses.testing import BiasProbe

SPECIAL = [0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38, -3e38, 1e-30]
values = st.one_of(st.sampled_from(SPECIAL), st.floats(-10, 10, width=32))


@st.composite
def rounds(draw):
    """A round: ``n`` in 1..8 rows drawn from a small pool (so duplicates are common)."""
    n = draw(st.integers(1, 8))
    d = draw(st.integers(1, 6))
    pool = draw(st.lists(st.lists(values, min_size=d, max_size=d), min_size=1, max_size=n))
    rows = draw(st.lists(st.integers(0, len(pool) - 1), min_size=n, max_size=n))
    models = torch.tensor([pool[i] for i in rows], dtype=torch.float32)
    weights = torch.tensor(
        draw(st.lists(st.sampled_from([0.0, 1.0, 7.0, 1e6]), min_size=n, max_size=n))
    )
    finite = st.floats(-10, 10, width=32)
    start = torch.tensor(draw(st.lists(finite, min_size=d, max_size=d)))
    root = torch.tensor(draw(st.lists(finite, min_size=d, max_size=d)))
    return models, weights, start, root


RULES = [cls.rule_class() for cls in defenses.DEFENSES.values()]
RULES.append(MultiMetricsRule(variant="reference"))
for _rule in RULES:
    if isinstance(_rule, DeepSightRule):
        _rule.num_samples = 4
        _rule.probe = BiasProbe()


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.name}-{getattr(r, 'variant', '')}")
@settings(max_examples=50, deadline=None)
@given(data=rounds())
def test_every_defense_gives_a_finite_model_or_keeps_the_previous_one(rule, data):
    models, weights, start, root = data
    fresh = dataclasses.replace(rule)  # no state carried between examples
    if isinstance(rule, DeepSightRule):
        fresh.probe = rule.probe  # not a parameter: replace() leaves it out
    result = fresh.aggregate(models, weights, start, list(range(len(models))), root)
    usable = torch.isfinite(models).all(dim=1)
    assert result.accepted.shape == (len(models),)
    assert not (result.accepted & ~usable).any()
    if result.model is None:
        assert result.note and not result.accepted.any()
    else:
        assert result.model.shape == start.shape
        assert torch.isfinite(result.model).all()
        assert result.accepted.any()


#: Rules whose model is no ``w_0 + sum_i c_i (w_i - w_0)``: coordinate-wise ones, the
#: iterated clipping around a moving center, CRFL's clipped model.
NO_COMBINATION = {"median", "trimmed-mean", "bulyan", "centered-clipping", "rlr", "crfl"}


def _noise_free(rule):
    """``rule`` without its noise (FLAME, weak DP), so its model is the combination alone."""
    fresh = dataclasses.replace(rule)
    if isinstance(rule, DeepSightRule):
        fresh.probe = rule.probe
    for noise in ("noise_lambda", "noise_std"):
        if hasattr(fresh, noise):
            setattr(fresh, noise, 0.0)
    return fresh


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.name}-{getattr(r, 'variant', '')}")
@pytest.mark.parametrize("seed", range(3))
def test_a_rules_coefficients_rebuild_its_model(rule, seed):
    """What a rule reports as each client's coefficient is what made its model:
    ``w_0 + sum_i c_i (w_i - w_0)``, recomputed here in float64 from the rows, and no
    weight on a client it left out. Three clients sit apart so selecting rules drop some."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(30, generator=g, dtype=torch.float64)
    models = start + 0.1 * torch.randn(12, 30, generator=g, dtype=torch.float64)
    models[:3] += 3.0 * torch.randn(3, 30, generator=g, dtype=torch.float64)
    weights = torch.randint(5, 50, (12,), generator=g).double()
    root = 0.1 * torch.randn(30, generator=g, dtype=torch.float64)
    result = _noise_free(rule).aggregate(models, weights, start, list(range(12)), start + root)
    if rule.name in NO_COMBINATION:
        assert result.coefficients is None
        return
    assert result.model is not None and result.coefficients.shape == (12,)
    rebuilt = start + result.coefficients @ (models - start)
    torch.testing.assert_close(result.model, rebuilt, rtol=1e-10, atol=1e-10)
    assert (result.coefficients[~result.accepted] == 0).all()
