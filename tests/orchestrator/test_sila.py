"""SiLA 2 both ways on 127.0.0.1: our client driver (drivers.sila) against ``sdl sila serve``'s servers
wrapping a simulated rig, and the served features as any other SiLA 2 client sees them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("sila2", reason="the [sila] extra is part of [test]: pip install -e '.[test]'")

from sila2.client import SilaClient  # noqa: E402

from drivers.base import PumpState  # noqa: E402
from drivers.errors import DeviceAlarm, NotConnected, OutOfRange, ProtocolError  # noqa: E402
from drivers.sila import SilaPump, parse_sila_url  # noqa: E402
from orchestrator.cli.sila import serve_rig  # noqa: E402
from orchestrator.rig import Rig, build_rig, load_rig  # noqa: E402
from orchestrator.sila.server import (  # noqa: E402
    ServedInstrument,
    build_servers,
    services_for_rig,
    start_servers,
    stop_servers,
)

RIG = {
    "name": "silabench",
    "pumps": [
        {
            "name": "AgNO3",
            "driver": "newera",
            "port": "sim://newera/sila-line",
            "address": 0,
            "syringe_diameter_mm": 14.57,
            "syringe_volume_ul": 10000,
        },
        {
            "name": "water",
            "driver": "harvard",
            "port": "sim://harvard/sila-line-h",
            "address": 0,
            "syringe_diameter_mm": 23.03,
        },
    ],
    "spectrometer": {"driver": "simulated", "integration_time_us": 10000},
    "dead_volume_ul": 70,
    "simulation": {},
}


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, list[ServedInstrument]]]:
    path = tmp_path_factory.mktemp("rig") / "rig.yaml"
    path.write_text(yaml.safe_dump(RIG))
    cfg = load_rig(path)
    rig = build_rig(cfg)
    rig.connect()
    pumps, spectrometer = services_for_rig(cfg, rig)
    servers = build_servers(cfg.name, pumps, spectrometer, first_port=free_ports(3))
    start_servers(servers, insecure=True)
    yield rig, servers
    stop_servers(servers)
    rig.close()


def url(servers: list[ServedInstrument], label: str) -> str:
    port = next(s.port for s in servers if s.label == label)
    return f"sila://127.0.0.1:{port}?insecure=1"


@pytest.fixture
def pump(served: tuple[Rig, list[ServedInstrument]]) -> Iterator[SilaPump]:
    rig, servers = served
    rig.pumps["AgNO3"].stop()
    p = SilaPump("remote-AgNO3", url(servers, "pump AgNO3"), syringe_diameter_mm=14.57)
    p.connect()
    yield p
    p.safe_state()
    p.close()


@pytest.fixture
def raw(served: tuple[Rig, list[ServedInstrument]]) -> Iterator[SilaClient]:
    """A plain SiLA 2 client, as another lab scheduler would use."""
    _, servers = served
    client = SilaClient("127.0.0.1", next(s.port for s in servers if s.label == "pump AgNO3"), insecure=True)
    yield client
    client.PumpUnitController.SetFlowUnit(("ul", "min"))
    client.PumpUnitController.SetVolumeUnit("ul")
    client.PumpDriveControlService.EnablePumpDrive()
    client.close()


def finished(instance: Any) -> Any:
    """The responses of an observable command instance once it ended (raises its error)."""
    deadline = time.monotonic() + 10
    while not instance.done and time.monotonic() < deadline:
        time.sleep(0.005)  # polls the server's answer, never waits out a fixed time
    return instance.get_responses()


def test_one_server_per_instrument_on_consecutive_ports(served: tuple[Rig, list[ServedInstrument]]) -> None:
    _, servers = served
    assert [s.label for s in servers] == ["pump AgNO3", "pump water", "spectrometer"]
    assert [s.port - servers[0].port for s in servers] == [0, 1, 2]


def test_client_runs_the_served_pump_and_counts_what_it_dispensed(
    served: tuple[Rig, list[ServedInstrument]], pump: SilaPump
) -> None:
    rig, _ = served
    assert pump.status().state is PumpState.STOPPED
    before = pump.dispensed_ul()
    pump.set_rate_ul_min(120.0)
    pump.run()
    local = rig.pumps["AgNO3"].status()
    assert local.state is PumpState.INFUSING and local.rate_ul_min == pytest.approx(120.0)
    status = pump.status()
    assert status.state is PumpState.INFUSING and status.rate_ul_min == pytest.approx(120.0)
    rig.clock.sleep(30.0)  # virtual: half a minute at 120 uL/min
    assert pump.dispensed_ul() - before == pytest.approx(60.0)
    pump.set_rate_ul_min(40.0)  # while running: takes effect at once
    assert rig.pumps["AgNO3"].status().rate_ul_min == pytest.approx(40.0)
    pump.stop()
    assert rig.pumps["AgNO3"].status().state is PumpState.STOPPED
    assert pump.status().state is PumpState.STOPPED
    pump.safe_state()
    pump.safe_state()  # idempotent
    assert pump.status().state is PumpState.STOPPED


def test_rate_above_the_pumps_maximum_is_refused_before_it_is_sent(
    served: tuple[Rig, list[ServedInstrument]], pump: SilaPump
) -> None:
    rig, _ = served
    with pytest.raises(OutOfRange, match="above this pump's maximum"):
        pump.set_rate_ul_min(1e7)
    with pytest.raises(OutOfRange, match="positive"):
        pump.set_rate_ul_min(-1.0)
    assert rig.pumps["AgNO3"].status().state is PumpState.STOPPED


def test_server_refuses_what_the_pump_cannot_do(raw: SilaClient) -> None:
    from sila2.framework import ValidationError

    with pytest.raises(ValidationError, match="only infuses"):
        finished(raw.PumpFluidDosingService.GenerateFlow(-5.0))
    with pytest.raises(ValidationError, match="above this pump's maximum"):
        finished(raw.PumpFluidDosingService.GenerateFlow(1e9))


def test_disabled_drive_is_an_alarm_for_the_client(pump: SilaPump, raw: SilaClient) -> None:
    raw.PumpDriveControlService.DisablePumpDrive()
    assert raw.PumpDriveControlService.PumpDriveState.get() == "Disabled"
    pump.set_rate_ul_min(10.0)
    with pytest.raises(DeviceAlarm, match="disabled"):
        pump.run()
    pump.close()  # the runner's retry reconnects: that must not undo someone's stop
    pump.connect()
    with pytest.raises(DeviceAlarm, match="disabled"):
        pump.run()
    assert raw.PumpDriveControlService.PumpDriveState.get() == "Disabled"
    # a fresh process (`sdl hw ... --status`) reads the state and leaves the drive as it is ...
    again = SilaPump("again", f"sila://127.0.0.1:{raw.port}?insecure=1")
    again.connect()
    assert again.status().state is PumpState.STOPPED
    assert raw.PumpDriveControlService.PumpDriveState.get() == "Disabled"
    # ... and its first run enables it, as CETONI's software does before dosing
    again.set_rate_ul_min(10.0)
    again.run()
    assert raw.PumpDriveControlService.PumpDriveState.get() == "Enabled"
    again.stop()
    again.close()


def test_enable_pump_drive_clears_a_fault_as_the_feature_says(
    served: tuple[Rig, list[ServedInstrument]], pump: SilaPump, raw: SilaClient
) -> None:
    """After a stall, EnablePumpDrive left FaultState True and GenerateFlow refused ("check it, then
    EnablePumpDrive"): only restarting the server cleared it."""
    from simulators.faults import Fault
    from simulators.serialsim import get_bus

    rig, _ = served
    pump.set_rate_ul_min(10.0)
    pump.run()
    get_bus("newera", "sila-line").inject(0, Fault("stall"))  # type: ignore[attr-defined]
    rig.clock.sleep(1.0)
    assert raw.PumpDriveControlService.FaultState.get() is True
    raw.PumpDriveControlService.EnablePumpDrive()
    assert raw.PumpDriveControlService.FaultState.get() is False
    pump.run()  # flows again
    assert pump.status().running


def test_sila_serve_refuses_a_second_master_and_unsafe_options(tmp_path: Path) -> None:
    """A second `sdl sila serve` on the same ports started without a word (gRPC shares ports) and took
    the clients over; --insecure on a public address, with --cert, a missing key file or port 70000
    were taken or ended in tracebacks."""
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump({**RIG, "name": "optbench", "spectrometer": None,
                                    "pumps": [{**RIG["pumps"][0], "port": "sim://newera/opt-line"}]}))
    base = free_ports(1)
    with socket.socket() as held:  # another program (or server) on the port
        held.bind(("127.0.0.1", base))
        with pytest.raises(SystemExit, match=f"port {base} on 127.0.0.1 is in use"):
            serve_rig(path, port=base, insecure=True, stop=threading.Event())
    cert = tmp_path / "site.crt"
    cert.write_text("x")
    for kwargs, said in [
        ({"insecure": True, "host": "0.0.0.0"}, "only on loopback"),
        ({"insecure": True, "cert": cert, "key": cert}, "not both"),
        ({"cert": cert, "key": tmp_path / "missing.key"}, "no file"),
        ({"insecure": True, "port": 70000}, "not all in 1-65535"),
    ]:
        with pytest.raises(SystemExit, match=said):
            serve_rig(path, **{"port": base, **kwargs}, stop=threading.Event())


