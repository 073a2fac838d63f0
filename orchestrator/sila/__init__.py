"""SiLA 2 for the rig: serve its pumps and spectrometer to other lab schedulers (``sdl sila serve``).

The client direction, instruments already served over SiLA 2 joining a rig, is ``drivers.sila``."""
