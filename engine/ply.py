"""Point-cloud PLY files of the scene bundle: x, y, z (float32), red, green, blue (uint8), optional confidence."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_file
from .errors import BundleError


@dataclass
class Points:
    xyz: np.ndarray  # (N, 3) float32, world frame
    rgb: np.ndarray  # (N, 3) uint8
    confidence: np.ndarray | None = None  # (N,) float32

    def __post_init__(self) -> None:
        self.xyz = np.ascontiguousarray(self.xyz, dtype=np.float32).reshape(-1, 3)
        self.rgb = np.ascontiguousarray(self.rgb, dtype=np.uint8).reshape(-1, 3)
        if len(self.rgb) != len(self.xyz):
            raise BundleError(f"points: {len(self.xyz)} positions but {len(self.rgb)} colours")
        if self.confidence is not None:
            self.confidence = np.ascontiguousarray(self.confidence, dtype=np.float32).reshape(-1)
            if len(self.confidence) != len(self.xyz):
                raise BundleError(f"points: {len(self.xyz)} positions but {len(self.confidence)} confidences")
        if not np.isfinite(self.xyz).all():
            raise BundleError("points: positions contain NaN or infinite values")

    def __len__(self) -> int:
        return len(self.xyz)


def write_points(path: str | os.PathLike, points: Points) -> None:
    """Write a binary little-endian PLY atomically."""
    from plyfile import PlyData, PlyElement

    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if points.confidence is not None:
        fields.append(("confidence", "f4"))
    vertex = np.empty(len(points), dtype=fields)
    for i, axis in enumerate("xyz"):
        vertex[axis] = points.xyz[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = points.rgb[:, i]
    if points.confidence is not None:
        vertex["confidence"] = points.confidence
    with atomic_file(path) as f:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(f)


def read_points(path: str | os.PathLike) -> Points:
    """Read a point PLY; any PLY with float x/y/z and 8-bit red/green/blue vertex fields is accepted."""
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: point cloud file not found")
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, EOFError, OSError, IndexError) as exc:
        raise BundleError(f"{path}: not a readable PLY file ({exc})") from None
    if "vertex" not in ply:
        raise BundleError(f"{path}: PLY has no 'vertex' element")
    v = ply["vertex"].data
    names = set(v.dtype.names or ())
    missing = [n for n in ("x", "y", "z", "red", "green", "blue") if n not in names]
    if missing:
        raise BundleError(f"{path}: PLY vertex element lacks field(s) {', '.join(missing)} "
                          f"(has {', '.join(sorted(names)) or 'none'})")
    for n in ("red", "green", "blue"):
        if v.dtype[n] != np.uint8:
            raise BundleError(f"{path}: PLY field {n!r} must be uchar (uint8), got {v.dtype[n]}")
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1)
    conf = np.asarray(v["confidence"]) if "confidence" in names else None
    try:
        return Points(xyz, rgb, conf)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
