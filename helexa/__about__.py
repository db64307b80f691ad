"""The package version, in one place (hatch reads it at build time)."""

__version__ = "0.1.0"
