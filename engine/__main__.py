import os
import signal
import sys

from .cli import main

# Jobs are cancelled with SIGINT (jobs/runner.py). A process started in the background of a non-interactive shell
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: restore it, so cancel always works.
signal.signal(signal.SIGINT, signal.default_int_handler)
# stdout carries the JSON-lines protocol: Python's sys.stdout keeps the real stdout, while file descriptor 1 (what
# native libraries print to, e.g. OpenBLAS warnings from COLMAP's threads) now goes to stderr.
sys.stdout.flush()
sys.stdout = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
sys.exit(main())
