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
