"""`python -m scenegen --out DIR [--kind room|object] [--views N] [--width W] [--height H] ...`"""
from __future__ import annotations

import argparse
import sys
import time

from .rigs import RIGS
from .scenes import BUILDERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenegen",
                                     description="Render a procedural scene and write its ground-truth bundle")
    parser.add_argument("--out", required=True, help="bundle folder to write (replaced if it exists)")
    parser.add_argument("--kind", choices=sorted(BUILDERS), default="room")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--model", default="PINHOLE", help="COLMAP camera model name (e.g. PINHOLE, OPENCV_FISHEYE)")
    parser.add_argument("--hfov", type=float, default=60.0, help="horizontal field of view, degrees")
    parser.add_argument("--rig", choices=RIGS, default="orbit")
    parser.add_argument("--arc", type=float, default=360.0, help="degrees of the camera ring to use")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel")
    parser.add_argument("--points", type=int, default=40000, help="surface samples before visibility")
    parser.add_argument("--depth", action="store_true", help="also write per-view depth maps (.npy)")
    parser.add_argument("--grain", type=float, default=0.0,
                        help="strength (0-1) of fine texture added to every surface (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import bpy

    from .addon import module
    from .generate import generate

    errors = module("engine.errors")  # enables the add-on (isolated from the user's settings, see addon.py)
    bpy.ops.wm.read_homefile(use_empty=True)
    start = time.monotonic()
    try:
        out = generate(args.out, kind=args.kind, n_views=args.views, width=args.width, height=args.height,
                       seed=args.seed, model=args.model, hfov_deg=args.hfov, rig=args.rig, arc_deg=args.arc,
                       samples=args.samples, n_points=args.points, save_depth=args.depth, grain=args.grain)
    except (ValueError, errors.EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
