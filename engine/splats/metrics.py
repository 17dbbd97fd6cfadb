"""Image losses and quality metrics (torch): L1 + D-SSIM training loss, PSNR and SSIM for evaluation.

SSIM is Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2, zero padding to the
image size and the mean over pixels and channels (the form 3DGS trains and reports with).
"""
from __future__ import annotations

import functools
import math

import torch

_WINDOW, _SIGMA = 11, 1.5


@functools.lru_cache(maxsize=8)
def _window(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(_WINDOW, dtype=dtype, device=device) - _WINDOW // 2
    g = torch.exp(-x * x / (2 * _SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, _WINDOW, _WINDOW).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two (H, W, C) images with values in [0, 1]."""
    return ssim_map(a, b).mean()


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (H, W) of two (H, W, C) images, averaged over channels (for scores within a region)."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    channels = x.shape[1]
    w = _window(channels, x.dtype, x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, w, padding=_WINDOW // 2, groups=channels)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return value[0].mean(0)


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """(1 - w) L1 + w (1 - SSIM) (3DGS eq. 7, w = 0.2)."""
    return (1 - ssim_weight) * (render - target).abs().mean() + ssim_weight * (1 - ssim(render, target))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (the render clipped to [0, 1])."""
    mse = float((a.clamp(0, 1) - b).square().mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)
