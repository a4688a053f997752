"""skiffyd: a headless Matrix client daemon."""

__version__ = "0.1.0"
