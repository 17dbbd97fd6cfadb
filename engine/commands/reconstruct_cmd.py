# SPDX-License-Identifier: GPL-3.0-or-later
"""`python -m engine reconstruct (--images DIR_OR_FILES... | --video FILE) --out BUNDLE [--backend ...]`

Unposed photos (or a video's frames) to a scene bundle: cameras, poses and points (engine.reconstruct).
--backend auto uses the pointmap network when its weights are on this machine and COLMAP otherwise.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH",
                        help="photo files and/or folders (a folder's images in name order)")
    source.add_argument("--video", type=Path, metavar="FILE", help="a video: reconstruct from its frames")
    parser.add_argument("--out", type=Path, required=True, help="scene bundle folder to write")
    parser.add_argument("--backend", choices=("auto", "colmap", "pointmap"), default="auto",
                        help="pointmap (network, dense points), colmap (no weights, sparse points) or auto: "
                             "pointmap when its weights are found, else colmap (default)")
    parser.add_argument("--weights", metavar="PATH_OR_ID",
                        help="pointmap weights: .pth, a folder with config.json + model.safetensors, or a Hugging "
                             "Face id in the local cache (default: DUSt3R_ViTLarge_BaseDecoder_512_dpt)")
    parser.add_argument("--graph", default="auto",
                        help="image pairs to match: auto (complete for small photo sets, sequential for videos and "
                             "large sets), complete, sequential, or swin-K, logwin-K, oneref-K")
    parser.add_argument("--frame-step", type=int, default=1, help="use every N-th image or frame (default 1)")
    parser.add_argument("--frame-range", type=int, nargs=2, metavar=("FIRST", "LAST"),
                        help="video frames to use, 1-based and inclusive (default: all)")
    pointmap = parser.add_argument_group("pointmap backend")
    pointmap.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda")
    pointmap.add_argument("--iterations", type=int, default=300, help="global alignment steps (default 300)")
    colmap = parser.add_argument_group("colmap backend")
    colmap.add_argument("--camera-model", default="SIMPLE_RADIAL",
                        help="COLMAP camera model, one per folder of same-size photos (default SIMPLE_RADIAL)")
    colmap.add_argument("--max-image-size", type=int, default=3200,
                        help="longest side features are extracted at, in pixels (default 3200)")
    colmap.add_argument("--min-registered", type=float, default=0.5,
                        help="fail unless at least this fraction of the photos register (default 0.5)")
    colmap.add_argument("--threads", type=int, default=0, help="CPU threads (default: all available)")


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from ..errors import EngineError
    from ..reconstruct.colmap_backend import ColmapOptions
    from ..reconstruct.pipeline import Input, ReconstructOptions, reconstruct

    first, last = args.frame_range or (1, None)
    if args.frame_range and args.video is None:
        raise EngineError("--frame-range applies to --video only (use --frame-step with --images)")
    colmap = ColmapOptions(camera_model=args.camera_model, max_image_size=args.max_image_size,
                           min_registered=args.min_registered, threads=args.threads)
    options = ReconstructOptions(backend=args.backend, weights=args.weights, graph=args.graph, device=args.device,
                                 iterations=args.iterations, colmap=colmap)
    source = Input(images=args.images or (), video=args.video, step=args.frame_step, first_frame=first,
                   last_frame=last)
    return reconstruct(source, args.out, options, progress)
