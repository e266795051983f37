"""Errors users can act on.

Every error agentsleep raises on purpose is an `AgentsleepError` whose message
is one line saying what failed, why, and what to do about it. The CLI prints
that line and exits non-zero; it never shows a traceback for these.
"""
from __future__ import annotations


class AgentsleepError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = 1


class ConfigError(AgentsleepError):
    """The configuration file or an environment override is invalid."""

    exit_code = 2


class InputError(AgentsleepError):
    """Bad input from the caller (empty text, unknown id, wrong kind...)."""

    exit_code = 2


class HomeError(AgentsleepError):
    """The agent home cannot be created, read or written."""


class StoreLockedError(AgentsleepError):
    """Another process is already writing to this embedded episode store."""


class SleepLockedError(AgentsleepError):
    """Another sleep is already running for this home."""


class ModelError(AgentsleepError):
    """A model cannot be found, materialised or loaded."""


class RegistryError(AgentsleepError):
    """The model registry has no such version or is inconsistent."""


class StoreUnavailableError(AgentsleepError):
    """The episode store (for example a Chroma server) cannot be reached."""


class SleepError(AgentsleepError):
    """A sleep stage failed for a reason other than bad input (for example its training workers)."""
