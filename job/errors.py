"""How a command ends, and with which exit code: the contract with cron and restart policies.

0 finished (or already finished); 75 stopped on purpose with a checkpoint (a signal, the time
window): start it again later; 1 failed; 2 bad usage, settings or data. Anything the user can fix
is a `UserError`: the command line prints its message as one line and exits 2, in one place
(job/cli.py). Everything else is a failure, and keeps its traceback.
"""

from __future__ import annotations

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 75


class UserError(Exception):
    """Something the user can put right; the message names what is wrong and what would be right."""


class ConfigError(UserError):
    """A setting is wrong; the message names the setting and its allowed values."""
