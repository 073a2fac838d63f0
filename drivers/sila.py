"""Syringe pumps served over SiLA 2: a CETONI neMESYS behind the vendor's SiLA 2 server, or any pump
that ``sdl sila serve`` serves, joins a rig like a local one (``driver: sila``).

The rig file's port is ``sila://HOST:PORT`` (one server per pump, as CETONI serves them), with
``?insecure=1`` for a server started without TLS (tests, loopback) or ``?ca=/etc/sdl/pump-a.pem``
for a server with a self-signed certificate. The driver speaks CETONI's syringe-pump features:

* ``PumpFluidDosingService``: GenerateFlow(FlowRate), StopDosage, the observable properties
  FlowRate, MaxFlowRate, SyringeFillLevel (required);
* ``PumpUnitController``: SetFlowUnit / SetVolumeUnit, set to uL/min and uL on connect (optional);
* ``SyringeConfigurationController``: InnerDiameter, SetSyringeParameters (optional);
* ``PumpDriveControlService``: PumpDriveState, FaultState, EnablePumpDrive (optional).

Dispensed volume is what the syringe's fill level went down by since ``connect()``: CETONI reports
the fill level, not a dispensed counter. Needs the ``sila2`` package (``pip install "sdl-orchestrator[sila]"``).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from drivers.base import PumpState, PumpStatus, warn_unverified_once
from drivers.errors import DeviceAlarm, DeviceError, DeviceTimeout, NotConnected, OutOfRange, ProtocolError

log = structlog.get_logger("drivers.sila")

SCHEME = "sila"
# any syringe a pump can hold; the server checks its own pump's limits
MIN_DIAMETER_MM = 0.1
MAX_DIAMETER_MM = 80.0
FLOW_UNIT = ("ul", "min")
VOLUME_UNIT = "ul"
START_TIMEOUT_S = 5.0  # how long GenerateFlow may take to be accepted
ERROR_GRACE_S = 0.2  # how long a running GenerateFlow is watched for a refusal
# a server may poll its pump and publish FlowRate a moment late (CETONI's polls its device): this long
# after a successful GenerateFlow a FlowRate of 0 still reads as "starting", later as stopped
SETTLE_S = 2.0


def rate_limits_ul_min(diameter_mm: float) -> tuple[float, float]:
    """Any rate: the pump behind the server reports its own maximum (MaxFlowRate) when it connects,
    and a rate it cannot deliver is refused then, naming the pump."""
    return 0.0, math.inf


class SilaNotAvailable(NotConnected):
    hint_default = (
        'Install the SiLA 2 extra on this host: pip install -c constraints.txt "sdl-orchestrator[sila]"'
    )


@dataclass(frozen=True)
class SilaAddress:
    host: str
    port: int
    insecure: bool = False
    ca: Path | None = None

    def __str__(self) -> str:
        return f"sila://{self.host}:{self.port}"


def parse_sila_url(url: str) -> SilaAddress:
    """``sila://HOST:PORT[?insecure=1|?ca=PATH]`` -> :class:`SilaAddress`; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME or not parts.hostname or parts.port is None:
        raise ValueError(
            f"{url!r} is not a SiLA 2 address: write sila://HOST:PORT (e.g. sila://10.0.0.5:50051)"
        )
    query = parse_qs(parts.query)
    unknown = set(query) - {"insecure", "ca"}
    if unknown:
        raise ValueError(
            f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}; known: insecure=1, ca=PATH"
        )
    insecure = query.get("insecure", ["0"])[-1].lower() in ("1", "true", "yes")
    ca = Path(query["ca"][-1]) if "ca" in query else None
    if insecure and ca is not None:
        raise ValueError(f"{url!r}: give either insecure=1 or ca=PATH, not both")
    return SilaAddress(parts.hostname, parts.port, insecure, ca)


