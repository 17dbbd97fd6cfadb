# SPDX-License-Identifier: GPL-3.0-or-later
"""An alignment result as a scene bundle: cameras in original photo pixels, depth and confidence maps as .npy.

Each image's extras name its maps: `depth` (z-depth in scene units, float32, H x W at the pointmap size),
`confidence` (float32, same size) and `depth_camera`, the SIMPLE_PINHOLE camera of those maps' pixels.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Camera, Image, Scene, write_bundle
from ..errors import EngineError
from ..pairs_file import PairsFile
from .aligner import AlignResult


def original_size(pairs_file: PairsFile, k: int) -> tuple[int, int]:
    """Image k's photo size (width, height) as the pairs file records it; the pointmap size if it records none."""
    if pairs_file.original_sizes is None:
        return pairs_file.width, pairs_file.height
    w0, h0 = pairs_file.original_sizes[k]
    return int(w0), int(h0)


def load_colours(path: Path, width: int, height: int, pixel_map: tuple[float, float, float, float],
                 original: tuple[int, int]) -> np.ndarray:
    """A photo resampled onto its pointmap's pixels (`pixel_map` as in engine.pairs_file): (H, W, 3) uint8 RGB.

    `original` is the size the pairs file records for it; a photo of another size is an error.
    """
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # applies the EXIF orientation
    if bgr is None:
        raise EngineError(f"{path}: not a readable image")
    h0, w0 = bgr.shape[:2]
    if (w0, h0) != tuple(original):
        raise EngineError(f"{path}: the photo is {w0}x{h0} pixels but the pairs file says {original[0]}x{original[1]}")
    ox, oy, sx, sy = pixel_map
    kx = ky = 1.0
    if sx > 1 or sy > 1:  # shrinking: average over the photo's pixels first, then resample without aliasing
        small = (max(1, round(w0 / sx)), max(1, round(h0 / sy)))
        kx, ky = small[0] / w0, small[1] / h0
        bgr = cv2.resize(bgr, small, interpolation=cv2.INTER_AREA)
    # pointmap pixel centre u + 0.5 sits at photo coordinate (u + 0.5 + ox) sx; OpenCV puts pixel centres at integers
    m = np.array([[sx * kx, 0, (0.5 + ox) * sx * kx - 0.5], [0, sy * ky, (0.5 + oy) * sy * ky - 0.5]])
    out = cv2.warpAffine(bgr, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_align_bundle(result: AlignResult, pairs_file: PairsFile, out: str | os.PathLike,
                       photos: dict[int, Path] | None, sizes: dict[int, tuple[int, int]] | None,
                       provenance: dict[str, Any], units: str = "unknown") -> Path:
    """Write `result` as a bundle at `out` (atomically). `photos` maps pairs-file image -> photo file, `sizes`
    pairs-file image -> photo (width, height) (default: `original_size`). Cameras are SIMPLE_PINHOLE, or PINHOLE
    where the pointmap was scaled differently along u and v."""
    photos = photos or {}
    w, h = pairs_file.width, pairs_file.height
    cameras: dict[int, Camera] = {}
    by_key: dict[tuple, int] = {}
    images = []
    with tempfile.TemporaryDirectory(prefix="unposed-align-") as tmp:
        files: dict[str, Path] = {}
        for n, (k, name) in enumerate(zip(result.images, result.names)):
            w0, h0 = sizes[k] if sizes else original_size(pairs_file, k)
            ox, oy, sx, sy = pairs_file.pixel_map(k, (w0, h0))
            f, (cx, cy) = float(result.focal[n]), result.pp[n]
            fx, fy, cx0, cy0 = f * sx, f * sy, (float(cx) + ox) * sx, (float(cy) + oy) * sy
            model, params = (("SIMPLE_PINHOLE", [fx, cx0, cy0]) if abs(sx - sy) <= 1e-9 * sx
                             else ("PINHOLE", [fx, fy, cx0, cy0]))
            key = (w0, h0, model, *np.round(params, 9))
            if key not in by_key:
                by_key[key] = len(cameras) + 1
                cameras[by_key[key]] = Camera(by_key[key], model, w0, h0, params)
            stem = f"{n:05d}_{_safe(Path(name).stem)}"
            depth_name, conf_name = f"depth/{stem}.npy", f"confidence/{stem}.npy"
            for rel, data in ((depth_name, result.depth[n]), (conf_name, result.confidence[n])):
                files[rel] = Path(tmp) / rel
                files[rel].parent.mkdir(exist_ok=True)
                np.save(files[rel], data.astype(np.float32))
            extras = {"depth": depth_name, "confidence": conf_name,
                      "depth_camera": {"model": "SIMPLE_PINHOLE", "width": w, "height": h,
                                       "params": [f, float(cx), float(cy)]}}
            images.append(Image(n + 1, name, by_key[key], result.cam_from_world[n], photos.get(k), extras))
        scene = Scene(cameras, images, result.points, units, provenance)
        return write_bundle(scene, out, files)
