"""`python -m engine undistort BUNDLE --out DIR [--hfov DEG] [--size WxH]`: the bundle as perspective photos.

Every camera becomes a PINHOLE camera and every photo is resampled through the original lens (`engine.undistort`),
what COLMAP's image_undistorter gives tools that only take pinhole cameras. Poses, points and image names are kept;
pixels the lens does not see are black. The output bundle is written atomically.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import EngineError
from ..progress import Progress


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 1920x1080), got {text!r}") from None
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="scene bundle folder (or its scene.json) with photos")
    parser.add_argument("--out", type=Path, required=True, help="folder of the perspective bundle to write")
    parser.add_argument("--hfov", type=float, default=None,
                        help="horizontal field of view in degrees (default: what the lens sees across its centre, "
                             "at most 120)")
    parser.add_argument("--size", type=_size, default=None, help="output photo size WIDTHxHEIGHT (default: keeps "
                                                                 "the lens's focal at the image centre)")


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from ..bundle import read_bundle
    from ..undistort import undistort_scene

    if args.out.resolve() == (args.bundle.parent if args.bundle.name == "scene.json" else args.bundle).resolve():
        raise EngineError(f"--out {args.out} is the input bundle; write the perspective bundle elsewhere")
    progress.stage("undistort")
    out = undistort_scene(args.bundle, args.out, hfov_deg=args.hfov, size=args.size)
    scene = read_bundle(out)
    return {"out": str(out), "images": len(scene.images),
            "cameras": {cam.id: [cam.width, cam.height, *cam.params] for cam in scene.cameras.values()}}