class SilaPump:
    """A :class:`drivers.base.SyringePump` whose pump is served over SiLA 2."""

    def __init__(
        self,
        name: str,
        port: str,
        *,
        address: int = 0,
        syringe_diameter_mm: float | None = None,
        baudrate: int | None = None,
    ) -> None:
        self.name = name
        try:
            self.address = parse_sila_url(port)
        except ValueError as exc:
            raise NotConnected(str(exc), device=name, hint="Fix the pump's port in the rig file.") from exc
        if address != 0 or baudrate is not None:
            raise OutOfRange(
                "a SiLA 2 pump has a server of its own: give it its own sila:// port, no address or baud rate",
                device=name,
                hint="Remove address and baudrate from this pump in the rig file.",
            )
        self._wanted_diameter_mm = syringe_diameter_mm
        self._diameter_mm = syringe_diameter_mm or 0.0
        self._client: Any = None
        self._lock = threading.RLock()
        self._rate: float | None = None
        self._max_rate = math.inf
        self._fill_last = 0.0
        self._dispensed = 0.0
        self._started_at: float | None = None
        # a drive found disabled at this object's first connection (power-up, or left so before this
        # process) is enabled by the first run(), as CETONI's software does before dosing; one disabled
        # later is someone's stop, which a reconnect must not undo, and a status read changes nothing
        self._connected_before = False
        self._enable_at_run = False

    # -- connection --------------------------------------------------------------------------------

    def connect(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            try:
                from sila2.client import SilaClient
            except ImportError as exc:
                raise SilaNotAvailable("the sila2 package is not installed", device=self.name) from exc
            a = self.address
            try:
                root_certs = a.ca.read_bytes() if a.ca is not None else None
            except OSError as exc:
                raise NotConnected(
                    f"cannot read the CA certificate {a.ca} ({exc.strerror})",
                    device=self.name,
                    hint="Copy the server's certificate (PEM) to that path, or fix ca= in the rig file.",
                ) from exc
            try:
                client = SilaClient(a.host, a.port, insecure=a.insecure, root_certs=root_certs)
            except Exception as exc:  # noqa: BLE001 - grpc, TLS and SiLA errors all mean "no usable server"
                raise NotConnected(
                    f"no SiLA 2 server answered at {a} ({type(exc).__name__}: {exc})",
                    device=self.name,
                    hint=(
                        "Check that the pump's SiLA 2 server runs at that address (CETONI's, or "
                        "`sdl sila serve`), that the firewall lets the port through, and that insecure=1 "
                        "or ca= in the rig file match how the server was started."
                    ),
                ) from exc
            if not hasattr(client, "PumpFluidDosingService"):
                client.close()
                raise ProtocolError(
                    f"the SiLA 2 server at {a} has no PumpFluidDosingService: it is not a syringe pump",
                    device=self.name,
                    hint="Check the port in the rig file: each pump has a server (and port) of its own.",
                )
            self._client = client
            try:
                self._set_up()
            except Exception:
                self.close()
                raise
            log.info("sila pump connected", pump=self.name, server=str(a), max_rate_ul_min=self._max_rate)
            warn_unverified_once("drivers.sila")  # against our own server, not a CETONI one yet

    def _set_up(self) -> None:
        c = self._client
        if hasattr(c, "PumpUnitController"):
            self._call("set units", c.PumpUnitController.SetFlowUnit, FLOW_UNIT)
            self._call("set units", c.PumpUnitController.SetVolumeUnit, VOLUME_UNIT)
        else:
            log.warning("sila pump has no PumpUnitController; assuming uL and uL/min", pump=self.name)
        if hasattr(c, "PumpDriveControlService"):
            drive = c.PumpDriveControlService
            if self._get(drive.FaultState):
                raise DeviceAlarm(
                    "the pump drive is in a fault state",
                    device=self.name,
                    hint=(
                        "Check the pump (syringe, pusher, cabling), then clear the fault in the vendor's "
                        "software or with EnablePumpDrive, and resume."
                    ),
                )
            state = self._get(drive.PumpDriveState)
            if state == "Initializing":
                raise NotConnected(
                    "the pump drive is still initializing (reference move)",
                    device=self.name,
                    hint="Wait for the initialization to finish, then connect again.",
                )
            if not self._connected_before:
                self._enable_at_run = state == "Disabled"
        self._connected_before = True
        if hasattr(c, "SyringeConfigurationController"):
            syringe = c.SyringeConfigurationController
            current = float(self._get(syringe.InnerDiameter))
            if self._wanted_diameter_mm is not None and abs(current - self._wanted_diameter_mm) > 1e-6:
                self._set_diameter(self._wanted_diameter_mm)
            else:
                self._diameter_mm = current
        dosing = c.PumpFluidDosingService
        self._max_rate = float(self._get(dosing.MaxFlowRate))
        flow = float(self._get(dosing.FlowRate))
        self._rate = abs(flow) if flow else self._rate
        self._fill_last = float(self._get(dosing.SyringeFillLevel))
        self._dispensed = 0.0

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                try:
                    client.close()
                except Exception as exc:  # noqa: BLE001 - closing never fails loudly
                    log.warning("sila client close failed", pump=self.name, error=str(exc))

    # -- calls -------------------------------------------------------------------------------------

    def _require(self) -> Any:
        if self._client is None:
            raise NotConnected(
                f"not connected to {self.address}", device=self.name, hint="Call connect() first."
            )
        return self._client

    def _get(self, prop: Any) -> Any:
        return self._call("read a property", prop.get)

    def _drive_disabled(self, what: str) -> DeviceAlarm:
        return DeviceAlarm(
            f"could not {what}: the pump drive is disabled",
            device=self.name,
            hint="Enable the pump drive (vendor software or EnablePumpDrive), then resume.",
        )

    def _call(self, what: str, func: Any, *args: Any) -> Any:
        """Call the server; SiLA and gRPC errors come back as the device errors the rig knows."""
        from sila2.framework import (
            DefinedExecutionError,
            SilaConnectionError,
            UndefinedExecutionError,
            ValidationError,
        )

        try:
            return func(*args)
        except ValidationError as exc:
            raise OutOfRange(f"could not {what}: {exc.message}", device=self.name) from exc
        except DefinedExecutionError as exc:
            if exc.identifier == "PumpIsNotEnabled":
                raise self._drive_disabled(what) from exc
            if exc.identifier == "PumpIsInFaultState":
                raise DeviceAlarm(f"could not {what}: {exc.message}", device=self.name) from exc
            raise DeviceError(f"could not {what}: {exc.identifier}: {exc.message}", device=self.name) from exc
        except UndefinedExecutionError as exc:
            raise DeviceError(
                f"could not {what}: the server reported {exc.message}",
                device=self.name,
                hint="Check the pump and its SiLA 2 server's log.",
            ) from exc
        except SilaConnectionError as exc:
            raise NotConnected(
                f"lost the SiLA 2 server at {self.address} while trying to {what} ({exc})",
                device=self.name,
                hint="Check that the pump's SiLA 2 server still runs and the network between the hosts.",
            ) from exc

    # -- SyringePump -------------------------------------------------------------------------------

    @property
    def syringe_diameter_mm(self) -> float:
        return self._diameter_mm

    def _set_diameter(self, diameter_mm: float) -> None:
        syringe = self._require().SyringeConfigurationController
        stroke = float(self._get(syringe.MaxPistonStroke))
        self._call("set the syringe", syringe.SetSyringeParameters, float(diameter_mm), stroke)
        self._diameter_mm = float(diameter_mm)

    def set_syringe_diameter_mm(self, diameter_mm: float) -> None:
        if not MIN_DIAMETER_MM <= diameter_mm <= MAX_DIAMETER_MM:
            raise OutOfRange(f"syringe diameter {diameter_mm:g} mm is not a syringe's", device=self.name)
        with self._lock:
            if not hasattr(self._require(), "SyringeConfigurationController"):
                raise ProtocolError(
                    "the server has no SyringeConfigurationController to set the syringe",
                    device=self.name,
                    hint="Set the syringe in the vendor's software and give the same diameter in the rig file.",
                )
            self._set_diameter(diameter_mm)

    def set_rate_ul_min(self, rate_ul_min: float) -> None:
        if not (rate_ul_min > 0 and math.isfinite(rate_ul_min)):
            raise OutOfRange(f"rate {rate_ul_min!r} uL/min: give a positive rate", device=self.name)
        if rate_ul_min > self._max_rate * (1 + 1e-9):
            raise OutOfRange(
                f"rate {rate_ul_min:g} uL/min is above this pump's maximum {self._max_rate:g} uL/min",
                device=self.name,
            )
        with self._lock:
            running = self._flow() != 0 or self._settling()
            self._rate = float(rate_ul_min)
            if running:
                self._generate_flow()

    def _settling(self) -> bool:
        return self._started_at is not None and time.monotonic() - self._started_at < SETTLE_S

    def _flow(self) -> float:
        return float(self._get(self._require().PumpFluidDosingService.FlowRate))

    def _generate_flow(self) -> None:
        from sila2.framework import CommandExecutionStatus

        c = self._require()
        dosing = c.PumpFluidDosingService
        if hasattr(c, "PumpDriveControlService") and self._get(c.PumpDriveControlService.PumpDriveState) == "Disabled":
            if not self._enable_at_run:
                raise self._drive_disabled("start the flow")
            self._call("enable the drive", c.PumpDriveControlService.EnablePumpDrive)
            log.info("sila pump drive enabled to start the first flow (it was disabled at connect)", pump=self.name)
        self._enable_at_run = False
        instance = self._call("start the flow", dosing.GenerateFlow, self._rate)
        now = time.monotonic()
        deadline, grace = now + START_TIMEOUT_S, now + ERROR_GRACE_S
        # CETONI's GenerateFlow runs as long as the flow does, ours finishes once it runs: either way
        # it has left "waiting" once the pump took the rate. A refusal runs for a moment first, so a
        # "running" command is watched a little longer for an error.
        while instance.status in (None, CommandExecutionStatus.waiting) or (
            instance.status is CommandExecutionStatus.running and time.monotonic() < grace
        ):
            if time.monotonic() > deadline:
                raise DeviceTimeout(
                    f"the server did not start the flow within {START_TIMEOUT_S:g} s", device=self.name
                )
            time.sleep(0.005)
        if instance.status is CommandExecutionStatus.finishedWithError:
            self._call("start the flow", instance.get_responses)
        self._started_at = time.monotonic()

    def run(self) -> None:
        with self._lock:
            self._require()
            if self._rate is None:
                raise OutOfRange("no rate set: call set_rate_ul_min before run", device=self.name)
            self._generate_flow()

    def stop(self) -> None:
        with self._lock:
            self._started_at = None
            self._call("stop", self._require().PumpFluidDosingService.StopDosage)

    def dispensed_ul(self) -> float:
        with self._lock:
            fill = float(self._get(self._require().PumpFluidDosingService.SyringeFillLevel))
            if fill < self._fill_last:
                self._dispensed += self._fill_last - fill
            self._fill_last = fill  # a refill raises the level and dispenses nothing
            return self._dispensed

    def status(self) -> PumpStatus:
        with self._lock:
            c = self._require()
            flow = self._flow()
            alarm = None
            if hasattr(c, "PumpDriveControlService") and self._get(c.PumpDriveControlService.FaultState):
                alarm = "fault"
            if flow == 0 and self._settling() and alarm is None:
                flow = self._rate or 0.0  # started a moment ago; the server has not published it yet
            state = (
                PumpState.INFUSING if flow > 0 else PumpState.WITHDRAWING if flow < 0 else PumpState.STOPPED
            )
            return PumpStatus(state, self._rate or abs(flow), self.dispensed_ul(), alarm)

    def safe_state(self) -> None:
        with self._lock:
            if self._client is not None:
                self.stop()
