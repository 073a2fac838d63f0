"""The console's HTTP routes, one module per concern; each exposes ``router``."""
