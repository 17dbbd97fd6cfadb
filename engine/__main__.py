import signal
import sys

from .cli import main

# Jobs are cancelled with SIGINT (jobs/runner.py). A process started in the background of a non-interactive shell
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: restore it, so cancel always works.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main())
