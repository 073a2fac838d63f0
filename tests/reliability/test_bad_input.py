"""Generated bad input: protocol files, rig files and console payloads, each rejected with an error
that names the field, or accepted and valid; never a traceback, never a hardware command.

A few dozen examples each keep CI fast; ``python -m benchmarks.fuzz`` runs a thousand or more and
prints the table in docs/reliability.md. Examples that once failed are pinned below as regressions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.errors import DeviceError
from orchestrator.config_errors import ConfigError, Problem
from orchestrator.protocol import ExperimentProtocol, load_protocol
from orchestrator.rig import load_rig

from . import badinput as b

FAST = settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return b.protocol_workdir(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def probe() -> Iterator[b.Probe]:
    probe = b.Probe()
    yield probe
    probe.close()


@pytest.fixture(scope="module")
def protocol() -> ExperimentProtocol:
    return load_protocol(b.PROTOCOL_FILE)


def test_protocol_files(workdir: Path, probe: b.Probe) -> None:
    @FAST
    @given(b.protocol_files())
    def check(gen: b.Generated) -> None:
        verdict = b.judge_protocol(gen, workdir, probe)
        assert verdict.outcome.good, verdict

    check()


def test_rig_files(workdir: Path, protocol: ExperimentProtocol) -> None:
    @FAST
    @given(b.rig_files())
    def check(gen: b.Generated) -> None:
        verdict = b.judge_rig(gen, protocol, workdir)
        assert verdict.outcome.good, verdict

    check()


def _rig_text(**pump0: object) -> b.Generated:
    doc = b.base_rigs()[0]
    doc["pumps"][0].update(pump0)
    return b.Generated(yaml.safe_dump(doc), [f"pumps[0].{k}" for k in pump0])


@pytest.mark.parametrize("diameter", [1e200, 1e-320, 5e-324])
def test_absurd_syringe_diameters_are_config_errors(
    workdir: Path, protocol: ExperimentProtocol, diameter: float
) -> None:
    """Found by the fuzzer: the stroke check divided by the barrel's area before the diameter's own
    range check had refused it (OverflowError, ZeroDivisionError instead of a ConfigError)."""
    verdict = b.judge_rig(_rig_text(syringe_diameter_mm=diameter), protocol, workdir)
    assert verdict.outcome is b.Outcome.REJECTED_CLEAR, verdict
    with pytest.raises(ConfigError, match=r"pumps\[0\]\.syringe_diameter_mm"):
        load_rig(workdir / "rig.yaml")


@pytest.mark.parametrize("step_nm", [5e-324, 1e-9, 1e-4])
def test_grids_too_fine_to_hold_are_config_errors(workdir: Path, probe: b.Probe, step_nm: float) -> None:
    """Found by the fuzzer: a step of 5e-324 nm overflowed round() (OverflowError); 1e-9 nm asked for
    4e11 points (memory exhausted before any error). Both must name grid.step_nm."""
    doc = b.base_protocol()
    doc["grid"]["step_nm"] = step_nm
    verdict = b.judge_protocol(b.Generated(yaml.safe_dump(doc), ["grid.step_nm"]), workdir, probe)
    assert verdict.outcome is b.Outcome.REJECTED_CLEAR, verdict
    assert "grid.step_nm" in verdict.detail


def test_the_judge_can_fail(workdir: Path, probe: b.Probe, protocol: ExperimentProtocol) -> None:
    """The harness itself: an error that names another field, and a validated protocol that lies."""
    unclear = b.names_the_field(ConfigError("x", [Problem("stop", "something")]), ["grid.step_nm"])
    assert not unclear
    assert b.names_the_field(ConfigError("x", [Problem("grid.step_nm", "bad")]), ["grid.step_nm"])
    broken = protocol.model_copy(update={"percent_sum_max": 1.0})
    assert b.protocol_problems(broken)


inputs = st.dictionaries(
    st.sampled_from(["Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed", "Q_total", "Q_other"]),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=-10, max_value=2500),
        st.sampled_from([0.5, 80, 50, 2000, 90, "12", None]),
    ),
    min_size=4,
)


def test_rates_beyond_hard_limits_never_reach_a_pump(probe: b.Probe) -> None:
    """Any inputs an optimiser (or a corrupt journal) could hand over: refused before a byte goes out,
    or turned into rates inside the protocol's hard limits, which the emulated pumps then run at."""

    @FAST
    @given(inputs)
    def check(given_inputs: dict[str, object]) -> None:
        assert b.send_rates(probe.protocol, probe.rig, probe.tap, given_inputs) is None

    check()
    probe.rig.safe_state()
    assert probe.tap.running() == []


@pytest.mark.parametrize("rate", [math.nan, math.inf, -1.0, 0.0, 1e-6, 1e9])
def test_drivers_refuse_impossible_rates_before_sending(probe: b.Probe, rate: float) -> None:
    for stream, pump in probe.rig.pump_for_stream.items():
        before = probe.tap.bytes, probe.tap.rate(stream)
        with pytest.raises(DeviceError):
            pump.set_rate_ul_min(rate)
        assert (probe.tap.bytes, probe.tap.rate(stream)) == before, stream


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[b.ApiHarness]:
    harness = b.ApiHarness(tmp_path_factory.mktemp("api"))
    yield harness
    harness.close()


def test_api_payloads(api: b.ApiHarness) -> None:
    @settings(FAST, max_examples=60)
    @given(b.api_calls())
    def check(call: b.ApiCall) -> None:
        verdict = api.judge(call)
        assert verdict.outcome.good, verdict

    check()


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/campaigns/1/pause", b'{"reason": NaN}'),
        ("/api/users", b'{"name": "nan", "role": -Infinity, "password": "a long password"}'),
        ("/api/users/olga/tokens", b'{"days": Infinity}'),
        ("/api/schedules", b'{"kind": "recalibrate", "campaign_id": "1", "every_minutes": Infinity}'),
        ("/api/schedules", b'{"kind": "recalibrate", "campaign_id": "1", "every_minutes": 1.4e37}'),
        (
            "/api/schedules",
            b'{"kind": "health", "campaign_id": "1", "every_minutes": 5, "stale_after_s": Infinity}',
        ),
    ],
)
def test_non_finite_numbers_are_refused_by_field(api: b.ApiHarness, path: str, body: bytes) -> None:
    """Found by the fuzzer: Python's JSON reader takes NaN and Infinity; a 422 that echoed them failed
    to render (500), and an infinite or absurd (1e37 min) schedule interval overflowed the scheduler (500)."""
    before = api.state()
    r = api.client.post(path, content=body, headers={**api.headers, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    fields = [e["loc"][-1] for e in r.json()["detail"]]
    assert set(fields) & {"reason", "role", "days", "every_minutes", "stale_after_s"}, fields
    assert api.state() == before
