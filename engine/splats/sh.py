"""Real spherical harmonics up to degree 3 for view-dependent splat colour (torch).

Basis order and signs are those of the reference 3DGS trainer and gsplat (so .ply coefficients mean the same thing
to every tool): Y_0, then for each degree l the m = -l..l functions of the unit view direction (x, y, z). Colour is
`0.5 + sum_k c_k Y_k(d)`, clamped at 0, where d points from the camera centre to the Gaussian.
"""
from __future__ import annotations

import torch

# Normalisation constants of the real SH (Sloan, "Stupid Spherical Harmonics Tricks", 2008, appendix A2).
C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
      1.445305721320277, -0.5900435899266435)


def num_coefficients(degree: int) -> int:
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """(..., (degree+1)^2) basis values at unit directions (..., 3)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [C3[0] * y * (3 * xx - yy), C3[1] * xy * z, C3[2] * y * (4 * zz - xx - yy),
                C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy), C3[5] * z * (xx - yy),
                C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, -1)


def sh_colors(sh0: torch.Tensor, shN: torch.Tensor, degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """RGB (N, 3) of Gaussians with coefficients sh0 (N, 3) and shN (N, K, 3) seen along dirs (N, 3), using the
    coefficients up to `degree` (<= the degree shN holds)."""
    if degree > 0:
        unit = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True).clamp_min(1e-12)
        basis = sh_basis(degree, unit)  # (N, (degree+1)^2)
        coeffs = torch.cat([sh0[:, None, :], shN[:, :num_coefficients(degree) - 1, :]], 1)
        rgb = (basis[..., None] * coeffs).sum(1)
    else:
        rgb = C0 * sh0
    return torch.clamp_min(rgb + 0.5, 0.0)
