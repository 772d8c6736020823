"""Errors a user can act on, each reported by the CLI as one line.

``FedsecError`` means "the user asked for something invalid": exit code 2, before any
training. ``RunError`` means the run could not do its job (a wait that ran out, a
defense that never aggregated): exit code 1. Anything else is a bug and keeps its
traceback.
"""


class FedsecError(Exception):
    """Base class of the errors a user can fix (bad config, missing file, ...)."""


class ConfigError(FedsecError, ValueError):
    """An experiment config is invalid: unknown key or name, wrong type, bad value."""


class RunError(FedsecError):
    """A run could not do its job: clients that never connected, no round aggregated."""

    exit_code = 1


class DataError(FedsecError):
    """A data set cannot be loaded: a missing directory or file, or a malformed one."""
