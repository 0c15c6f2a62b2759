"""Errors that reach the user as one line.

Every problem caused by the user's input (a config key, a file, a dataset layout, a checkpoint)
raises a subclass of `UdasegError` whose message names the key or file and says what is wrong.
The CLI prints that message on one line and exits with status 2; a plain traceback means a bug
in udaseg, not in the input.
"""


class UdasegError(Exception):
    """Base class: the message is shown to the user as is, on one line."""


class ConfigError(UdasegError):
    """A config file or override is malformed, unknown or out of range."""


class DataError(UdasegError):
    """A dataset root, image, label or mapping file is missing, unreadable or inconsistent."""


class CheckpointError(UdasegError):
    """A checkpoint or weights file cannot be read or does not fit the model."""


class OutputError(UdasegError):
    """An output file or folder cannot be written (exists, is a file, read-only, disk full)."""
