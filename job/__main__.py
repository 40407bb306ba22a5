# Signals first: a SIGTERM or Ctrl-C from the very start ends in exit 75 and one line, not in
# Python's default exit 143 halfway through importing torch.
from job.stopping import stop_before_work

stop_before_work()

from job.cli import main  # noqa: E402

main()
