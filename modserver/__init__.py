"""modserver: a lab hardware server."""

__version__ = "0.1.0"
