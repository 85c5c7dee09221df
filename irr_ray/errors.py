"""Typed errors. The CLI turns any `IrrRayError` into one line on stderr and exit code 2."""

from __future__ import annotations


class IrrRayError(Exception):
    """Base class for errors a user can act on (bad input, bad config, missing files)."""


class ConfigError(IrrRayError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class DataValidationError(IrrRayError):
    """An input data file has missing columns, wrong types or unknown label values."""


class UnsupportedArchitectureError(IrrRayError):
    """The model's module layout is not one irr-ray knows how to hook."""
