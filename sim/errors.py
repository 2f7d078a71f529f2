"""Errors raised at dpqsim's boundaries (YAML files, CLI arguments, public functions)."""

from __future__ import annotations


class DpqsimError(Exception):
    """Base class of every error dpqsim raises on purpose."""


class ConfigError(DpqsimError, ValueError):
    """A configuration file or mapping holds a bad value.

    The message names the file, the dotted key, the value found and what was expected, e.g.
    ``hw_profiles/h100.yaml: memory.hbm_bandwidth_bytes_per_s = '3.35e12' (str): expected a number``.
    """

    def __init__(self, source: str, key: str, message: str):
        self.source = source
        self.key = key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


def describe_value(value: object) -> str:
    """``repr`` of a value with its Python type, for error messages."""
    return f"{value!r} ({type(value).__name__})"
