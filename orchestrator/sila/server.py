"""Serve a rig's pumps and spectrometer as SiLA 2 servers, one server per instrument.

One server per instrument, on consecutive ports, is how CETONI serves its neMESYS pumps too, so a
scheduler that knows those finds ours the same way. Every device call goes through one lock per
instrument: the drivers are not thread-safe and gRPC answers calls from a thread pool.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from queue import Queue
from typing import Any

import structlog
from sila2.framework import DefinedExecutionError, Feature, ValidationError
from sila2.server import FeatureImplementationBase, SilaServer

from drivers.base import PumpState, Spectrometer, SyringePump
from drivers.errors import OutOfRange
from orchestrator.sila import features as fdl

log = structlog.get_logger("orchestrator.sila")

SERVER_VERSION = "0.1.0"
SERVER_VENDOR_URL = "https://example.org/sdl-orchestrator"
REFRESH_S = 0.5  # how often subscribers of observable properties get changed values
DEFAULT_STROKE_MM = 60.0  # piston travel assumed when the rig file gives no syringe volume

_VOLUME_UL = {"l": 1e6, "dl": 1e5, "cl": 1e4, "ml": 1e3, "ul": 1.0, "µl": 1.0}
_TIME_MIN = {"h": 60.0, "min": 1.0, "s": 1.0 / 60.0}


@dataclass
class _Subscription:
    queue: Queue
    last: Any
    since: float = field(default_factory=time.monotonic)


class FeatureImplementation(FeatureImplementationBase):
    """A feature implemented by plain callables: ``properties[id]() -> value`` and
    ``commands[id](*parameters) -> response``.

    Each subscription to an observable property gets the value read *now* first (the library's
    shared queue would hand a new subscriber the last value it saw, up to ``REFRESH_S`` old), then
    every change, until the client cancels it."""

    def __init__(
        self,
        server: SilaServer,
        feature: Feature,
        *,
        properties: dict[str, Callable[[], Any]],
        commands: dict[str, Callable[..., Any]],
    ) -> None:
        super().__init__(server)
        self.feature = feature
        self._properties = properties
        self._subscriptions: dict[str, list[_Subscription]] = {}
        self._lock = threading.Lock()
        wanted = {*feature._unobservable_properties, *feature._observable_properties}
        missing = (wanted - properties.keys()) | (
            {*feature._unobservable_commands, *feature._observable_commands} - commands.keys()
        )
        if missing:
            raise ValueError(f"{feature._identifier}: no implementation for {sorted(missing)}")
        for pid in feature._unobservable_properties:
            setattr(self, f"get_{pid}", partial(self._get, pid))
        for pid in feature._observable_properties:
            setattr(self, f"_{pid}_producer_queue", Queue())
            setattr(self, f"{pid}_on_subscription", partial(self._subscribe, pid))
            self._subscriptions[pid] = []
        for cid in feature._unobservable_commands:
            setattr(self, cid, partial(self._command, commands[cid]))
        for cid in feature._observable_commands:
            setattr(self, cid, partial(self._command, commands[cid]))
        if feature._observable_properties:
            self.run_periodically(self._refresh, REFRESH_S)

    def _get(self, pid: str, *, metadata: Any = None) -> Any:
        return self._properties[pid]()

    @staticmethod
    def _command(func: Callable[..., Any], *params: Any, metadata: Any = None, instance: Any = None) -> Any:
        return func(*params)

    def _subscribe(self, pid: str, *, metadata: Any = None) -> Queue:
        value = self._properties[pid]()  # raises here, in the caller's RPC, if the device fails
        queue: Queue = Queue()
        queue.put(value)
        with self._lock:
            self._subscriptions[pid].append(_Subscription(queue, value))
        return queue

    def _subscribers(self, pid: str, queue: Queue) -> list | None:
        servicer = self.parent_server.feature_servicers.get(self.feature._identifier)
        managers = getattr(servicer, "observable_property_subscription_managers", {}).get(pid, {})
        manager = managers.get(queue)
        return (
            None
            if manager is None
            else getattr(manager, "_SubscriptionManagerThread__subscriber_streams", None)
        )

    def _refresh(self) -> None:
        """Push changed values to live subscriptions; end those whose client went away."""
        now = time.monotonic()
        with self._lock:
            items = [(pid, list(subs)) for pid, subs in self._subscriptions.items() if subs]
        for pid, subs in items:
            ended = [
                s for s in subs if now - s.since > 2 * REFRESH_S and self._subscribers(pid, s.queue) == []
            ]
            for sub in ended:
                sub.queue.put(StopIteration())
                servicer = self.parent_server.feature_servicers.get(self.feature._identifier)
                if servicer is not None:
                    servicer.observable_property_subscription_managers.get(pid, {}).pop(sub.queue, None)
            live = [s for s in subs if s not in ended]
            with self._lock:
                self._subscriptions[pid] = [s for s in self._subscriptions[pid] if s not in ended]
            if not live:
                continue
            try:
                value: Any = self._properties[pid]()
            except Exception as exc:  # noqa: BLE001 - the subscribers get the device's error
                value = exc
            for sub in live:
                if isinstance(value, Exception) or value != sub.last:
                    sub.queue.put(value)
                    sub.last = value


# -- pumps -------------------------------------------------------------------------------------------


class PumpService:
    """A :class:`SyringePump` behind CETONI's syringe-pump features.

    Rates and volumes cross the wire in the units the client chose (PumpUnitController); the pump
    only infuses, so a negative rate (aspirate) is refused. The fill level counts down from the
    syringe volume by what the pump reports dispensed since the server started."""

    def __init__(
        self,
        pump: SyringePump,
        *,
        max_rate_ul_min: float,
        syringe_volume_ul: float | None = None,
    ) -> None:
        self.pump = pump
        self.lock = threading.RLock()
        self.max_rate_ul_min = max_rate_ul_min
        area = math.pi * (pump.syringe_diameter_mm / 2) ** 2
        self.stroke_mm = syringe_volume_ul / area if syringe_volume_ul else DEFAULT_STROKE_MM
        self.flow_unit = ("ul", "min")
        self.volume_unit = "ul"
        self.enabled = True
        self._dispensed_at_start = pump.dispensed_ul()

    # unit conversion
    def _flow_to_ul_min(self, value: float) -> float:
        volume, per = self.flow_unit
        return value * _VOLUME_UL[volume] / _TIME_MIN[per]

    def _flow_from_ul_min(self, rate: float) -> float:
        volume, per = self.flow_unit
        return rate * _TIME_MIN[per] / _VOLUME_UL[volume]

    def _volume_from_ul(self, volume_ul: float) -> float:
        return volume_ul / _VOLUME_UL[self.volume_unit]

    def syringe_volume_ul(self) -> float:
        return math.pi * (self.pump.syringe_diameter_mm / 2) ** 2 * self.stroke_mm

    # properties
    def max_fill_level(self) -> float:
        with self.lock:
            return self._volume_from_ul(self.syringe_volume_ul())

    def fill_level(self) -> float:
        with self.lock:
            used = self.pump.dispensed_ul() - self._dispensed_at_start
            return self._volume_from_ul(max(0.0, self.syringe_volume_ul() - used))

    def max_flow_rate(self) -> float:
        with self.lock:
            return self._flow_from_ul_min(self.max_rate_ul_min)

    def flow_rate(self) -> float:
        with self.lock:
            status = self.pump.status()
            if not status.running:
                return 0.0
            sign = -1.0 if status.state is PumpState.WITHDRAWING else 1.0
            return self._flow_from_ul_min(sign * status.rate_ul_min)

    def fault(self) -> bool:
        with self.lock:
            return self.pump.status().alarm is not None

    def status_line(self) -> str:
        with self.lock:
            s = self.pump.status()
        alarm = f", alarm: {s.alarm}" if s.alarm else ""
        drive = "" if self.enabled else ", drive disabled"
        return f"{s.state.name.lower()} at {s.rate_ul_min:g} uL/min, {s.dispensed_ul:g} uL dispensed{drive}{alarm}"

    # commands
    def generate_flow(self, feature: Feature, flow_rate: float) -> None:
        errors = feature.defined_execution_errors
        with self.lock:
            if self.pump.status().alarm is not None:
                raise DefinedExecutionError(
                    errors["PumpIsInFaultState"],
                    f"pump {self.pump.name} has an alarm ({self.pump.status().alarm}): check it, then EnablePumpDrive",
                )
            if not self.enabled:
                raise DefinedExecutionError(
                    errors["PumpIsNotEnabled"], f"pump {self.pump.name} is disabled: call EnablePumpDrive"
                )
            rate = self._flow_to_ul_min(flow_rate)
            if rate < 0:
                raise _invalid_flow_rate(feature, f"pump {self.pump.name} only infuses; give a rate >= 0")
            if rate > self.max_rate_ul_min * (1 + 1e-9):
                raise _invalid_flow_rate(
                    feature,
                    f"{flow_rate:g} {'/'.join(self.flow_unit)} is above this pump's maximum "
                    f"{self._flow_from_ul_min(self.max_rate_ul_min):g}",
                )
            if rate == 0:
                self.pump.stop()
                return
            try:
                self.pump.set_rate_ul_min(rate)
            except OutOfRange as exc:
                raise _invalid_flow_rate(feature, str(exc)) from exc
            self.pump.run()

    def stop(self) -> None:
        with self.lock:
            self.pump.stop()

    def set_flow_unit(self, unit: Any) -> None:
        with self.lock:
            self.flow_unit = (unit.VolumeUnit, unit.TimeUnit)

    def set_volume_unit(self, unit: str) -> None:
        with self.lock:
            self.volume_unit = unit

    def set_syringe(self, diameter_mm: float, stroke_mm: float) -> None:
        with self.lock:
            self.pump.set_syringe_diameter_mm(diameter_mm)
            self.stroke_mm = stroke_mm

    def enable(self) -> None:
        """Enable the drive and clear a fault (an alarm the driver latched: a stall, a power reset), as
        the feature says; the pump itself acknowledged the alarm when it reported it. The pump stays
        stopped until GenerateFlow."""
        with self.lock:
            if self.pump.status().alarm is not None:
                self.pump.stop()  # a Harvard pump's stall prompt is cleared by a stop
                acknowledge = getattr(self.pump, "acknowledge_alarm", None)
                if acknowledge is not None:
                    acknowledge()
            self.enabled = True

    def disable(self) -> None:
        with self.lock:
            self.pump.stop()
            self.enabled = False

    def safe_state(self) -> None:
        with self.lock:
            self.pump.safe_state()

    def implementations(self, server: SilaServer) -> list[tuple[Feature, FeatureImplementation]]:
        dosing = fdl.load(fdl.PUMP_FLUID_DOSING)
        units = fdl.load(fdl.PUMP_UNIT_CONTROLLER)
        syringe = fdl.load(fdl.SYRINGE_CONFIGURATION)
        drive = fdl.load(fdl.PUMP_DRIVE_CONTROL)
        safe = fdl.load(fdl.SAFE_STATE)
        flow_unit_type = units._observable_properties["FlowUnit"].data_type
        return [
            (
                dosing,
                FeatureImplementation(
                    server,
                    dosing,
                    properties={
                        "MaxSyringeFillLevel": self.max_fill_level,
                        "SyringeFillLevel": self.fill_level,
                        "MaxFlowRate": self.max_flow_rate,
                        "FlowRate": self.flow_rate,
                    },
                    commands={"GenerateFlow": partial(self.generate_flow, dosing), "StopDosage": self.stop},
                ),
            ),
            (
                units,
                FeatureImplementation(
                    server,
                    units,
                    properties={
                        "FlowUnit": lambda: _struct(flow_unit_type, *self.flow_unit),
                        "VolumeUnit": lambda: self.volume_unit,
                    },
                    commands={"SetFlowUnit": self.set_flow_unit, "SetVolumeUnit": self.set_volume_unit},
                ),
            ),
            (
                syringe,
                FeatureImplementation(
                    server,
                    syringe,
                    properties={
                        "InnerDiameter": lambda: self.pump.syringe_diameter_mm,
                        "MaxPistonStroke": lambda: self.stroke_mm,
                    },
                    commands={"SetSyringeParameters": self.set_syringe},
                ),
            ),
            (
                drive,
                FeatureImplementation(
                    server,
                    drive,
                    properties={
                        "PumpDriveState": lambda: "Enabled" if self.enabled else "Disabled",
                        "FaultState": self.fault,
                    },
                    commands={"EnablePumpDrive": self.enable, "DisablePumpDrive": self.disable},
                ),
            ),
            (
                safe,
                FeatureImplementation(
                    server,
                    safe,
                    properties={"Status": self.status_line},
                    commands={"EnterSafeState": self.safe_state},
                ),
            ),
        ]


def _struct(data_type: Any, *values: Any) -> Any:
    """A SiLA structure value in the namedtuple the library builds for that structure type."""
    return data_type.namedtuple_type(*values)


def _invalid_flow_rate(feature: Feature, message: str) -> ValidationError:
    err = ValidationError(message)
    err.parameter_fully_qualified_identifier = (
        feature._observable_commands["GenerateFlow"].parameters.fields[0].fully_qualified_identifier
    )
    return err


# -- spectrometer ------------------------------------------------------------------------------------


class SpectrometerService:
    def __init__(self, spectrometer: Spectrometer) -> None:
        self.spectrometer = spectrometer
        self.lock = threading.RLock()

    def _locked(self, func: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            return func(*args)

    def implementations(self, server: SilaServer) -> list[tuple[Feature, FeatureImplementation]]:
        spec = fdl.load(fdl.SPECTROMETER)
        safe = fdl.load(fdl.SAFE_STATE)
        s = self.spectrometer
        return [
            (
                spec,
                FeatureImplementation(
                    server,
                    spec,
                    properties={
                        "Wavelengths": lambda: [float(w) for w in self._locked(s.wavelengths_nm)],
                        "IntegrationTime": lambda: int(s.integration_time_us),
                        "SaturationCounts": lambda: float(s.saturation_counts),
                    },
                    commands={
                        "AcquireSpectrum": lambda: [float(c) for c in self._locked(s.acquire_counts)],
                        "SetIntegrationTime": partial(self._locked, s.set_integration_time_us),
                        "SetLampEnabled": partial(self._locked, s.set_lamp_enabled),
                    },
                ),
            ),
            (
                safe,
                FeatureImplementation(
                    server,
                    safe,
                    properties={"Status": lambda: f"integration time {s.integration_time_us} us"},
                    commands={"EnterSafeState": partial(self._locked, s.safe_state)},
                ),
            ),
        ]


# -- servers -----------------------------------------------------------------------------------------


@dataclass
class ServedInstrument:
    label: str  # "pump AgNO3", "spectrometer"
    port: int
    server: SilaServer


@dataclass
class TlsFiles:
    """The site's PEM key and certificate chain, used by every server of the rig."""

    private_key: bytes
    cert_chain: bytes


