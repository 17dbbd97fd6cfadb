"""The engine process keeps its stdout for the JSON-lines protocol: what native libraries print to file descriptor
1 goes to stderr."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

NOISY_ENGINE = """
import os, runpy, sys
import engine.cli as cli
plain = cli.main
def noisy(*args, **kwargs):
    os.write(1, b"BLAS : Bad memory unallocation!\\n")  # what OpenBLAS printed from a COLMAP thread
    return plain(*args, **kwargs)
cli.main = noisy
sys.argv = ["engine", "--progress", "jsonl", "import", "/nonexistent/folder", "--out", "unused"]
runpy.run_module("engine", run_name="__main__")
"""


def test_native_writes_to_stdout_do_not_break_the_protocol():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", NOISY_ENGINE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is JSON
    assert events[-1]["event"] == "error" and "/nonexistent/folder" in events[-1]["message"]
    assert "BLAS : Bad memory unallocation!" in proc.stderr
