"""CUDA compositor: gsplat 1.5.3's tile intersection and `rasterize_to_pixels` kernels fed with this engine's own
projection (`project.py`), so focal, principal point, distortion and pose keep their gradients (gsplat's backward
returns gradients to the 2D means and conics, and autograd carries them on to the cameras).

gsplat is an optional GPU extra (`requirements-gpu.txt`); it is imported only here, and only when CUDA is
available (its CUDA extension compiles itself on first use). Same signature and rules as `raster_torch.rasterize`.
"""
from __future__ import annotations

import math

import torch

from .project import Projected

TILE = 16


def available() -> bool:
    """True when a CUDA device and gsplat are both there."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def rasterize(projected: Projected, colors: torch.Tensor, opacities: torch.Tensor, width: int, height: int,
              background: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Render (H, W, C) colours and (H, W, 1) alphas of projected splats with `colors` (N, C) and `opacities` (N,)."""
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels

    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    means2d = projected.means2d[None]
    radii = projected.radii[None].contiguous()
    _, isect_ids, flatten_ids = isect_tiles(means2d.detach(), radii, projected.depths.detach()[None], TILE,
                                            tiles_x, tiles_y)
    offsets = isect_offset_encode(isect_ids, 1, tiles_x, tiles_y)
    image, alpha = rasterize_to_pixels(means2d, projected.conics[None], colors[None], opacities[None], width, height,
                                       TILE, offsets, flatten_ids,
                                       backgrounds=None if background is None else background[None])
    return image[0], alpha[0]
