"""`log: auto` (the protocol default): log space where the hard limits span a decade, linear otherwise;
the optimisers and the benchmark see the protocol's choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from orchestrator.config_errors import ConfigError
from orchestrator.optimize.base import Space, Variable
from orchestrator.optimize.lhs import latin_hypercube
from orchestrator.optimize.transforms import UnitScaler
from orchestrator.protocol import VariableSpec, load_protocol, protocol_from_dict

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "protocols" / "ag_nanoprism.yaml"


@pytest.mark.parametrize(
    ("hard_limits", "log", "expected"),
    [
        ((50.0, 2000.0), "auto", True),  # a flow over 40x: log
        ((0.5, 80.0), "auto", True),  # a share over 160x: log
        ((10.0, 90.0), "auto", False),  # under a decade: linear
        ((10.0, 100.0), "auto", True),  # exactly a decade: log
        ((0.0, 80.0), "auto", False),  # touches 0: linear
        ((50.0, 2000.0), False, False),  # an explicit choice wins
        ((10.0, 90.0), True, True),
    ],
)
def test_log_auto_resolves_from_the_hard_limits(hard_limits: tuple[float, float], log: Any, expected: bool) -> None:
    lo, hi = hard_limits
    kind = "total" if lo > 0 and hi > 100 else "percent"
    spec = VariableSpec(kind=kind, stream=None if kind == "total" else "s", bounds=(max(lo, 1.0), hi / 2 + 1),
                        hard_limits=hard_limits, log=log)
    assert spec.log_scaled is expected


def test_log_defaults_to_auto() -> None:
    assert VariableSpec(kind="percent", stream="s", bounds=(4, 20), hard_limits=(0.5, 80)).log == "auto"


def _reference_data() -> dict[str, Any]:
    return yaml.safe_load(REFERENCE.read_text())


def test_log_true_with_a_limit_at_zero_is_a_config_error() -> None:
    data = _reference_data()
    data["variables"]["Q_PVA"]["hard_limits"] = [0, 80]
    data["variables"]["Q_PVA"]["log"] = True
    with pytest.raises(ConfigError) as info:
        protocol_from_dict(data, base_dir=REFERENCE.parent)
    text = str(info.value)
    assert "Q_PVA" in text and "log" in text and "above 0" in text
    data["variables"]["Q_PVA"]["log"] = "auto"  # the same limits with auto: linear, accepted
    proto = protocol_from_dict(data, base_dir=REFERENCE.parent)
    assert not {v.name: v.log for v in proto.space().variables}["Q_PVA"]


def test_reference_protocol_scales_flows_and_shares_in_log_space() -> None:
    space = load_protocol(REFERENCE).space()
    assert all(v.log for v in space.variables), [(v.name, v.log) for v in space.variables]
    assert UnitScaler.for_space(space).log.all()


def test_benchmark_uses_the_protocols_space_and_widening() -> None:
    from benchmarks.optimizer import paper_space, protocol_widening

    proto = load_protocol(REFERENCE)
    assert paper_space() == proto.space()
    assert protocol_widening() == proto.optimizer.widening.model_dump()


def test_design_of_a_log_variable_is_log_uniform() -> None:
    """Half of a Latin hypercube over [1, 1000] lies below the geometric middle (~32), not the linear one."""
    space = Space(variables=(Variable("Q_total", 1.0, 1000.0, 1.0, 1000.0, kind="total", log=True),))
    x = latin_hypercube(space, 200, np.random.default_rng(0))[:, 0]
    assert 0.4 < np.mean(x < 31.6) < 0.6
    linear = latin_hypercube(Space(variables=(Variable("Q_total", 1.0, 1000.0, 1.0, 1000.0, kind="total"),)), 200,
                             np.random.default_rng(0))[:, 0]
    assert np.mean(linear < 31.6) < 0.1
