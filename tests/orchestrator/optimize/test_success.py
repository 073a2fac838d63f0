"""The success model: where conditions give a measurement at all."""

from __future__ import annotations

import numpy as np
import torch

from orchestrator.optimize.success import SuccessModel


def test_the_success_model_learns_where_conditions_fail() -> None:
    rng = np.random.default_rng(0)
    u = torch.as_tensor(rng.random((60, 3)), dtype=torch.float64)
    u[3] = torch.tensor([0.3, 0.4, 0.6], dtype=torch.float64)
    fails = u[:, 0] > 0.7  # a precipitate above 70 % of the first input, whatever the others
    fails[3] = True  # and a bubble in the good region: one lone failure
    model = SuccessModel(u[~fails], u[fails])
    p = torch.exp(model.log_p(torch.tensor([[0.85, 0.5, 0.5], [0.3, 0.6, 0.4], [0.3, 0.4, 0.6]],
                                           dtype=torch.float64))).numpy()
    assert p[0] < 1 / 3 and p[1] > 0.8 and p[2] > 0.5, p  # the cluster avoided, the bubble forgiven
    assert model.ls[0] < model.ls[1:].min()  # the failures depend on the first input only


def test_ground_past_a_band_of_failures_is_as_unlikely_as_the_band() -> None:
    """A precipitate beyond a diagonal boundary (too much of one input for the other), measured only
    in the lower-left of the box: ground nobody measured past the boundary must not get the campaign's
    average chance (it used to: kernel weights vanish there), and ground on the safe side must keep it."""
    rng = np.random.default_rng(1)
    u = torch.as_tensor(rng.random((45, 2)) * 0.6, dtype=torch.float64)
    fails = u[:, 0] - u[:, 1] > 0.15
    model = SuccessModel(u[~fails], u[fails])
    far = torch.tensor([[0.95, 0.2], [0.2, 0.95]], dtype=torch.float64)  # past the boundary; safe side
    p = torch.exp(model.log_p(far)).numpy()
    assert p[0] < 1 / 3 < 0.5 < p[1], p
    assert float(model.coef[0]) < 0 < float(model.coef[1])  # the trend found which way failures lie


def test_scattered_failures_leave_a_flat_trend() -> None:
    """Bubbles: a few failures anywhere say nothing about unmeasured ground."""
    rng = np.random.default_rng(2)
    u = torch.as_tensor(rng.random((60, 3)), dtype=torch.float64)
    fails = torch.zeros(60, dtype=torch.bool)
    fails[[4, 17, 33, 51]] = True
    model = SuccessModel(u[~fails], u[fails])
    corners = torch.as_tensor(np.array(np.meshgrid(*[[0.0, 1.0]] * 3)).reshape(3, -1).T, dtype=torch.float64)
    assert torch.all(model.prior(corners) > 0.75), model.prior(corners)
