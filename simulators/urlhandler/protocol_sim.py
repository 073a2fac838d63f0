"""pyserial looks up ``protocol_<scheme>.Serial``; this one opens the firmware emulators."""

from simulators.serialsim import SimSerial as Serial

__all__ = ["Serial"]
