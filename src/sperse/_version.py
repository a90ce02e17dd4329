"""The version of sperse (one place: the package, the server and the client all read it)."""

__version__ = "0.1.0"
