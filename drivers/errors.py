"""The device error hierarchy.

Every message says what happened *and what the operator should check*, because the person reading it
is standing at the rig at 2 a.m., not reading the code.
"""

from __future__ import annotations


class DeviceError(Exception):
    """Base of every instrument error. ``device`` names the instrument, ``hint`` what to check."""

    hint_default = "Check the instrument's power, cable and the port named in the rig file."

    def __init__(self, message: str, *, device: str | None = None, hint: str | None = None) -> None:
        self.device = device
        self.hint = hint or self.hint_default
        self.detail = message
        prefix = f"{device}: " if device else ""
        super().__init__(f"{prefix}{message}. {self.hint}")


class SimulationModelError(Exception):
    """A simulated instrument's model failed (a chemistry model of a dry run raised, or answered with
    the wrong shape). Not a device fault: no cable is to blame and retrying gives the same answer, so
    drivers pass it through untouched and the engine stops the campaign with it."""


class NotConnected(DeviceError):
    """The port could not be opened, or the device was used before ``connect()``."""

    hint_default = (
        "Check that the port in the rig file exists (ls /dev/ttyUSB* /dev/serial/by-id/), that the "
        "cable is plugged in and that your user is in the 'dialout' group."
    )


class DeviceTimeout(DeviceError):
    """No (complete) reply within the time the operation allows."""

    hint_default = (
        "Check that the instrument is switched on, that the baud rate and address in the rig file "
        "match the instrument's set-up menu, and the cable."
    )


class ProtocolError(DeviceError):
    """A reply that cannot be parsed, or a command the firmware did not understand."""

    hint_default = (
        "Check that the driver named in the rig file matches the instrument model and firmware; "
        "electrical noise on a long RS-232 line can also garble replies."
    )


class OutOfRange(DeviceError):
    """A value outside what the instrument (or its syringe) accepts."""

    hint_default = (
        "Check the syringe diameter in the rig file and the protocol's bounds: the rate must lie "
        "within what this syringe on this pump can deliver."
    )


class DeviceAlarm(DeviceError):
    """The instrument raised an alarm; ``kind`` says which."""

    kind = "alarm"
    hint_default = "Check the instrument's display and clear the alarm before resuming."


class StallAlarm(DeviceAlarm):
    kind = "stall"
    hint_default = (
        "The pump motor stalled: check for an empty syringe, a closed valve, a blocked or kinked "
        "line, or a bubble; refill or clear it, then resume."
    )


class PowerResetAlarm(DeviceAlarm):
    kind = "reset"
    hint_default = (
        "The pump lost power and restarted: check its power supply; its rate and diameter were "
        "reset and will be set again on resume."
    )


class CommunicationsAlarm(DeviceAlarm):
    kind = "comms"
    hint_default = "The pump's safe-mode communications watchdog expired: check the cable and host load."


class SpectrometerError(DeviceError):
    hint_default = "Check the spectrometer's USB cable, the light source and the flow cell."


class NoDeviceFound(SpectrometerError):
    hint_default = (
        "No Ocean Insight spectrometer was found: check the USB cable, `lsusb` for vendor 2457, and "
        "install the udev rule (run `seabreeze_os_setup` once, or copy 10-oceanoptics.rules to "
        "/etc/udev/rules.d/ and run `udevadm control --reload-rules`). A spectrometer another program holds "
        "(OceanView, another sdl process) is not listed either: close that program."
    )


class UsbPermissionDenied(SpectrometerError):
    hint_default = (
        "USB permission denied: install the udev rule 10-oceanoptics.rules (run `seabreeze_os_setup` once) "
        "and re-plug the spectrometer, or add your user to the group the rule names."
    )


class DetectorSaturated(SpectrometerError):
    hint_default = "Lower the integration time or the lamp intensity; the reference must stay below saturation."


class LampOff(SpectrometerError):
    hint_default = "The reference is as dark as the dark spectrum: check that the lamp is on and the fibre seated."