def server_uuid(rig_name: str, label: str) -> uuid.UUID:
    """The same UUID every time the same rig serves the same instrument, so clients can find it again."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"sdl-orchestrator:{rig_name}:{label}")


class _NoDiscovery:
    """Stands in for sila2's mDNS broadcaster when discovery is off. The library makes a Zeroconf
    instance for every server it constructs, which joins the multicast group on every interface and
    is never closed; a server that does not announce itself needs none of that."""

    def __init__(self) -> None:
        self.registered_server_infos: dict[Any, Any] = {}

    def register_server(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("this server was built without discovery: build it with discovery=True")

    def unregister_server(self, *args: Any, **kwargs: Any) -> None:
        return None


_construct_lock = threading.Lock()


def _new_server(
    rig_name: str, label: str, server_type: str, description: str, *, discovery: bool
) -> SilaServer:
    import sila2.server.sila_server as sila_server_module

    def make() -> SilaServer:
        return SilaServer(
            server_name=f"{rig_name} {label}"[:255],
            server_type=server_type,
            server_description=description,
            server_version=SERVER_VERSION,
            server_vendor_url=SERVER_VENDOR_URL,
            server_uuid=server_uuid(rig_name, label),
            max_grpc_workers=16,
            max_child_task_workers=16,
        )

    if discovery:
        return make()
    with _construct_lock:
        original = sila_server_module.SilaServiceBroadcaster
        sila_server_module.SilaServiceBroadcaster = _NoDiscovery  # type: ignore[assignment,misc]
        try:
            return make()
        finally:
            sila_server_module.SilaServiceBroadcaster = original  # type: ignore[misc]


def build_servers(
    rig_name: str,
    pumps: dict[str, PumpService],
    spectrometer: SpectrometerService | None,
    *,
    first_port: int,
    discovery: bool = False,
) -> list[ServedInstrument]:
    """One server per instrument, pumps first (in the rig file's order), on consecutive ports;
    ``discovery`` makes them able to announce themselves by mDNS (then start them with it too)."""
    served: list[ServedInstrument] = []
    port = first_port
    for name, service in pumps.items():
        label = f"pump {name}"
        server = _new_server(
            rig_name, label, "SyringePump", f"Syringe pump {name} of rig {rig_name}", discovery=discovery
        )
        for feature, impl in service.implementations(server):
            server.set_feature_implementation(feature, impl)
        served.append(ServedInstrument(label, port, server))
        port += 1
    if spectrometer is not None:
        label = "spectrometer"
        server = _new_server(
            rig_name, label, "Spectrometer", f"UV-Vis spectrometer of rig {rig_name}", discovery=discovery
        )
        for feature, impl in spectrometer.implementations(server):
            server.set_feature_implementation(feature, impl)
        served.append(ServedInstrument(label, port, server))
    return served


def start_servers(
    served: list[ServedInstrument],
    *,
    host: str = "127.0.0.1",
    insecure: bool = False,
    tls: TlsFiles | None = None,
    discovery: bool = False,
    ca_dir: Path | None = None,
) -> None:
    """Start every server. Without ``insecure`` and ``tls`` each server makes a self-signed
    certificate; its PEM goes to ``ca_dir/<port>.pem`` for clients (``sila://host:port?ca=...``)."""
    started: list[SilaServer] = []
    try:
        for item in served:
            if insecure:
                item.server.start_insecure(host, item.port, enable_discovery=discovery)
            elif tls is not None:
                item.server.start(
                    host,
                    item.port,
                    private_key=tls.private_key,
                    cert_chain=tls.cert_chain,
                    enable_discovery=discovery,
                )
            else:
                from sila2.server.encryption import generate_self_signed_certificate

                key, cert = generate_self_signed_certificate(item.server.server_uuid, host)
                item.server.start(
                    host, item.port, private_key=key, cert_chain=cert, enable_discovery=discovery
                )
                if ca_dir is not None:
                    ca_dir.mkdir(parents=True, exist_ok=True)
                    (ca_dir / f"{item.port}.pem").write_bytes(cert)
            started.append(item.server)
            log.info(
                "sila server started", instrument=item.label, host=host, port=item.port, insecure=insecure
            )
    except Exception:
        stop_servers(started)
        raise


def stop_servers(servers: list[SilaServer] | list[ServedInstrument], grace_s: float = 0.5) -> None:
    """Stop every running server, all at once (each waits out its grace period and its tasks)."""

    def stop(server: SilaServer) -> None:
        try:
            server.stop(grace_s)
        except Exception as exc:  # noqa: BLE001 - stopping must reach every server
            log.warning("sila server stop failed", error=str(exc))

    running = [s.server if isinstance(s, ServedInstrument) else s for s in servers]
    threads = [threading.Thread(target=stop, args=(s,)) for s in running if s.running]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def services_for_rig(cfg: Any, rig: Any) -> tuple[dict[str, PumpService], SpectrometerService | None]:
    """The services of a connected :class:`orchestrator.rig.Rig` built from ``cfg`` (its RigConfig):
    each pump's maximum rate from its driver's specification for the syringe in the rig file."""
    from orchestrator.rig import pump_rate_limits_ul_min

    pumps = {
        p.name: PumpService(
            rig.pumps[p.name],
            max_rate_ul_min=pump_rate_limits_ul_min(p.driver, p.syringe_diameter_mm)[1],
            syringe_volume_ul=p.syringe_volume_ul,
        )
        for p in cfg.pumps
    }
    spectrometer = SpectrometerService(rig.spectrometer) if rig.spectrometer is not None else None
    return pumps, spectrometer
