"""Pure-torch compositor for projected Gaussians (CPU, or any device), following gsplat 1.5.3's
`rasterize_to_pixels` kernel rule for rule:

- pixel (i, j) is sampled at its centre (j + 0.5, i + 0.5);
- each pixel composites, front to back in depth order, the splats whose integer radii reach it;
- sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, alpha = min(0.999, opacity exp(-sigma)); a splat is skipped when
  sigma < 0 or alpha < 1/255;
- a pixel stops before the splat that would bring its transmittance T (1 - alpha) to 1e-4 or below (that splat
  does not contribute);
- colour = sum alpha_i T_i c_i + T_final background, alpha = 1 - T_final.
gsplat bins splats by 16x16 tile; binning by pixel gives each pixel the same splats that can reach it (outside its
radius a splat's alpha is below 1/255 and it is skipped either way), so here every (pixel, splat) pair inside the
splat's radius is listed, sorted by pixel then depth, and the front-to-back loop becomes segmented prefix sums:
T_i = exp(sum_{j<i} log(1 - alpha_j)) within each pixel's list, "stopped" being the prefix where the inclusive
transmittance is still above 1e-4. Work and memory are proportional to the number of pairs.
"""
from __future__ import annotations

import math

import torch

from .project import ALPHA_THRESHOLD, Projected

MAX_ALPHA = 0.999
T_MIN = 1e-4


@torch.no_grad()
def pixel_pairs(projected: Projected, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel index v * width + u, splat id) of every pixel centre within a visible splat's radii, sorted by pixel
    and, within a pixel, by depth (stable: equal depths keep splat order)."""
    device = projected.means2d.device
    ids = torch.nonzero(projected.visible).flatten()
    ids = ids[torch.argsort(projected.depths.detach()[ids], stable=True)]
    m = projected.means2d.detach()[ids].double()
    r = projected.radii[ids].double()
    # pixel centres j + 0.5 with |j + 0.5 - m| <= r
    x0 = torch.ceil(m[:, 0] - r[:, 0] - 0.5).clamp(0, width).long()
    x1 = (torch.floor(m[:, 0] + r[:, 0] - 0.5) + 1).clamp(0, width).long()
    y0 = torch.ceil(m[:, 1] - r[:, 1] - 0.5).clamp(0, height).long()
    y1 = (torch.floor(m[:, 1] + r[:, 1] - 0.5) + 1).clamp(0, height).long()
    nx, ny = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
    counts = nx * ny
    n_pairs = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(len(ids), device=device), counts)
    local = torch.arange(n_pairs, device=device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    nx_o = nx[owner]
    pixel = (y0[owner] + local // nx_o) * width + x0[owner] + local % nx_o
    order = torch.argsort(pixel, stable=True)  # pairs were generated in depth order; stable keeps it per pixel
    return pixel[order], ids[owner[order]]


def rasterize(projected: Projected, colors: torch.Tensor, opacities: torch.Tensor, width: int, height: int,
              background: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Render (H, W, C) colours and (H, W, 1) alphas of projected splats with `colors` (N, C) and `opacities` (N,)."""
    pixel, gid = pixel_pairs(projected, width, height)
    dtype, device = projected.means2d.dtype, projected.means2d.device
    n_pix = width * height
    u = (pixel % width).to(dtype) + 0.5
    v = torch.div(pixel, width, rounding_mode="floor").to(dtype) + 0.5
    m, conic = projected.means2d[gid], projected.conics[gid]
    dx, dy = m[:, 0] - u, m[:, 1] - v
    sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
    alpha = torch.clamp_max(opacities[gid] * torch.exp(-sigma), MAX_ALPHA)
    skip = (sigma < 0) | (alpha < ALPHA_THRESHOLD)
    alpha = torch.where(skip, torch.zeros_like(alpha), alpha)

    counts = torch.bincount(pixel, minlength=n_pix)
    first = torch.cumsum(counts, 0) - counts  # index of each pixel's first pair

    def segmented_cumsum(values: torch.Tensor) -> torch.Tensor:
        """Inclusive prefix sums restarting at each pixel (float64: the running total spans all pixels)."""
        total = torch.cumsum(values.double(), 0)
        before = total - values.double()
        return (total - before[first[pixel]]).to(values.dtype)

    log_one_minus = torch.log1p(-alpha)
    keep = segmented_cumsum(log_one_minus) > math.log(T_MIN)  # a prefix per pixel: T only decreases
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    log_one_minus = torch.where(keep, log_one_minus, torch.zeros_like(log_one_minus))
    inclusive = segmented_cumsum(log_one_minus)
    weights = alpha * torch.exp(inclusive - log_one_minus)  # alpha_i T_i, T_i exclusive
    channels = colors.shape[-1]
    color = torch.zeros(n_pix, channels, dtype=colors.dtype, device=device).index_add(
        0, pixel, weights[:, None] * colors[gid])
    log_t = torch.zeros(n_pix, dtype=dtype, device=device).index_add(0, pixel, log_one_minus)
    t_final = torch.exp(log_t)
    if background is not None:
        color = color + t_final[:, None] * background
    return color.reshape(height, width, channels), (1 - t_final).reshape(height, width, 1)
