"""Run an engine command in a subprocess and follow it through the JSON-lines protocol (engine/progress.py).

`EngineJob` starts any command line in its own process group, reads its stdout line by line on a thread
(JSON events; other lines become "log" events), keeps the end of its stderr for error messages, and can be
cancelled: SIGINT to the whole group (the engine exits with status 130 after cleaning up its staging folders),
then SIGKILL after a grace period. `run_engine()` runs `python -m engine --progress jsonl ...` synchronously.

No bpy here: Blender-side code (operators/job.py) drives these objects from a modal timer or a blocking loop.
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

# The add-on root: the folder holding engine/. Engine commands run with it as working directory, so
# `-m engine` finds this copy of the engine whatever else is on the interpreter's path.
ADDON_ROOT = Path(__file__).resolve().parents[1]

STDERR_TAIL_LINES = 40
STDERR_LINE_CHARS = 2000  # the tail stays bounded even when one line is huge
CANCEL_GRACE_S = 1.5
# After the process exits, its stdout can stay open if it left a child behind; stop waiting for EOF then.
EOF_GRACE_S = 3.0

Event = dict[str, Any]

_live_jobs: set["EngineJob"] = set()  # started and not yet seen to exit: killed if Blender quits first


class JobError(Exception):
    """The command failed. `str()` is the engine's error message, or the end of stderr after a crash."""

    def __init__(self, message: str, kind: str = "", returncode: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class JobCancelled(Exception):
    """The command was cancelled (by `EngineJob.cancel()` or the engine reporting a cancellation)."""


def engine_command(args: Sequence[str], python: str | os.PathLike | None = None) -> list[str]:
    """The command line `PYTHON -m engine --progress jsonl ARGS...` (run it with cwd=ADDON_ROOT)."""
    return [str(python or sys.executable), "-m", "engine", "--progress", "jsonl", *map(str, args)]


class EngineJob:
    """One subprocess speaking the JSON-lines protocol. Not thread-safe: drive it from one thread."""

    def __init__(self, grace: float = CANCEL_GRACE_S) -> None:
        self.grace = grace
        self.result: dict[str, Any] | None = None
        self.error: Event | None = None
        self.last_log = ""
        self._proc: subprocess.Popen | None = None
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._threads: list[threading.Thread] = []
        self._cancel_requested = False
        self._exited_at: float | None = None
        self._stage = ""
        self._done = 0
        self._total: int | None = None
        self._message = ""

    # -- starting -------------------------------------------------------------------------------------------
    def start(self, argv: Sequence[str], *, cwd: str | os.PathLike | None = ADDON_ROOT,
              env: dict[str, str] | None = None) -> None:
        """Start `argv` (a full command line) with `env` added to this process's environment."""
        if self._proc is not None:
            raise RuntimeError("this job has already been started")
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **(env or {})}
        group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
                 else {"start_new_session": True})
        try:
            self._proc = subprocess.Popen(
                [str(a) for a in argv], cwd=cwd, env=child_env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace", **group)
        except OSError as exc:
            raise JobError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        _live_jobs.add(self)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True, name="engine-job-stdout"),
                         threading.Thread(target=self._read_stderr, daemon=True, name="engine-job-stderr")]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not (isinstance(event, dict) and isinstance(event.get("event"), str)):
                event = {"event": "log", "level": "info", "message": line}
            self._events.put(event)
        self._proc.stdout.close()

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip("\r\n")[-STDERR_LINE_CHARS:])
        self._proc.stderr.close()

    # -- following ------------------------------------------------------------------------------------------
    def poll(self) -> list[Event]:
        """Events received since the last call, in order; the job's state follows them."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            self._apply(event)
            events.append(event)

    def _apply(self, event: Event) -> None:
        kind = event["event"]
        if kind == "stage":
            self._stage, self._done, self._total, self._message = str(event.get("name", "")), 0, event.get("total"), ""
        elif kind == "progress":
            self._done, self._total = event.get("done", self._done), event.get("total", self._total)
            self._message = event.get("message") or self._message
        elif kind == "log":
            self.last_log = str(event.get("message", ""))
        elif kind == "result":
            self.result = event.get("result") if isinstance(event.get("result"), dict) else {}
        elif kind == "error":
            self.error = event

    @property
    def progress(self) -> tuple[float, str]:
        """(fraction of the current stage in 0..1, or 0 when its length is unknown; a one-line description)."""
        fraction = 0.0
        text = self._stage
        if isinstance(self._total, (int, float)) and self._total > 0:
            fraction = min(1.0, max(0.0, self._done / self._total))
            text = f"{text} {self._done}/{self._total}"
        if self._message:
            text = f"{text}: {self._message}" if text else self._message
        return fraction, text

    @property
    def running(self) -> bool:
        return self._proc is not None and not self.finished

    @property
    def finished(self) -> bool:
        """The process has exited and its output has been read (events may still wait in `poll()`)."""
        if self._proc is None or self._proc.poll() is None:
            return False
        if self._exited_at is None:
            self._exited_at = time.monotonic()
            _live_jobs.discard(self)
        return not self._threads[0].is_alive() or time.monotonic() - self._exited_at > EOF_GRACE_S

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def wait(self, timeout: float | None = None, *, on_event: Callable[[Event], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Block until the job ends and return its result, or raise JobError / JobCancelled.

        `on_event` sees every event in order; `cancel()` is asked every 50 ms and cancels the job once it
        returns True. TimeoutError leaves the job running.
        """
        if self._proc is None:
            raise RuntimeError("this job has not been started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = self.finished  # read before draining, so no event can arrive after the last drain
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if finished:
                break
            if cancel is not None and cancel():
                self.cancel()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the job is still running after {timeout} s")
            self._threads[0].join(0.05)  # short sleeps keep Ctrl+C (KeyboardInterrupt) responsive
        self._threads[1].join(1.0)
        return self._outcome()

    def _outcome(self) -> dict[str, Any]:
        code = self._proc.returncode
        error_kind = (self.error or {}).get("kind", "")
        if self._cancel_requested or code == 130 or error_kind == "cancelled":
            raise JobCancelled((self.error or {}).get("message") or "cancelled")
        tail = self.stderr_tail
        if self.error is not None:
            raise JobError(str(self.error.get("message") or error_kind or "the engine reported an error"),
                           kind=error_kind, returncode=code, stderr_tail=tail)
        if code != 0:
            why = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise JobError(f"the engine process {why}" + (f":\n{tail}" if tail else " and printed nothing"),
                           kind="crash", returncode=code, stderr_tail=tail)
        if self.result is None:
            raise JobError("the engine process ended without a result" + (f":\n{tail}" if tail else ""),
                           kind="crash", returncode=code, stderr_tail=tail)
        return self.result

    # -- cancelling -----------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the whole process group to stop and return at once; it is killed if still there after `grace`."""
        if self._proc is None or self._proc.poll() is not None or self._cancel_requested:
            return
        self._cancel_requested = True
        self._signal_group(interrupt=True)
        threading.Thread(target=self._kill_after_grace, daemon=True, name="engine-job-cancel").start()

    def _kill_after_grace(self) -> None:
        try:
            self._proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            pass
        # Also sweeps up children the leader left behind in its group when it exited on the interrupt.
        self._signal_group(interrupt=False)

    def _signal_group(self, interrupt: bool) -> None:
        pid = self._proc.pid
        try:
            if os.name == "nt":
                if interrupt:
                    os.kill(pid, signal.CTRL_BREAK_EVENT)
                else:
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
            else:
                os.killpg(pid, signal.SIGINT if interrupt else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone


def run_engine(argv: Sequence[str], *, python: str | os.PathLike | None = None,
               on_event: Callable[[Event], None] | None = None, cancel: Callable[[], bool] | None = None,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m engine --progress jsonl ARGV...` to the end and return its result.

    `python` defaults to this interpreter; `on_event` and `cancel` as in `EngineJob.wait()`; `env` is added
    to the environment. Raises JobError or JobCancelled.
    """
    job = EngineJob()
    job.start(engine_command(argv, python), env=env)
    try:
        return job.wait(on_event=on_event, cancel=cancel)
    except (JobError, JobCancelled):
        raise
    except BaseException:  # KeyboardInterrupt, or an exception from on_event: the process must not outlive us
        job.cancel()
        raise


@atexit.register
def _kill_live_jobs() -> None:
    """Blender is quitting: no engine process outlives it."""
    for job in list(_live_jobs):
        if job._proc.poll() is None:
            job._signal_group(interrupt=False)
