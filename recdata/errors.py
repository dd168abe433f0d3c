"""Errors that FloRec reports to users as one line naming the problem and the fix."""

from __future__ import annotations


class FloRecError(Exception):
    """Base class: the message is one line that names the problem and the fix."""


class ConfigError(FloRecError, ValueError):
    """A run-config or CLI value is unknown or out of range."""


class DataError(FloRecError):
    """A dataset is unknown, missing, corrupt or fails its checksum."""
