"""Progress reporting for engine commands.

Two renderings of the same events:
  * "tty": tqdm progress bars and messages on stderr, for people at a terminal;
  * "jsonl": one JSON object per line on stdout, for the Blender job runner (jobs/runner.py).

JSON-lines protocol (every line has "event"):
  {"event": "stage", "name": str, "total": int | null}      a new stage starts
  {"event": "progress", "name": str, "done": int, "total": int | null, "message": str | null}
  {"event": "log", "level": "info" | "warning", "message": str}
  {"event": "result", "result": {...}}                       last line of a successful command
  {"event": "error", "kind": str, "message": str}            last line of a failed command
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Progress:
    """Stage/step reporter. `stage()` starts a stage, `advance()` moves it, `log()` says something."""

    def __init__(self, mode: str = "tty", stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        if mode not in ("tty", "jsonl", "none"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "jsonl" else sys.stderr)
        self.min_interval = min_interval
        self._bar = None
        self._name = ""
        self._done = 0
        self._total: int | None = None
        self._last_emit = 0.0

    def _emit(self, **event: Any) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def stage(self, name: str, total: int | None = None) -> None:
        self.close()
        self._name, self._done, self._total = name, 0, total
        if self.mode == "jsonl":
            self._emit(event="stage", name=name, total=total)
        elif self.mode == "tty":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, file=self.stream, leave=True, dynamic_ncols=True)

    def advance(self, n: int = 1, message: str | None = None) -> None:
        self._done += n
        if self.mode == "jsonl":
            now = time.monotonic()
            finished = self._total is not None and self._done >= self._total
            if finished or now - self._last_emit >= self.min_interval:
                self._last_emit = now
                self._emit(event="progress", name=self._name, done=self._done, total=self._total, message=message)
        elif self._bar is not None:
            self._bar.update(n)
            if message:
                self._bar.set_postfix_str(message, refresh=False)

    def log(self, message: str, level: str = "info") -> None:
        if self.mode == "jsonl":
            self._emit(event="log", level=level, message=message)
        elif self.mode == "tty":
            text = message if level == "info" else f"{level}: {message}"
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream)

    def result(self, result: dict[str, Any]) -> None:
        self.close()
        if self.mode == "jsonl":
            self._emit(event="result", result=result)

    def error(self, kind: str, message: str) -> None:
        self.close()
        if self.mode == "jsonl":
            self._emit(event="error", kind=kind, message=message)
        else:
            print(f"error: {message}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
