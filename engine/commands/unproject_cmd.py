"""`python -m engine unproject BUNDLE --camera ID --pixels PIXELS.npy --out RAYS.npy`: pixels to unit rays.

PIXELS.npy holds an (N, 2) array of pixel positions (COLMAP convention: the top-left pixel's centre is (0.5, 0.5)).
RAYS.npy gets the (N, 3) float64 unit ray directions in the camera frame (OpenCV axes: x right, y down, z forward)
through the camera's model, for every model including fisheyes beyond 90 degrees and LENS_FIELD; NaN rows where the
pixel has no ray (beyond the lens's image, where the undistortion did not converge) or the input row is not finite.
Written atomically; the result counts valid and invalid rows.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import Progress
from .project_cmd import read_array, read_camera, write_array


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="scene bundle folder (or its scene.json)")
    parser.add_argument("--camera", type=int, required=True, help="camera id in the bundle")
    parser.add_argument("--pixels", type=Path, required=True, help="(N, 2) pixel positions (.npy)")
    parser.add_argument("--out", type=Path, required=True, help="(N, 3) float64 unit rays to write (.npy)")


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    import torch

    from ..projection import unproject_directions

    camera = read_camera(args.bundle, args.camera)
    pixels = read_array(args.pixels, 2, "pixels")
    progress.stage("unproject")
    params = torch.tensor(camera.params, dtype=torch.float64)
    rays, valid = unproject_directions(camera.model, params, torch.from_numpy(pixels))
    rays, valid = rays.numpy(), valid.numpy() & np.isfinite(pixels).all(1)
    rays[~valid] = np.nan
    write_array(args.out, rays)
    return {"out": str(args.out), "camera": camera.id, "model": camera.model, "pixels": len(pixels),
            "valid": int(valid.sum()), "invalid": int((~valid).sum())}
