"""Standard 3D Gaussian Splatting .ply files (the layout of Kerbl et al.'s reference trainer, read by most viewers).

One binary little-endian `vertex` element, all float32, in this order:
    x y z                 mean (world frame)
    nx ny nz              unused normals (written as 0)
    f_dc_0..2             SH degree-0 coefficient per colour channel (RGB = 0.5 + SH_C0 * f_dc)
    f_rest_0..3K-1        higher SH coefficients, channel-major: f_rest[c*K + k] is coefficient k+1 of channel c,
                          K = (degree+1)^2 - 1 in {0, 3, 8, 15}
    opacity               logit of the opacity
    scale_0..2            log of the per-axis standard deviations
    rot_0..3              rotation quaternion (w, x, y, z), not necessarily normalised
No torch here: the Blender side reads these files with numpy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..errors import EngineError

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))
_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # number of f_rest_* fields -> SH degree
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]


class SplatsFileError(EngineError):
    """A splat .ply file is missing or does not follow the 3DGS layout."""


@dataclass
class Splats:
    """N Gaussians in world coordinates (float32 numpy arrays)."""
    means: np.ndarray  # (N, 3)
    quats: np.ndarray  # (N, 4) w, x, y, z (unnormalised allowed)
    log_scales: np.ndarray  # (N, 3)
    opacity_logits: np.ndarray  # (N,)
    sh0: np.ndarray  # (N, 3) degree-0 SH coefficient per channel (f_dc)
    shN: np.ndarray  # (N, K, 3) higher coefficients, K = (degree+1)^2 - 1 (0 for degree 0)

    def __post_init__(self) -> None:
        n = len(np.asarray(self.means).reshape(-1, 3))
        self.means = _as_f32(self.means, (n, 3), "means")
        self.quats = _as_f32(self.quats, (n, 4), "quats")
        self.log_scales = _as_f32(self.log_scales, (n, 3), "log_scales")
        self.opacity_logits = _as_f32(self.opacity_logits, (n,), "opacity_logits")
        self.sh0 = _as_f32(self.sh0, (n, 3), "sh0")
        shn = np.asarray(self.shN, dtype=np.float32)
        if shn.size == 0:
            shn = shn.reshape(n, 0, 3)
        if shn.ndim != 3 or shn.shape[0] != n or shn.shape[2] != 3 or shn.shape[1] not in (0, 3, 8, 15):
            raise SplatsFileError(f"splats: shN must have shape (N={n}, K, 3) with K in 0, 3, 8, 15 "
                                  f"(SH degree 0-3), got {shn.shape}")
        self.shN = np.ascontiguousarray(shn)

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return {0: 0, 3: 1, 8: 2, 15: 3}[self.shN.shape[1]]

    def base_rgb(self) -> np.ndarray:
        """View-independent colour (N, 3) in [0, 1] from the degree-0 coefficient, clipped."""
        return np.clip(0.5 + SH_C0 * self.sh0, 0.0, 1.0)


def _as_f32(value, shape: tuple[int, ...], name: str) -> np.ndarray:
    a = np.asarray(value, dtype=np.float32)
    if a.shape != shape:
        raise SplatsFileError(f"splats: {name} must have shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a)


def ply_field_names(sh_degree: int) -> list[str]:
    """The vertex fields, in file order, of a 3DGS .ply with SH up to `sh_degree`."""
    k = (sh_degree + 1) ** 2 - 1
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * k)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_splats(path: str | os.PathLike, splats: Splats) -> None:
    """Write `splats` as a binary little-endian 3DGS .ply, atomically."""
    from plyfile import PlyData, PlyElement

    n, k = len(splats), splats.shN.shape[1]
    names = ply_field_names(splats.sh_degree)
    columns = np.zeros((n, len(names)), dtype=np.float32)
    columns[:, 0:3] = splats.means
    columns[:, 6:9] = splats.sh0
    # channel-major: column of (coefficient j, channel c) is 9 + c*K + j
    columns[:, 9:9 + 3 * k] = splats.shN.transpose(0, 2, 1).reshape(n, 3 * k)
    o = 9 + 3 * k
    columns[:, o] = splats.opacity_logits
    columns[:, o + 1:o + 4] = splats.log_scales
    columns[:, o + 4:o + 8] = splats.quats
    vertex = np.ascontiguousarray(columns).view([(name, "<f4") for name in names]).reshape(n)
    with atomic_file(path) as f:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(f)


def read_splats(path: str | os.PathLike) -> Splats:
    """Read a 3DGS .ply (binary or ASCII, SH degree 0-3, fields in any order; extra fields are ignored)."""
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    if not path.is_file():
        raise SplatsFileError(f"{path}: splat file not found")
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, EOFError, OSError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise SplatsFileError(f"{path}: not a readable PLY file ({exc})") from None
    if "vertex" not in ply:
        raise SplatsFileError(f"{path}: PLY has no 'vertex' element")
    v = ply["vertex"].data
    names = list(v.dtype.names or ())
    missing = [n for n in _REQUIRED if n not in names]
    if missing:
        raise SplatsFileError(f"{path}: not a 3DGS splat file: vertex element lacks field(s) {', '.join(missing)}")
    rest = [n for n in names if n.startswith("f_rest_")]
    if len(rest) not in _REST_COUNTS:
        raise SplatsFileError(f"{path}: {len(rest)} f_rest_* fields; a 3DGS file has 0, 9, 24 or 45 "
                              f"(SH degree 0, 1, 2 or 3)")
    expected_rest = [f"f_rest_{i}" for i in range(len(rest))]
    if sorted(rest) != sorted(expected_rest):
        raise SplatsFileError(f"{path}: f_rest_* fields must be numbered 0..{len(rest) - 1}, got "
                              f"{', '.join(sorted(set(rest) - set(expected_rest)))}")
    for name in _REQUIRED + expected_rest:
        if v.dtype[name].kind != "f":
            raise SplatsFileError(f"{path}: field {name!r} must be a float, got {v.dtype[name]}")
    n, k = len(v), len(rest) // 3

    def cols(fields: list[str]) -> np.ndarray:
        return np.stack([np.asarray(v[f], dtype=np.float32) for f in fields], axis=1) if fields else \
            np.zeros((n, 0), np.float32)

    splats = Splats(means=cols(["x", "y", "z"]), quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
                    log_scales=cols(["scale_0", "scale_1", "scale_2"]),
                    opacity_logits=np.asarray(v["opacity"], dtype=np.float32),
                    sh0=cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
                    shN=cols(expected_rest).reshape(n, 3, k).transpose(0, 2, 1))
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN"):
        values = getattr(splats, name)
        bad = ~np.isfinite(values).all(axis=tuple(range(1, values.ndim)))  # per splat; fine with 0 splats
        if bad.any():
            raise SplatsFileError(f"{path}: {int(bad.sum())} splat(s) have NaN or infinite {name} "
                                  f"(first at vertex {int(np.argmax(bad))})")
    bad_q = np.linalg.norm(splats.quats, axis=1) == 0
    if bad_q.any():
        raise SplatsFileError(f"{path}: {int(bad_q.sum())} splat(s) have a zero rotation quaternion "
                              f"(first at vertex {int(np.argmax(bad_q))})")
    return splats
