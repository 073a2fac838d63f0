"""Instruments without hardware: firmware emulators behind the serial seam, a seabreeze-compatible
spectrometer, chemistry models, the shared virtual world and fault injection.

Importing the package registers the ``sim://`` pyserial URL handler.
"""

from simulators.serialsim import install_url_handler

install_url_handler()