def test_units_chosen_by_another_client_convert(
    served: tuple[Rig, list[ServedInstrument]], raw: SilaClient
) -> None:
    rig, _ = served
    raw.PumpUnitController.SetFlowUnit(("ml", "h"))
    raw.PumpUnitController.SetVolumeUnit("ml")
    finished(raw.PumpFluidDosingService.GenerateFlow(6.0))  # 6 mL/h = 100 uL/min
    assert rig.pumps["AgNO3"].status().rate_ul_min == pytest.approx(100.0)
    assert raw.PumpFluidDosingService.FlowRate.get() == pytest.approx(6.0)
    assert raw.PumpFluidDosingService.MaxSyringeFillLevel.get() == pytest.approx(10.0)
    raw.PumpFluidDosingService.StopDosage()
    assert raw.PumpFluidDosingService.FlowRate.get() == 0.0


def test_subscription_sends_the_current_value_then_changes(raw: SilaClient) -> None:
    seen: list[float] = []
    changed = threading.Event()

    def on_value(value: float) -> None:
        seen.append(value)
        if value > 0:
            changed.set()

    sub = raw.PumpFluidDosingService.FlowRate.subscribe(callbacks=[on_value])
    try:
        finished(raw.PumpFluidDosingService.GenerateFlow(25.0))
        assert changed.wait(10), f"no update after GenerateFlow; saw {seen}"
    finally:
        sub.cancel()
        raw.PumpFluidDosingService.StopDosage()
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(25.0)


