# Signals first: a SIGTERM or Ctrl-C from the very start ends in exit 75 and one line, not in
# Python's default exit 143 halfway through importing torch.
import sys

from job.errors import Stopped
from job.stopping import stop_before_work

stop_before_work()
try:
    from job.cli import main
except Stopped as e:  # while the command line's modules were loading
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
main()
