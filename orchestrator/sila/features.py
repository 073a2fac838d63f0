"""SiLA 2 feature definitions (FDL) served by ``sdl sila serve``.

Pumps speak the subset of CETONI's syringe-pump features (originator ``de.cetoni``) that a campaign
needs, with the same identifiers, so that one client (``drivers.sila``) drives both our served pumps
and a CETONI neMESYS behind the vendor's SiLA 2 server. The spectrometer and the safe-state command
have no established feature, so they are ours (originator ``org.sdlorchestrator``).

The definitions are built from a few helpers rather than kept as XML files: they stay importable
from an installed wheel without package data, and each identifier is written once.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from sila2.framework import Feature

CETONI = ("de.cetoni", "pumps.syringepumps")
OURS = "org.sdlorchestrator"

_MM = (
    "<Constrained><DataType><Basic>Real</Basic></DataType><Constraints><Unit><Label>mm</Label>"
    "<Factor>0.001</Factor><Offset>0</Offset><UnitComponent><SIUnit>Meter</SIUnit><Exponent>1</Exponent>"
    "</UnitComponent></Unit></Constraints></Constrained>"
)
_US = (
    "<Constrained><DataType><Basic>Integer</Basic></DataType><Constraints><Unit><Label>us</Label>"
    "<Factor>0.000001</Factor><Offset>0</Offset><UnitComponent><SIUnit>Second</SIUnit><Exponent>1</Exponent>"
    "</UnitComponent></Unit></Constraints></Constrained>"
)
REAL = "<Basic>Real</Basic>"
BOOLEAN = "<Basic>Boolean</Basic>"
REAL_LIST = "<List><DataType><Basic>Real</Basic></DataType></List>"


def _string_set(*values: str) -> str:
    items = "".join(f"<Value>{escape(v)}</Value>" for v in values)
    return f"<Constrained><DataType><Basic>String</Basic></DataType><Constraints><Set>{items}</Set></Constraints></Constrained>"


def _named(identifier: str) -> str:
    return " ".join(re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", identifier))


def _head(identifier: str, description: str) -> str:
    return (
        f"<Identifier>{identifier}</Identifier><DisplayName>{_named(identifier)}</DisplayName>"
        f"<Description>{escape(description)}</Description>"
    )


def _typed(identifier: str, description: str, data_type: str) -> str:
    return f"{_head(identifier, description)}<DataType>{data_type}</DataType>"


def param(identifier: str, description: str, data_type: str = REAL) -> str:
    return f"<Parameter>{_typed(identifier, description, data_type)}</Parameter>"


def response(identifier: str, description: str, data_type: str) -> str:
    return f"<Response>{_typed(identifier, description, data_type)}</Response>"


def command(
    identifier: str,
    description: str,
    *parts: str,
    observable: bool = False,
    errors: tuple[str, ...] = (),
) -> str:
    errs = "".join(f"<Identifier>{e}</Identifier>" for e in errors)
    errs = f"<DefinedExecutionErrors>{errs}</DefinedExecutionErrors>" if errors else ""
    return (
        f"<Command>{_head(identifier, description)}<Observable>{'Yes' if observable else 'No'}</Observable>"
        f"{''.join(parts)}{errs}</Command>"
    )


def prop(identifier: str, description: str, data_type: str = REAL, *, observable: bool = True) -> str:
    return (
        f"<Property>{_head(identifier, description)}<Observable>{'Yes' if observable else 'No'}</Observable>"
        f"<DataType>{data_type}</DataType></Property>"
    )


def error(identifier: str, description: str) -> str:
    return f"<DefinedExecutionError>{_head(identifier, description)}</DefinedExecutionError>"


def type_definition(identifier: str, description: str, data_type: str) -> str:
    return f"<DataTypeDefinition>{_typed(identifier, description, data_type)}</DataTypeDefinition>"


def feature_xml(originator: str, category: str, identifier: str, description: str, *parts: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8" ?>'
        f'<Feature SiLA2Version="1.0" FeatureVersion="1.0" Originator="{originator}" Category="{category}" '
        'xmlns="http://www.sila-standard.org" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.sila-standard.org '
        'https://gitlab.com/SiLA2/sila_base/raw/master/schema/FeatureDefinition.xsd">'
        f"{_head(identifier, description)}{''.join(parts)}</Feature>"
    )


_NOT_ENABLED = "PumpIsNotEnabled"
_FAULT = "PumpIsInFaultState"

PUMP_FLUID_DOSING = feature_xml(
    *CETONI,
    "PumpFluidDosingService",
    "Dose fluid at a flow rate until stopped. Rates and volumes are in the units set through the "
    "PumpUnitController.",
    command(
        "GenerateFlow",
        "Start a continuous flow at the given rate (negative: aspirate). The command finishes once the "
        "pump runs at that rate; the flow goes on until StopDosage.",
        param("FlowRate", "Flow rate in the current flow unit; negative aspirates."),
        observable=True,
        errors=(_FAULT, _NOT_ENABLED),
    ),
    command("StopDosage", "Stop dosing now."),
    prop("MaxSyringeFillLevel", "Volume the syringe holds, in the current volume unit."),
    prop("SyringeFillLevel", "Volume left in the syringe, in the current volume unit."),
    prop("MaxFlowRate", "Highest flow rate this pump and syringe deliver, in the current flow unit."),
    prop("FlowRate", "Flow rate the pump doses at now; 0 while stopped."),
    error(_FAULT, "The pump drive is in a fault state: clear it (EnablePumpDrive) after checking the pump."),
    error(_NOT_ENABLED, "The pump drive is disabled: enable it (EnablePumpDrive) first."),
)

_VOLUME_UNITS = ("l", "dl", "cl", "ml", "ul", "µl")
_TIME_UNITS = ("h", "min", "s")
_FLOW_UNIT = (
    "<Structure>"
    "<Element><Identifier>VolumeUnit</Identifier><DisplayName>Volume Unit</DisplayName>"
    "<Description>Volume unit of the flow rate.</Description>"
    "<DataType><DataTypeIdentifier>VolumeUnit</DataTypeIdentifier></DataType></Element>"
    "<Element><Identifier>TimeUnit</Identifier><DisplayName>Time Unit</DisplayName>"
    "<Description>Time unit of the flow rate.</Description>"
    "<DataType><DataTypeIdentifier>TimeUnit</DataTypeIdentifier></DataType></Element>"
    "</Structure>"
)
_VOLUME_UNIT_REF = "<DataTypeIdentifier>VolumeUnit</DataTypeIdentifier>"

PUMP_UNIT_CONTROLLER = feature_xml(
    *CETONI,
    "PumpUnitController",
    "Choose the units of every flow rate and volume passed to or read from the pump.",
    command("SetFlowUnit", "Set the flow unit.", param("FlowUnit", "The flow unit.", _FLOW_UNIT)),
    command(
        "SetVolumeUnit", "Set the volume unit.", param("VolumeUnit", "The volume unit.", _VOLUME_UNIT_REF)
    ),
    prop("FlowUnit", "The flow unit in use.", _FLOW_UNIT),
    prop("VolumeUnit", "The volume unit in use.", _VOLUME_UNIT_REF),
    type_definition("VolumeUnit", "A volume unit.", _string_set(*_VOLUME_UNITS)),
    type_definition("TimeUnit", "The time unit of a flow rate.", _string_set(*_TIME_UNITS)),
)

SYRINGE_CONFIGURATION = feature_xml(
    *CETONI,
    "SyringeConfigurationController",
    "The syringe on the pump: its inner diameter and the piston's travel.",
    command(
        "SetSyringeParameters",
        "Set the syringe's inner diameter and maximum piston stroke (both in mm).",
        param("InnerDiameter", "Inner diameter of the syringe barrel.", _MM),
        param("MaxPistonStroke", "How far the piston may travel before it leaves the barrel.", _MM),
    ),
    prop("InnerDiameter", "Inner diameter of the syringe barrel.", _MM),
    prop("MaxPistonStroke", "How far the piston may travel before it leaves the barrel.", _MM),
)

DRIVE_STATES = ("Enabled", "Disabled", "Initializing")

PUMP_DRIVE_CONTROL = feature_xml(
    *CETONI,
    "PumpDriveControlService",
    "Enable and disable the pump drive and read its state; only an enabled drive doses.",
    command("EnablePumpDrive", "Enable the drive (clears a fault state)."),
    command("DisablePumpDrive", "Stop and disable the drive."),
    prop("PumpDriveState", "Enabled, Disabled or Initializing.", _string_set(*DRIVE_STATES)),
    prop("FaultState", "True while the drive is in a fault state (an alarm on the pump).", BOOLEAN),
)

SAFE_STATE = feature_xml(
    OURS,
    "core",
    "SafeStateController",
    "Put an instrument in its safe state (pumps stopped, light source untouched); idempotent.",
    command("EnterSafeState", "Put the instrument in its safe state now."),
    prop("Status", "One line on what the instrument does now, for people.", "<Basic>String</Basic>"),
)

SPECTROMETER = feature_xml(
    OURS,
    "spectroscopy",
    "SpectrometerService",
    "A UV-Vis spectrometer: raw detector counts per pixel, the pixels' wavelengths, integration time.",
    command(
        "AcquireSpectrum",
        "Acquire one spectrum of raw counts at the current integration time.",
        response(
            "Counts", "Counts per pixel, dark- and nonlinearity-corrected where the device can.", REAL_LIST
        ),
    ),
    command(
        "SetIntegrationTime",
        "Set the integration time in microseconds.",
        param("IntegrationTime", "Integration time in microseconds.", _US),
    ),
    command(
        "SetLampEnabled",
        "Switch the light source (for dark spectra).",
        param("Enabled", "True switches the lamp on.", BOOLEAN),
    ),
    prop("Wavelengths", "Wavelength of each pixel in nm.", REAL_LIST, observable=False),
    prop("IntegrationTime", "Integration time in microseconds.", _US, observable=False),
    prop("SaturationCounts", "Counts at which the detector saturates.", REAL, observable=False),
)

PUMP_FEATURES = (
    PUMP_FLUID_DOSING,
    PUMP_UNIT_CONTROLLER,
    SYRINGE_CONFIGURATION,
    PUMP_DRIVE_CONTROL,
    SAFE_STATE,
)
SPECTROMETER_FEATURES = (SPECTROMETER, SAFE_STATE)


def load(definition: str) -> Feature:
    """A fresh sila2 ``Feature`` of a definition: one per server, as each server binds its own to it."""
    from sila2.framework import Feature

    return Feature(definition)
