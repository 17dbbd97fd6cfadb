"""Projection of 3D Gaussians into an image through any COLMAP camera model (torch, differentiable).

For a Gaussian with mean mu and covariance Sigma = R S S^T R^T (R from the quaternion, S = diag(exp(log_scales)))
and a camera (R_c, t_c) the splat is the EWA approximation (Zwicker et al. 2002; 3DGS, Kerbl et al. 2023, eq. 5):
    p = R_c mu + t_c,  mean2d = pi(p),  Sigma2d = J M M^T J^T + eps2d I,  M = R_c R S,
with J = d pi / d p the 2x3 Jacobian of the camera's full projection pi at p, including lens distortion:
    J = diag(fx, fy) . D(x) . P(p),
where x is the point on the model's plane (pinhole plane (X/Z, Y/Z), or the equidistant plane for fisheye models),
P = dx/dp and D the 2x2 Jacobian of the distortion map on that plane (`engine.projection`). Every camera quantity
(focal, principal point, distortion parameters, pose) is an ordinary tensor input, so gradients reach it through
mean2d and the conic. As in 3DGS / gsplat, J of perspective models is evaluated at the plane point clamped to 1.3x
the image's field, so splats far outside the view do not explode.

Conventions follow gsplat 1.5.3's projection so its rasterizer can consume the result: conics are the upper
triangle (a, b, c) of inv(Sigma2d) (eps2d = 0.3 px^2 added first), radii are per-axis integer pixel extents (0 =
not drawn) of the ellipse beyond which alpha < 1/255, and depths give the compositing order.

Depths: camera z for perspective models. Fisheye models (LENS_FIELD included) see rays at and beyond 90 degrees from
the axis, where z is zero or negative and no longer orders splats along a pixel's ray (a splat behind the image
plane would come before every splat in front of it), so their depths are distances from the camera centre |p|,
which order splats along every ray (both compositors, and gsplat's isect_tiles, sort by whatever depth they get).
Culling follows the same quantity: perspective splats need z > near; fisheye splats |p| > near (and a ray angle
inside the lens's domain), so a lens wider than 180 degrees draws splats behind the image plane.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..camera_models import distort_normalized, get_model
from ..projection import distortion_jacobian, in_domain, radius_limit, split_params, unproject

EPS2D = 0.3  # px^2 added to every 2D covariance (gsplat's default; a one-pixel low-pass filter)
NEAR = 0.01  # camera z below which splats are dropped (gsplat's near_plane)
ALPHA_THRESHOLD = 1.0 / 255.0  # splat contributions below this are skipped by the compositors
MAX_EXTENT = 3.33  # radius in standard deviations for opaque splats (gsplat 1.5.3)
JACOBIAN_MARGIN = 1.3  # J is evaluated within this factor of the field of view (3DGS)


@dataclass
class Projected:
    means2d: torch.Tensor  # (N, 2) pixels (COLMAP convention: pixel centres at +0.5)
    conics: torch.Tensor  # (N, 3) upper triangle of the inverse 2D covariance
    radii: torch.Tensor  # (N, 2) int32 per-axis extent in pixels; 0 where the splat is not drawn
    depths: torch.Tensor  # (N,) compositing order: camera z, or distance from the camera centre for fisheye models

    @property
    def visible(self) -> torch.Tensor:
        return (self.radii > 0).all(-1)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) of quaternions (N, 4) (w, x, y, z; normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(*quats.shape[:-1], 3, 3)


@torch.no_grad()
def _plane_bounds(model_name: str, params: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """(lo_x, hi_x, lo_y, hi_y) of the image border on the pinhole plane, widened by JACOBIAN_MARGIN."""
    n = 16
    t = (torch.arange(n + 1, dtype=params.dtype, device=params.device) / n)
    u, v = t * width, t * height
    zu, zv = torch.zeros_like(u), torch.zeros_like(v)
    border = torch.cat([torch.stack([u, zu], -1), torch.stack([u, zu + height], -1),
                        torch.stack([zv, v], -1), torch.stack([zv + width, v], -1)])
    rays, valid = unproject(model_name, params.detach(), border)
    xy = rays[valid][:, :2] if bool(valid.any()) else rays[:, :2]
    lo, hi = xy.min(0).values, xy.max(0).values
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * JACOBIAN_MARGIN
    return centre[0] - half[0], centre[0] + half[0], centre[1] - half[1], centre[1] + half[1]


def _equidistant(p: torch.Tensor):
    """(a, b) = theta (X, Y) / r and the 2x3 Jacobian d(a, b)/d(X, Y, Z), r = |(X, Y)|, theta = atan2(r, Z).
    With s = theta / r, rho^2 = r^2 + Z^2 and q = (Z / rho^2 - s) / r^2:
    da/dX = s + X^2 q, da/dY = db/dX = X Y q, db/dY = s + Y^2 q, da/dZ = -X / rho^2, db/dZ = -Y / rho^2.
    Near the axis (r < 1e-4 Z) s = (1 - r^2 / (3 Z^2)) / Z and q = -2 / (3 Z^3) to second order."""
    X, Y, Z = p.unbind(-1)
    r2 = X * X + Y * Y
    rho2 = r2 + Z * Z
    near_axis = (Z > 0) & (r2 <= (1e-4 * Z) ** 2)
    safe_r2 = torch.where(near_axis | (r2 == 0), torch.ones_like(r2), r2)
    r = torch.sqrt(safe_r2)
    z_pos = torch.where(Z > 0, Z, torch.ones_like(Z))
    s = torch.where(near_axis, (1 - r2 / (3 * z_pos * z_pos)) / z_pos, torch.atan2(r, Z) / r)
    q = torch.where(near_axis, -2 / (3 * z_pos ** 3), (Z / rho2 - s) / safe_r2)
    jac = torch.stack([s + X * X * q, X * Y * q, -X / rho2, X * Y * q, s + Y * Y * q, -Y / rho2], -1)
    return X * s, Y * s, jac.reshape(*p.shape[:-1], 2, 3), torch.atan2(torch.sqrt(r2), Z)


def project_gaussians(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor, opacities: torch.Tensor,
                      model_name: str, params: torch.Tensor, cam_from_world: torch.Tensor, width: int, height: int,
                      eps2d: float = EPS2D, near: float = NEAR) -> Projected:
    """Project N Gaussians (means (N, 3), quats (N, 4) w x y z, log_scales (N, 3), opacities (N,) in [0, 1]) into a
    `width` x `height` image of camera (`model_name`, COLMAP-ordered `params` (P,), `cam_from_world` (4, 4))."""
    model = get_model(model_name)
    fx, fy, cx, cy, extra = split_params(model_name, params)
    rot_c, t_c = cam_from_world[:3, :3], cam_from_world[:3, 3]
    p = means @ rot_c.T + t_c
    X, Y, Z = p.unbind(-1)
    if model.fisheye:
        depths = torch.linalg.vector_norm(p, dim=-1)
        in_front = depths > near  # "in front": far enough from the centre, at any angle the lens sees
        a, b, plane_jac, theta = _equidistant(p)
        xd, yd, d = distortion_jacobian(model, extra, a, b)
        inside_limit = in_domain(model_name, params, a, b, theta)
    else:
        depths = Z
        in_front = Z > near
        z = torch.where(in_front, Z, torch.ones_like(Z))
        limit = radius_limit(model_name, params.detach())
        x, y = X / z, Y / z
        xd, yd = distort_normalized(model_name, extra, x, y)
        lo_x, hi_x, lo_y, hi_y = _plane_bounds(model_name, params, width, height)
        xc, yc = torch.clamp(x, lo_x, hi_x), torch.clamp(y, lo_y, hi_y)
        rc = torch.hypot(xc, yc).detach()
        shrink = torch.where(rc >= 0.99 * limit, 0.99 * limit / rc, torch.ones_like(rc))  # stay inside the fold
        xc, yc = xc * shrink, yc * shrink
        zero = torch.zeros_like(z)
        plane_jac = torch.stack([1 / z, zero, -xc / z, zero, 1 / z, -yc / z], -1).reshape(-1, 2, 3)
        _, _, d = distortion_jacobian(model, extra, xc, yc)
        inside_limit = torch.hypot(x, y).detach() < limit
    d = torch.stack(d, -1).reshape(-1, 2, 2)
    focal = torch.stack([fx, fy])
    jac = focal[None, :, None] * (d @ plane_jac)  # (N, 2, 3)
    m = rot_c @ quat_to_rotmat(quats) * torch.exp(log_scales)[:, None, :]  # (N, 3, 3): M = R_c R S
    jm = jac @ m
    cov = jm @ jm.transpose(-1, -2)
    c00, c01, c11 = cov[:, 0, 0] + eps2d, cov[:, 0, 1], cov[:, 1, 1] + eps2d
    det = c00 * c11 - c01 * c01
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], -1)
    means2d = torch.stack([fx * xd + cx, fy * yd + cy], -1)
    with torch.no_grad():
        # beyond `extent` standard deviations alpha = opacity exp(-extent^2 / 2) < 1/255 (gsplat 1.5.3)
        extent = torch.sqrt(2 * torch.log(opacities.detach().clamp_min(1e-30) / ALPHA_THRESHOLD).clamp_min(0))
        extent = extent.clamp(max=MAX_EXTENT)
        radii = torch.stack([torch.ceil(extent * torch.sqrt(c00.clamp_min(0))),
                             torch.ceil(extent * torch.sqrt(c11.clamp_min(0)))], -1)
        m2 = means2d.detach()
        on_image = ((m2[:, 0] + radii[:, 0] > 0) & (m2[:, 0] - radii[:, 0] < width)
                    & (m2[:, 1] + radii[:, 1] > 0) & (m2[:, 1] - radii[:, 1] < height))
        ok = (in_front & inside_limit & (det > 0) & on_image & (opacities.detach() >= ALPHA_THRESHOLD)
              & torch.isfinite(m2).all(-1) & torch.isfinite(conics.detach()).all(-1))
        radii = torch.where(ok[:, None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Projected(means2d, conics, radii, depths)
