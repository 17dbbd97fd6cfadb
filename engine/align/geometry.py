# SPDX-License-Identifier: GPL-3.0-or-later
"""Batched torch geometry for the aligner: rotations, weighted similarity fits, focal estimation, pixel grids."""
from __future__ import annotations

import torch


def rotation_from_vector(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from axis-angle vectors (..., 3) by Rodrigues' formula, smooth at zero."""
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)  # sin(t)/t
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))  # (1-cos t)/t^2
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*omega.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + a * k + b * (k @ k)


def weighted_similarity(src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor, irls: int = 0,
                        eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarities (s, R, t) with dst ~ s R src + t for batches of point sets (B, P, 3) and weights (B, P).

    Weighted Umeyama (1991, eq. 40-42). With `irls` > 0, that many iteratively reweighted rounds follow, each
    dividing the weights by the current residual length, which approaches the weighted unsquared (L1-type)
    distance the aligner minimises and so resists outliers. `eps` floors residuals relative to the data's spread.
    """
    src, dst = src.transpose(1, 2).contiguous(), dst.transpose(1, 2).contiguous()  # (B, 3, P): long rows
    base = weight.clamp_min(0)
    w = base
    floor = None
    for it in range(irls + 1):
        wn = w / w.sum(1, keepdim=True).clamp_min(1e-30)  # (B, P)
        mu_s = (src * wn[:, None]).sum(2)  # (B, 3)
        mu_d = (dst * wn[:, None]).sum(2)
        xs, xd = src - mu_s[..., None], dst - mu_d[..., None]
        cov = (xd * wn[:, None]) @ xs.transpose(1, 2)  # (B, 3, 3) = sum_p w_p xd_p xs_p^T
        u, d, vt = torch.linalg.svd(cov)
        sign = torch.ones_like(d)
        sign[:, 2] = torch.where(torch.det(u) * torch.det(vt) < 0, -1.0, 1.0).to(d.dtype)
        rot = u @ (sign[..., None] * vt)
        var_s = (wn * xs.square().sum(1)).sum(1).clamp_min(1e-30)
        scale = (d * sign).sum(1) / var_s
        trans = mu_d - scale[:, None] * (rot @ mu_s[..., None])[..., 0]
        if it == irls:
            break
        if floor is None:
            floor = eps * (wn * xd.square().sum(1).sqrt()).sum(1, keepdim=True) + 1e-30
        resid = (dst - torch.baddbmm(trans[..., None], scale[:, None, None] * rot, src)).square().sum(1).sqrt()
        w = base / torch.maximum(resid, floor)
    return scale, rot, trans


def weiszfeld_focal(points: torch.Tensor, pixels: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Focal lengths (B,) of pointmaps (B, P, 3) in their camera frames, given pixel offsets from the principal
    point (B, P, 2) or (P, 2): f = argmin sum |pixel - f (x/z, y/z)|, by Weiszfeld-style reweighting from the
    least-squares solution (as DUSt3R's 'weiszfeld' focal mode). Points with z <= 0 are ignored.
    """
    z = points[..., 2:3]
    valid = (z > 0).to(points.dtype)[..., 0]
    xy = points[..., :2] / torch.where(z > 0, z, torch.ones_like(z))
    pixels = pixels.expand_as(xy)
    dot_xp = (xy * pixels).sum(-1) * valid
    dot_xx = (xy * xy).sum(-1) * valid
    focal = dot_xp.sum(1) / dot_xx.sum(1).clamp_min(1e-30)
    for _ in range(iterations):
        dist = (pixels - focal[:, None, None] * xy).norm(dim=-1)
        w = 1 / dist.clamp_min(1e-8)
        focal = (w * dot_xp).sum(1) / (w * dot_xx).sum(1).clamp_min(1e-30)
    return focal


def sample_grid(width: int, height: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel rows and columns of a centred regular grid with the given stride (integer indices)."""
    nx, ny = (width - 1) // stride + 1, (height - 1) // stride + 1
    ox, oy = (width - 1 - (nx - 1) * stride) // 2, (height - 1 - (ny - 1) * stride) // 2
    return torch.arange(ny) * stride + oy, torch.arange(nx) * stride + ox


def pixel_centres(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(len(rows) * len(cols), 2) pixel centre coordinates (u, v) = (col + 0.5, row + 0.5), row-major."""
    v, u = torch.meshgrid(rows.double() + 0.5, cols.double() + 0.5, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1)


def unproject(rot: torch.Tensor, centre: torch.Tensor, focal: torch.Tensor, pp: torch.Tensor, depth: torch.Tensor,
              pixels: torch.Tensor) -> torch.Tensor:
    """World points (N, P, 3) of pinhole cameras (world_from_cam rotation (N, 3, 3), centre (N, 3), focal (N,),
    principal point (N, 2)) seeing z-depths (N, P) at pixels (P, 2): x = c + R d ((u - cx) / f, (v - cy) / f, 1).
    """
    xy = (pixels[None] - pp[:, None]) / focal[:, None, None]
    rays = torch.cat([xy, torch.ones_like(xy[..., :1])], -1)  # (N, P, 3), z = 1
    return centre[:, None] + (depth[..., None] * rays) @ rot.transpose(1, 2)