def test_syringe_diameter_from_the_rig_file_is_set_on_the_server(
    served: tuple[Rig, list[ServedInstrument]],
) -> None:
    rig, servers = served
    p = SilaPump("remote-water", url(servers, "pump water"), syringe_diameter_mm=20.0)
    p.connect()
    try:
        assert rig.pumps["water"].syringe_diameter_mm == pytest.approx(20.0)
        assert p.syringe_diameter_mm == pytest.approx(20.0)
        p.set_syringe_diameter_mm(23.03)
        assert rig.pumps["water"].syringe_diameter_mm == pytest.approx(23.03)
    finally:
        p.close()


def test_spectrometer_features(served: tuple[Rig, list[ServedInstrument]]) -> None:
    rig, servers = served
    port = next(s.port for s in servers if s.label == "spectrometer")
    client = SilaClient("127.0.0.1", port, insecure=True)
    try:
        spec = client.SpectrometerService
        wavelengths = spec.Wavelengths.get()
        counts = spec.AcquireSpectrum().Counts
        assert len(counts) == len(wavelengths) > 100
        assert list(wavelengths) == pytest.approx(list(rig.spectrometer.wavelengths_nm()))
        spec.SetIntegrationTime(20000)
        assert spec.IntegrationTime.get() == 20000 == rig.spectrometer.integration_time_us
        spec.SetIntegrationTime(10000)
        client.SafeStateController.EnterSafeState()
        assert "integration time" in client.SafeStateController.Status.get()
    finally:
        client.close()


