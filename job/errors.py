"""How a command ends, and with which exit code: the contract with cron and restart policies.

0 finished (or already finished); 75 stopped on purpose (a signal, the time window): start it
again later and it resumes; 1 failed; 2 bad usage, settings or data; 130 a second Ctrl-C that
would not wait. Each kind of ending that a person should read as one line has its type here, and
job/cli.py turns them into that line and the code, in one place. Anything else is a bug, and keeps
its traceback (exit 1).
"""

from __future__ import annotations

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 75, 130


class UserError(Exception):
    """Something the user can put right; the message names what is wrong and what would be right."""
    exit_code = EXIT_USAGE


class ConfigError(UserError):
    """A setting is wrong; the message names the setting and its allowed values."""


class Failure(Exception):
    """The run could not go on (a full disk, training that diverged); the message says what
    happened, what is still safe on disk, and what to try."""
    exit_code = EXIT_FAILED


class Stopped(Exception):
    """Stopped on purpose before there was anything to checkpoint; starting again resumes."""
    exit_code = EXIT_STOPPED


ENDINGS = (UserError, Failure, Stopped)  # what job/cli.py prints as one line
