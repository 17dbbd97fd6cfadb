# SPDX-License-Identifier: GPL-3.0-or-later
"""`python -m engine align PAIRS.npz [MORE_SHARDS...] --out BUNDLE [--images DIR] ...`

Global alignment of pairwise pointmaps (engine.pairs_file) into a scene bundle: SIMPLE_PINHOLE cameras in the
photos' pixels, poses, a fused coloured point cloud, and per-image depth and confidence maps.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pairs", type=Path, nargs="+", help="pairs file (pairs.npz), or several shards of one")
    parser.add_argument("--out", type=Path, required=True, help="scene bundle folder to write")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder holding the photos by image name: colours for the point cloud (otherwise the "
                             "pairs file's stored images) and photo paths in the bundle")
    parser.add_argument("--known", type=Path, default=None,
                        help="scene bundle with known cameras for some or all images, matched by name")
    parser.add_argument("--fix", choices=("poses", "intrinsics", "both"), default="both",
                        help="what to hold fixed from --known (default: both)")
    parser.add_argument("--shared-intrinsics", action="store_true", help="one focal length for all images")
    parser.add_argument("--optimize-pp", action="store_true", help="optimise principal points (default: centred)")
    parser.add_argument("--iterations", type=int, default=300, help="optimisation steps (default 300)")
    parser.add_argument("--coarse-iterations", type=int, default=600,
                        help="steps on a coarser pixel sample first, which helps long chains of views (default 600)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    parser.add_argument("--schedule", choices=("cosine", "linear"), default="cosine")
    parser.add_argument("--min-conf", type=float, default=3.0,
                        help="confidence threshold for the point cloud and PnP (default 3)")
    parser.add_argument("--max-points", type=int, default=1 << 21,
                        help="pixel residuals the optimisation samples across all pairs (default 2^21)")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="point cloud voxel size in scene units (default: one pixel's footprint)")
    parser.add_argument("--disconnected", choices=("largest", "fail"), default="largest",
                        help="when the pair graph falls apart: align the largest group (with a warning) or fail")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ... (default auto)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")


def _known_cameras(args: argparse.Namespace, pairs_file, sizes: dict[int, tuple[int, int]], progress: Progress):
    """Known poses / intrinsics (pointmap pixels) from the --known bundle, by pairs-file image index, and the
    units the result inherits (the bundle's when its poses are used)."""
    from ..align.state import Known
    from ..bundle import read_bundle
    from ..errors import EngineError

    scene = read_bundle(args.known, check_files=False)
    index = {name: k for k, name in enumerate(pairs_file.names)}
    known = Known()
    matched = 0
    for image in scene.images:
        k = index.get(image.name)
        if k is None:
            continue
        matched += 1
        if args.fix in ("poses", "both"):
            known.poses[k] = image.cam_from_world
        if args.fix in ("intrinsics", "both"):
            cam = scene.camera_of(image)
            fx, fy, cx, cy, extra = cam.split()
            where = f"{args.known}: camera {cam.id} of image {image.name!r}"
            if (cam.width, cam.height) != sizes[k]:
                raise EngineError(f"{where} is {cam.width}x{cam.height} pixels but the photo is "
                                  f"{sizes[k][0]}x{sizes[k][1]}")
            ox, oy, sx, sy = pairs_file.pixel_map(k, sizes[k])
            if abs(fx / sx - fy / sy) > 1e-3 * fx / sx:
                raise EngineError(f"{where}: fx={fx} and fy={fy} do not give square pointmap pixels; the aligner's "
                                  f"cameras have one focal length")
            if any(abs(e) > 0 for e in extra):
                progress.log(f"{where}: lens distortion ({cam.model}) is ignored by the aligner", "warning")
            known.focals[k] = fx / sx
            known.principal_points[k] = (cx / sx - ox, cy / sy - oy)
    if not matched:
        raise EngineError(f"{args.known}: none of its images has a name found in the pairs file")
    progress.log(f"{matched} image(s) with known {args.fix if args.fix != 'both' else 'poses and intrinsics'}")
    return known, scene.units if known.poses else "unknown"


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    import torch

    from ..align.aligner import AlignOptions, align
    from ..align.scene import load_colours, original_size, write_align_bundle
    from ..bundle import SCENE_FILE
    from ..errors import EngineError
    from ..interop import check_replaceable, provenance
    from ..pairs_file import open_pairs

    out: Path = args.out.absolute()
    check_replaceable(out, SCENE_FILE, "a scene bundle")
    for name, value, least in (("--iterations", args.iterations, 1), ("--max-points", args.max_points, 1),
                               ("--coarse-iterations", args.coarse_iterations, 0)):
        if value < least:
            raise EngineError(f"{name} must be at least {least}, got {value}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise EngineError(f"--device {args.device}: not usable ({exc})") from None
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    with open_pairs(args.pairs) as pf:
        photos: dict[int, Path] = {}
        sizes = {k: original_size(pf, k) for k in range(pf.num_images)}
        if args.images is not None:
            import cv2

            if not args.images.is_dir():
                raise EngineError(f"--images {args.images}: folder not found")
            for k, name in enumerate(pf.names):
                photo = args.images / name
                if not photo.is_file():
                    raise EngineError(f"--images {args.images}: no photo {name!r} for image {k} of the pairs file")
                photos[k] = photo.absolute()
                if pf.original_sizes is None:  # the photos give the sizes
                    img = cv2.imread(str(photo), cv2.IMREAD_COLOR)
                    if img is None:
                        raise EngineError(f"{photo}: not a readable image")
                    sizes[k] = (img.shape[1], img.shape[0])

        def colours(k: int):
            if photos:
                return load_colours(photos[k], pf.width, pf.height, pf.pixel_map(k, sizes[k]), sizes[k])
            return pf.image(k) if pf.has_images else None

        if not photos and not pf.has_images:
            progress.log("no photos (--images) and no images in the pairs file: the point cloud will be grey")
        known, units = _known_cameras(args, pf, sizes, progress) if args.known is not None else (None, "unknown")
        options = AlignOptions(iterations=args.iterations, coarse_iterations=args.coarse_iterations, lr=args.lr, schedule=args.schedule,
                               shared_intrinsics=args.shared_intrinsics, optimize_pp=args.optimize_pp,
                               min_conf=args.min_conf, max_points=args.max_points, disconnected=args.disconnected,
                               device=device, voxel_size=args.voxel_size)
        result = align(pf, options, known, colours, progress)
        progress.stage("write bundle")
        bundle = write_align_bundle(result, pf, out, photos, sizes,
                                    provenance("align", args.pairs[0], loss=result.loss), units)
    return {"bundle": str(bundle), "images": len(result.images), "points": len(result.points),
            "loss": result.loss, "dropped": result.dropped}
