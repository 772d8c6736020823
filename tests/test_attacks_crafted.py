"""Known answers for the update rules of the attacks that know the benign updates
(attacks/crafted.py): ALIE's z and vector, IPM, Min-Max and Min-Sum's gamma search."""

from __future__ import annotations

import math

import pytest
import torch

from attacks.crafted import DIRECTIONS, alie, alie_z, deviation, ipm, min_max, min_sum


@pytest.mark.parametrize(
    "n, m, z",
    [
        # s = floor(n/2 + 1) - m benign clients needed; z = Phi^-1((n - s) / n)
        (50, 10, 0.46769879911),  # s = 16, Phi^-1(0.68)
        (10, 2, 0.25334710313),  # s = 4, Phi^-1(0.6)
        (20, 5, 0.52440051271),  # s = 6, Phi^-1(0.7)
    ],
)
def test_alie_z_from_the_number_of_clients_and_attackers(n, m, z):
    assert alie_z(n, m) == pytest.approx(z, abs=1e-9)


def test_alie_is_mean_minus_z_std_per_coordinate():
    benign = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]], dtype=torch.float64)
    z = alie_z(10, 2)
    # coordinate 0: mean 2, std 2; coordinate 1: mean 2, std sqrt(3)
    expected = torch.tensor([2.0 - z * 2.0, 2.0 - z * math.sqrt(3.0)], dtype=torch.float64)
    torch.testing.assert_close(alie(benign, 10, 2), expected)
    with pytest.raises(ValueError, match="0 < attackers < clients"):
        alie_z(4, 4)
    with pytest.raises(ValueError, match="3 attackers of 4 clients are a majority"):
        alie_z(4, 3)  # s = floor(3) - 3 = 0: z_max would be Phi^-1(1) = inf


def test_ipm_is_minus_eps_times_the_benign_mean():
    benign = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    torch.testing.assert_close(ipm(benign, 0.5), torch.tensor([-1.0, -0.5]))


def test_the_three_directions():
    benign = torch.tensor([[3.0, -1.0], [3.0, -3.0]])  # mean (3, -2), std (0, sqrt(2))
    torch.testing.assert_close(deviation(benign, "unit"), torch.tensor([-3.0, 2.0]) / math.sqrt(13))
    torch.testing.assert_close(deviation(benign, "std"), torch.tensor([0.0, -math.sqrt(2.0)]))
    torch.testing.assert_close(deviation(benign, "sign"), torch.tensor([-1.0, 1.0]))
    assert DIRECTIONS == ("unit", "std", "sign")
    with pytest.raises(ValueError, match="unknown direction 'up'"):
        deviation(benign, "up")


# One coordinate, benign updates 0, 0, 3: mean 1, std sqrt(3); with p = -std the update
# is 1 - t (t = gamma sqrt 3).
# Min-Max: largest benign distance 3; max_i |1 - t - b_i| = 2 + t <= 3, so t = 1: 0.
# Min-Sum: largest benign sum of squares 18 (for 3: 9 + 9); 2 (1 - t)^2 + (2 + t)^2
# = 6 + 3 t^2 <= 18, so t = 2: -1.
BENIGN = torch.tensor([[0.0], [0.0], [3.0]], dtype=torch.float64)


def test_min_max_finds_the_largest_gamma_that_stays_within_the_benign_spread():
    torch.testing.assert_close(
        min_max(BENIGN, "std"), torch.tensor([0.0], dtype=torch.float64), atol=1e-4, rtol=0
    )
    update = min_max(BENIGN, "std")
    assert (BENIGN - update).abs().max() <= 3.0  # it fits


def test_min_sum_finds_the_largest_gamma_for_the_sum_of_squares():
    torch.testing.assert_close(
        min_sum(BENIGN, "std"), torch.tensor([-1.0], dtype=torch.float64), atol=1e-4, rtol=0
    )
    update = min_sum(BENIGN, "std")
    assert ((BENIGN - update) ** 2).sum() <= 18.0


def test_the_search_reaches_the_boundary_in_many_dimensions():
    gen = torch.Generator().manual_seed(0)
    benign = torch.randn(12, 500, generator=gen, dtype=torch.float64) * 0.1 + 0.5
    bound = torch.cdist(benign, benign).max()
    for direction in DIRECTIONS:
        update = min_max(benign, direction)
        far = torch.linalg.vector_norm(benign - update, dim=1).max()
        assert far <= bound and far > bound * (1 - 1e-3), direction  # on the boundary
