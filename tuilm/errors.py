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


# What to do about each OS error a path the user named can raise; anything else is a bug and keeps its traceback.
_OS_REMEDIES = {
    "ENAMETOOLONG": "a name in the path is longer than the filesystem allows (255 bytes); use a shorter name",
    "EISDIR": "it is a directory; name a file",
    "ENOTDIR": "a part of the path is a file, not a directory; fix the path",
    "EACCES": "permission denied; choose a path you may use, or change its permissions",
    "EPERM": "operation not permitted; choose a path you may use",
    "ENOSPC": "the disk is full; free space or choose another path",
    "EDQUOT": "the disk quota is used up; free space or choose another path",
    "EROFS": "the filesystem is read-only; choose a writable path",
    "ELOOP": "too many symbolic links; fix the link",
    "ENOENT": "no such file or directory; check the path",
    "EEXIST": "it exists already; choose another path or remove it",
    "ENOTEMPTY": "the directory is not empty; choose another path",
}


def os_error_line(error: OSError) -> str | None:
    """The one line for an OS error on a path a user named (None for one tuilm cannot explain): the path,
    shortened, and what to do. The one place these become messages, so every command says the same."""
    import errno
    import os

    name = errno.errorcode.get(error.errno or -1)
    if name not in _OS_REMEDIES:
        return None
    path = error.filename if error.filename is not None else error.filename2
    if path is None:
        return f"{error.strerror or name}: {_OS_REMEDIES[name]}"
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a name that is not UTF-8 stays printable
    if len(text) > 120:
        text = text[:60] + "..." + text[-40:]
    return f"{text}: {_OS_REMEDIES[name]}"
