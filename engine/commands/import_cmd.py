"""`python -m engine import PATH --out BUNDLE [--images DIR]`: a COLMAP model or transforms.json as a scene bundle.

PATH is a COLMAP project folder (`images/` + `sparse/0/`), a COLMAP model folder (text or binary), a nerfstudio
`transforms.json`, or a folder holding one. Photos stay where they are; the bundle refers to them.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="COLMAP project or model folder, or a nerfstudio transforms.json")
    parser.add_argument("--out", type=Path, required=True, help="scene bundle folder to write")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder holding the photos, by image name (default: the project's images/ folder, or "
                             "the transforms.json file paths)")


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from ..bundle import SCENE_FILE, write_bundle
    from ..interop import InteropError, check_replaceable, colmap, nerfstudio, provenance

    source: Path = args.path
    out: Path = args.out.absolute()
    check_replaceable(out, SCENE_FILE, "a scene bundle")
    if args.images is not None and not args.images.is_dir():
        raise InteropError(f"--images {args.images}: folder not found")
    if not source.exists():
        raise InteropError(f"{source}: not found")
    progress.stage("read")
    json_path = source if source.is_file() else source / nerfstudio.TRANSFORMS_FILE
    if json_path.is_file():
        fmt = "nerfstudio"
        progress.log(f"reading nerfstudio {json_path}")
        scene = nerfstudio.read_transforms(json_path, args.images, progress)
    else:
        fmt = "colmap"
        try:
            model_dir, images_dir = colmap.locate(source)
        except InteropError as exc:
            raise InteropError(f"{exc}; nor is there a {nerfstudio.TRANSFORMS_FILE}") from None
        images_dir = args.images if args.images is not None else images_dir
        if images_dir is None:
            progress.log(f"no images/ folder found near {model_dir}; the bundle will have cameras but no photos "
                         f"(use --images DIR)", level="warning")
        progress.log(f"reading COLMAP model {model_dir}" + (f" with photos from {images_dir}" if images_dir else ""))
        scene = colmap.read_model(model_dir, images_dir, progress)
    scene.provenance = provenance("import", source, source_format=fmt)
    progress.stage("write bundle")
    write_bundle(scene, out)
    return {"bundle": str(out), "format": fmt, "images": len(scene.images), "cameras": len(scene.cameras),
            "points": 0 if scene.points is None else len(scene.points)}
