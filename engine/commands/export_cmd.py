"""`python -m engine export BUNDLE --format colmap|nerfstudio --out PATH [--binary]`.

PATH is a folder, written atomically:
  colmap:     sparse/0/ (cameras, images, points3D, rigs, frames; text, or binary with --binary) and images/
  nerfstudio: transforms.json, images/ and points.ply
Photos are hard-linked (or copied) into images/, so the folder is a dataset COLMAP, nerfstudio and gsplat open
as is. An existing PATH is replaced only if it is empty or an earlier export (it holds unposed_export.json).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="scene bundle folder (or its scene.json)")
    parser.add_argument("--format", choices=("colmap", "nerfstudio"), required=True, help="what to write")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--binary", action="store_true", help="COLMAP binary model instead of text")


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from ..atomic import atomic_dir
    from ..bundle import read_bundle
    from ..interop import EXPORT_MARKER, InteropError, check_replaceable, colmap, nerfstudio, provenance

    if args.binary and args.format != "colmap":
        raise InteropError("--binary applies to --format colmap only")
    out: Path = args.out.absolute()
    check_replaceable(out, EXPORT_MARKER, "an earlier export")
    progress.stage("read bundle")
    scene = read_bundle(args.bundle)
    with atomic_dir(out) as stage:
        if args.format == "colmap":
            photos = colmap.write_project(scene, stage, args.binary, progress)
        else:
            photos = nerfstudio.write_transforms(scene, stage, progress)
        record = provenance("export", args.bundle, format=args.format, binary=bool(args.binary),
                            bundle_provenance=scene.provenance)
        (stage / EXPORT_MARKER).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return {"out": str(out), "format": args.format, "images": len(scene.images), "cameras": len(scene.cameras),
            "points": 0 if scene.points is None else len(scene.points), "photos": photos}
