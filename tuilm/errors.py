"""Errors a user can act on.

Anything raised as a `TuilmError` reaches the terminal as one line on stderr and exit code 2, never as a
traceback: the message must say what is wrong and, where it can, how to fix it.
"""


class TuilmError(Exception):
    """A problem with the user's input (path, config, checkpoint) rather than a bug in tuilm."""

    exit_code = 2


class ConfigError(TuilmError):
    """An impossible or unknown configuration value."""


class DataError(TuilmError):
    """Missing, empty, binary or unusable training data."""


class CheckpointError(TuilmError):
    """A checkpoint that is missing, corrupt, foreign or unsafe to load."""


def print_error(message: str) -> None:
    """One red `error:` line on stderr, the way every command reports a problem."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("error: ", "bold red"), message))
