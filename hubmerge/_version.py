"""The package version, in its own room so that modules can import it without the package top."""

__version__ = "0.1.0"
