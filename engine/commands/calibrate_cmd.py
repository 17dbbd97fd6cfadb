"""`python -m engine calibrate IMAGE... [--method auto|exif|vp|dmcalib] [--weights W] [--json OUT]`.

Calibrates each photo on its own (see `engine.calibrate.auto` for how `auto` chooses) and writes a JSON array, one
object per image in input order: image (the path as given), width, height, model, params (COLMAP order, original
pixels of the image as displayed), hfov_deg, vfov_deg, method, confidence, reason, cam_from_world (4x4, OpenCV
axes, a Manhattan frame with +Z up; only when a rotation was found) and extras. Written atomically to OUT; without
--json it goes to stdout (except with --progress jsonl, where the array is in the result event).
A photo that cannot be calibrated by the requested method stops the command with an error naming it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos to calibrate")
    parser.add_argument("--method", choices=("auto", "exif", "vp", "dmcalib"), default="auto",
                        help="auto (default): DM-Calib if its weights are found, else vanishing points if confident, "
                             "else EXIF, else an uncertain vanishing-point estimate, else a 50-degree prior; or one "
                             "method only")
    parser.add_argument("--weights", default=None,
                        help="DM-Calib weights: a folder in the diffusers layout or a Hub id in the local Hugging "
                             "Face cache (default: juneyoung9/DM-Calib, when cached)")
    parser.add_argument("--base", default=None,
                        help="Stable Diffusion 2.1 base model DM-Calib takes its VAE, text encoder and tokenizer "
                             "from: a folder or a Hub id (default: stabilityai/stable-diffusion-2-1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device for DM-Calib")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the JSON array to OUT")


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from ..atomic import atomic_file
    from ..calibrate.auto import calibrate

    results = []
    for i, image in enumerate(args.images, start=1):
        progress.log(f"[{i}/{len(args.images)}] {image}")
        options = {"device": args.device, **({"base": args.base} if args.base else {})}
        result = calibrate(image, args.method, weights=args.weights, progress=progress, **options)
        progress.log(f"{image}: {result.method}, hFoV {result.hfov_deg:.2f} deg, vFoV {result.vfov_deg:.2f} deg, "
                     f"confidence {result.confidence:.2f}")
        results.append({"image": image, **result.to_json()})
    text = json.dumps(results, indent=1, allow_nan=False)
    if args.json is not None:
        with atomic_file(args.json, "w") as f:
            f.write(text + "\n")
    elif progress.mode != "jsonl":
        sys.stdout.write(text + "\n")
    return {"results": results, "json": None if args.json is None else str(args.json.absolute())}
