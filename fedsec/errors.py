"""Errors that mean "the user asked for something invalid".

The CLI turns every ``FedsecError`` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


class FedsecError(Exception):
    """Base class of the errors a user can fix (bad config, missing file, ...)."""


class ConfigError(FedsecError, ValueError):
    """An experiment config is invalid: unknown key or name, wrong type, bad value."""


class DataError(FedsecError):
    """A data set cannot be loaded: a missing directory or file, or a malformed one."""
