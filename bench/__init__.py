# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmarks: `python -m bench [NAME ...] [--record]` runs bench/bench_*.py (all by default).

Each benchmark module has `run() -> Report`. A report becomes one Markdown section of bench/RESULTS.md, keyed by
the module name: `--record` replaces that section (or appends it) and leaves the other benchmarks' sections alone.
"""
from __future__ import annotations

import datetime
import importlib
import importlib.util
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ADDON_PACKAGE = "unposed_bench"


@dataclass
class Row:
    what: str
    seconds: float  # median over the repeats
    target: float | None = None  # seconds; None when there is no target

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "ok" if self.seconds < self.target else "SLOW"


@dataclass
class Report:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def median_time(fn: Callable[[], object], repeats: int = 3, setup: Callable[[], object] | None = None) -> float:
    """Median wall time of `fn()` over `repeats` runs, `setup()` (untimed) before each."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_addon(*modules: str):
    """The add-on package (this repository) imported under its own name, with `modules` (e.g. "bridge.pointcloud")
    imported too; for benchmarks that need bpy but no UI."""
    if ADDON_PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(ADDON_PACKAGE, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[ADDON_PACKAGE] = package
        spec.loader.exec_module(package)
    for name in modules:
        importlib.import_module(f"{ADDON_PACKAGE}.{name}")
    return sys.modules[ADDON_PACKAGE]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores available, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def render(name: str, report: Report, command: str) -> str:
    """The Markdown section for one benchmark run."""
    lines = [f"## {name}: {report.title}", "",
             f"- machine: {machine()}",
             f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- command: `{command}`", "",
             "| what | seconds (median) | target | |", "|---|---:|---:|---|"]
    for row in report.rows:
        target = "" if row.target is None else f"< {row.target:g}"
        lines.append(f"| {row.what} | {row.seconds:.3f} | {target} | {row.verdict} |")
    lines += [""] + [f"{note}" for note in report.notes] + ([""] if report.notes else [])
    return "\n".join(lines)


def record(name: str, section: str, path: Path = RESULTS) -> None:
    """Put `section` into RESULTS.md in place of this benchmark's previous section (or at the end)."""
    from engine.atomic import atomic_file

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(rf"^## {re.escape(name)}:.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    with atomic_file(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