def test_connection_problems_name_what_to_check(served: tuple[Rig, list[ServedInstrument]]) -> None:
    _, servers = served
    nobody = free_ports(1)
    with pytest.raises(NotConnected, match="no SiLA 2 server answered"):
        SilaPump("p", f"sila://127.0.0.1:{nobody}?insecure=1").connect()
    with pytest.raises(ProtocolError, match="not a syringe pump"):
        SilaPump("p", url(servers, "spectrometer")).connect()
    with pytest.raises(NotConnected, match="sila://HOST:PORT"):
        SilaPump("p", "/dev/ttyUSB0")
    with pytest.raises(OutOfRange, match="server of its own"):
        SilaPump("p", "sila://127.0.0.1:5?insecure=1", address=2)
    with pytest.raises(NotConnected, match="not connected"):
        SilaPump("p", "sila://127.0.0.1:5?insecure=1").run()


def test_sila_urls() -> None:
    a = parse_sila_url("sila://pumps.lab:50051?ca=/etc/sdl/a.pem")
    assert (a.host, a.port, a.insecure, str(a.ca)) == ("pumps.lab", 50051, False, "/etc/sdl/a.pem")
    assert parse_sila_url("sila://127.0.0.1:1?insecure=1").insecure
    for bad in ("sila://host", "tcp://host:1", "sila://h:1?insecure=1&ca=x", "sila://h:1?tls=1"):
        with pytest.raises(ValueError):
            parse_sila_url(bad)


def test_rig_with_sila_pumps_connects_them_like_local_ones(
    served: tuple[Rig, list[ServedInstrument]], tmp_path: Path
) -> None:
    _, servers = served
    path = tmp_path / "remote.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "remote",
                "pumps": [
                    {
                        "name": "A",
                        "driver": "sila",
                        "port": url(servers, "pump AgNO3"),
                        "syringe_diameter_mm": 14.57,
                    },
                    {
                        "name": "W",
                        "driver": "sila",
                        "port": url(servers, "pump water"),
                        "syringe_diameter_mm": 23.03,
                    },
                ],
            }
        )
    )
    rig = build_rig(load_rig(path))
    with rig:
        assert all(isinstance(p, SilaPump) for p in rig.pumps.values())
        rig.pumps["A"].set_rate_ul_min(10.0)
        rig.pumps["A"].run()
        assert rig.pumps["A"].status().running
    assert served[0].pumps["AgNO3"].status().state is PumpState.STOPPED  # the rig's exit stopped it


def test_sdl_sila_serve_serves_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "rig.yaml"
    data: dict[str, Any] = {**RIG, "name": "clibench", "spectrometer": None}
    data["pumps"] = [{**RIG["pumps"][0], "port": "sim://newera/cli-line"}]
    path.write_text(yaml.safe_dump(data))
    stop = threading.Event()
    ready: list[list[tuple[str, int]]] = []
    got = threading.Event()

    def announce(servers: list[tuple[str, int]]) -> None:
        ready.append(servers)
        got.set()

    base = free_ports(1)
    thread = threading.Thread(
        target=serve_rig,
        args=(path,),
        kwargs={"port": base, "insecure": True, "stop": stop, "ready": announce},
    )
    thread.start()
    try:
        assert got.wait(30)
        assert ready[0] == [("pump AgNO3", base)]
        p = SilaPump("p", f"sila://127.0.0.1:{base}?insecure=1")
        p.connect()
        p.set_rate_ul_min(5.0)
        p.run()
        assert p.status().running
        p.close()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    path = tmp_path / "rig.yaml"
    data: dict[str, Any] = {**RIG, "name": "tlsbench", "spectrometer": None}
    data["pumps"] = [{**RIG["pumps"][0], "port": "sim://newera/tls-line"}]
    path.write_text(yaml.safe_dump(data))
    cfg = load_rig(path)
    rig = build_rig(cfg)
    rig.connect()
    pumps, _ = services_for_rig(cfg, rig)
    servers = build_servers(cfg.name, pumps, None, first_port=free_ports(1))
    start_servers(servers, ca_dir=tmp_path / "ca")
    port = servers[0].port
    try:
        ca = tmp_path / "ca" / f"{port}.pem"
        assert ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        p = SilaPump("p", f"sila://127.0.0.1:{port}?ca={ca}")
        p.connect()
        p.set_rate_ul_min(5.0)
        p.run()
        assert rig.pumps["AgNO3"].status().running
        p.close()
        with pytest.raises(NotConnected, match="no SiLA 2 server answered"):
            SilaPump("p", f"sila://127.0.0.1:{port}?insecure=1").connect()  # plain text to a TLS server
        with pytest.raises(NotConnected, match="cannot read the CA certificate"):
            SilaPump("p", f"sila://127.0.0.1:{port}?ca={tmp_path / 'missing.pem'}").connect()
    finally:
        stop_servers(servers)
        rig.safe_state()
        rig.close()


