"""pyserial URL handlers of the simulators (``sim://``)."""
