"""Fair Sampling losses and their baselines: hand examples and closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from florec.models import fair_losses as fl


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


def test_cpr_is_one_softplus_of_summed_differences_and_fs_pair_two():
    s11, s12, s22, s21 = (torch.tensor([v]) for v in (2.0, 0.5, 1.0, -1.0))
    assert fl.cpr_loss(s11, s12, s22, s21).item() == pytest.approx(sp((0.5 - 1.0) - (2.0 + 1.0)))
    assert fl.fs_pair_loss(s11, s12, s22, s21).item() == pytest.approx(
        sp(0.5 - 2.0) + sp(-1.0 - 1.0))
    # by convexity of softplus, CPR's single term is below FS-Pair's sum here
    assert fl.cpr_loss(s11, s12, s22, s21) < fl.fs_pair_loss(s11, s12, s22, s21)


def test_losses_are_sums_not_means():
    pos, neg = torch.zeros(4), torch.zeros(4)
    assert fl.pair_loss(pos, neg).item() == pytest.approx(4 * math.log(2))
    assert fl.wmf_loss(torch.zeros(3), torch.ones(3)).item() == pytest.approx(3 * 0.25)


def test_propensity_is_clipped_power_of_relative_popularity():
    theta = fl.propensity(torch.tensor([0.0, 1.0, 25.0, 100.0]), 0.5)
    torch.testing.assert_close(theta, torch.tensor([0.1, 0.1, 0.5, 1.0]))
    torch.testing.assert_close(fl.negative_propensity(theta), torch.tensor([0.9, 0.9, 0.5, 0.1]))
    assert torch.all(fl.propensity(torch.tensor([3.0, 7.0]), 0.0) == 1.0)


def test_ubpr_weights_a_sampled_positive_by_one_minus_inverse_propensity():
    pos, other = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    theta_i, theta_j = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.25])
    y = torch.tensor([0.0, 1.0])
    expected = 2.0 * sp(-1.0) + 2.0 * (1 - 4.0) * sp(-1.0)
    assert fl.ubpr_loss(pos, other, theta_i, theta_j, y).item() == pytest.approx(expected)


def test_relmf_and_du_match_their_formulas_on_hand_values():
    logits, y = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    theta, theta_neg = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.25])
    # y=1: (1/0.5)(0.5^2) + (1 - 2)(0.5^2) = 0.25; y=0: 0.25
    assert fl.relmf_loss(logits, y, theta).item() == pytest.approx(0.5)
    # y=1: 0.25 / 0.5 = 0.5; y=0: 0.25 / 0.25 = 1
    assert fl.du_loss(logits, y, theta, theta_neg).item() == pytest.approx(1.5)


def test_fs_point_weights_give_each_item_u_positive_and_u_negative_mass():
    n_users = 10
    pop = torch.tensor([0.0, 1.0, 4.0, 10.0])
    for i, p in enumerate(pop.tolist()):
        y = torch.zeros(n_users)
        y[: int(p)] = 1
        w = fl.fs_point_weights(y, torch.full((n_users,), pop[i]), n_users)
        pos_mass, neg_mass = (w * y).sum().item(), (w * (1 - y)).sum().item()
        assert pos_mass == pytest.approx(n_users if 0 < p else 0.0)
        assert neg_mass == pytest.approx(n_users if p < n_users else 0.0)


def test_weighted_point_loss_with_unit_weights_is_wmf():
    logits, y = torch.randn(20, generator=torch.Generator().manual_seed(0)), torch.rand(20) > 0.5
    y = y.float()
    torch.testing.assert_close(fl.weighted_point_loss(logits, y, torch.ones(20)),
                               fl.wmf_loss(logits, y))
    assert fl.pair_loss(logits, -logits, torch.ones(20)).item() == pytest.approx(
        F.softplus(-2 * logits).sum().item(), rel=1e-6)
