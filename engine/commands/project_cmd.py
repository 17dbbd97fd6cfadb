"""`python -m engine project BUNDLE --camera ID --rays RAYS.npy --out PIXELS.npy`: camera-frame rays to pixels.

RAYS.npy holds an (N, 3) array of directions or points in the camera frame (OpenCV axes: x right, y down, z
forward; any length), e.g. from `engine unproject`. PIXELS.npy gets the (N, 2) float64 pixels through the camera's
model (COLMAP convention: pixel centres at +0.5), NaN where the model cannot project the ray (behind a perspective
camera, beyond a lens's limit angle, outside a LENS_FIELD grid) or the input row is not finite. Pixels outside the
image are kept (the result counts those inside). Written atomically. This module also holds what both this
command and `unproject` need: the camera lookup and the .npy reading and writing.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineError
from ..progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="scene bundle folder (or its scene.json)")
    parser.add_argument("--camera", type=int, required=True, help="camera id in the bundle")
    parser.add_argument("--rays", type=Path, required=True, help="(N, 3) camera-frame directions or points (.npy)")
    parser.add_argument("--out", type=Path, required=True, help="(N, 2) float64 pixels to write (.npy)")


def read_camera(bundle: Path, camera_id: int):
    """The bundle's camera `camera_id`, or an error listing the camera ids it has."""
    from ..bundle import read_bundle
    from ..errors import BundleError

    scene = read_bundle(bundle, check_files=False)
    if camera_id not in scene.cameras:
        raise BundleError(f"{bundle}: no camera with id {camera_id}; its cameras are "
                          f"{', '.join(str(i) for i in sorted(scene.cameras))}")
    return scene.cameras[camera_id]


def read_array(path: Path, columns: int, what: str) -> np.ndarray:
    """An (N, columns) numeric .npy array as float64 (no pickled objects), or an error naming the problem."""
    if not path.is_file():
        raise EngineError(f"{what} file {path}: not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise EngineError(f"{what} file {path}: not a .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise EngineError(f"{what} file {path}: an .npz archive, expected a single .npy array")
    if array.ndim != 2 or array.shape[1] != columns:
        raise EngineError(f"{what} file {path}: expected an (N, {columns}) array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise EngineError(f"{what} file {path}: expected numbers (float or integer), got dtype {array.dtype}")
    return array.astype(np.float64)


def write_array(path: Path, array: np.ndarray) -> None:
    from ..atomic import atomic_file

    with atomic_file(path) as f:
        np.save(f, array)


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    import torch

    from ..projection import project

    camera = read_camera(args.bundle, args.camera)
    rays = read_array(args.rays, 3, "rays")
    progress.stage("project")
    params = torch.tensor(camera.params, dtype=torch.float64)
    pixels, valid = project(camera.model, params, torch.from_numpy(rays))
    pixels, valid = pixels.numpy(), valid.numpy() & np.isfinite(rays).all(1) & (np.abs(rays).sum(1) > 0)
    pixels[~valid] = np.nan
    inside = valid & (pixels[:, 0] >= 0) & (pixels[:, 0] <= camera.width) & (pixels[:, 1] >= 0) \
        & (pixels[:, 1] <= camera.height)
    write_array(args.out, pixels)
    return {"out": str(args.out), "camera": camera.id, "model": camera.model, "rays": len(rays),
            "valid": int(valid.sum()), "invalid": int((~valid).sum()), "in_image": int(inside.sum())}
