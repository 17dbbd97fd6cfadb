# SPDX-License-Identifier: GPL-3.0-or-later
"""`python -m bench [NAME ...] [--record]`: run benchmarks (bench/bench_NAME.py; all when none is named)."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from . import ROOT, record, render


def main(argv: list[str] | None = None) -> int:
    available = sorted(p.stem[len("bench_"):] for p in Path(__file__).parent.glob("bench_*.py"))
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all: {', '.join(available)})")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available)}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    slow = False
    for name in args.names or available:
        module = importlib.import_module(f".bench_{name}", __package__)
        report = module.run()
        section = render(f"bench_{name}", report, f"python -m bench {name}")
        print(section, flush=True)
        slow |= any(row.verdict == "SLOW" for row in report.rows)
        if args.record:
            record(f"bench_{name}", section)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
