"""The errors a user can cause, each with the exit status the ``mmssl`` command gives it.

Everything a user can cause — a bad flag or key, a missing or malformed file, a full disk, a
run directory that does not fit the command, a diverging run, Ctrl-C — is raised as an
:class:`MmsslError` whose message names the input and what was expected. The command prints
the message (never a traceback) and exits with :attr:`MmsslError.exit_code`: 2 for bad input,
1 for a run that failed on its own (it diverged), 130 for an interruption (the shell's code for
SIGINT). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MmsslError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 2


class ConfigError(MmsslError, ValueError):
    """A configuration that cannot describe a run; the message names the key or flag."""


class RunDirError(MmsslError):
    """A run or sweep directory that does not fit the requested action."""


class DataError(MmsslError, ValueError):
    """Input data that cannot be read or used (the message names the file, row or field)."""


class CheckpointError(MmsslError):
    """A checkpoint that is missing, corrupt, truncated or not an mmssl checkpoint."""


class DiskFullError(MmsslError, OSError):
    """No space left on a device while writing; says where, how much was needed and is free."""


class WriteError(MmsslError, OSError):
    """A file or folder that cannot be written (read-only, a file in the way, no permission)."""


class TrainingDiverged(MmsslError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1


class RunInterrupted(MmsslError):
    """The user pressed Ctrl-C (SIGINT); the message says how to continue."""

    exit_code = 130