def test_a_server_that_publishes_the_flow_late_is_not_taken_for_a_stopped_pump(
    served: tuple[Rig, list[ServedInstrument]], pump: SilaPump, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig, servers = served
    server = next(s.server for s in servers if s.label == "pump AgNO3")
    properties = server.feature_servicers["PumpFluidDosingService"].implementation._properties
    monkeypatch.setitem(properties, "FlowRate", lambda: 0.0)  # as a server that polls its pump
    pump.set_rate_ul_min(30.0)
    pump.run()
    assert pump.status().state is PumpState.INFUSING  # just started: trusted
    pump.set_rate_ul_min(35.0)  # still applied while the server lags
    assert rig.pumps["AgNO3"].status().rate_ul_min == pytest.approx(35.0)
    monkeypatch.setattr("drivers.sila.SETTLE_S", 0.0)
    assert pump.status().state is PumpState.STOPPED  # later, the server's word counts


def test_servers_without_discovery_open_no_multicast_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_zeroconf(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a server without discovery made a Zeroconf instance")

    monkeypatch.setattr("sila2.discovery.broadcaster.Zeroconf", no_zeroconf)
    path = tmp_path / "rig.yaml"
    data: dict[str, Any] = {**RIG, "name": "quietbench", "spectrometer": None}
    data["pumps"] = [{**RIG["pumps"][0], "port": "sim://newera/quiet-line"}]
    path.write_text(yaml.safe_dump(data))
    cfg = load_rig(path)
    rig = build_rig(cfg)
    rig.connect()
    try:
        pumps, _ = services_for_rig(cfg, rig)
        servers = build_servers(cfg.name, pumps, None, first_port=free_ports(1))
        start_servers(servers, insecure=True)
        stop_servers(servers)
    finally:
        rig.close()


class _RefusedAfterAMoment:
    """A GenerateFlow instance that runs for a moment, then ends in an error (a server refusing the
    rate after its command started, as a busy server does)."""

    def __init__(self, running_s: float) -> None:
        self._until = time.monotonic() + running_s

    @property
    def status(self) -> Any:
        from sila2.framework import CommandExecutionStatus

        if time.monotonic() < self._until:
            return CommandExecutionStatus.running
        return CommandExecutionStatus.finishedWithError

    def get_responses(self) -> Any:
        from sila2.framework import UndefinedExecutionError

        raise UndefinedExecutionError("the pusher is blocked")


def test_a_refusal_shortly_after_the_flow_started_is_not_missed() -> None:
    from types import SimpleNamespace

    from drivers.errors import DeviceError

    p = SilaPump("slow-server", "sila://127.0.0.1:1?insecure=1")
    dosing = SimpleNamespace(GenerateFlow=lambda rate: _RefusedAfterAMoment(0.05))
    p._client = SimpleNamespace(PumpFluidDosingService=dosing)
    p._rate = 10.0
    with pytest.raises(DeviceError, match="pusher is blocked"):
        p.run()
