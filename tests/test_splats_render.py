"""Splat projection and the CPU compositor: the EWA Jacobian against autograd through engine.projection, the
compositor against a literal per-pixel loop of gsplat's kernel rules, and finite-difference gradients with respect
to focal, principal point, distortion and pose (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.bundle import Camera
from engine.camera_models import get_model
from engine.projection import project
from engine.splats.cameras import CameraRig, se3_exp
from engine.splats.project import EPS2D, project_gaussians, quat_to_rotmat
from engine.splats.raster_torch import MAX_ALPHA, T_MIN, rasterize

CAMERAS = {
    "PINHOLE": [40.0, 42.0, 17.0, 11.5],
    "SIMPLE_RADIAL": [40.0, 16.0, 12.5, -0.08],
    "OPENCV": [40.0, 41.0, 16.5, 12.5, -0.12, 0.03, 0.004, -0.003],
    "OPENCV_FISHEYE": [30.0, 30.5, 16.0, 12.0, 0.05, -0.01, 0.002, 0.0],
}
W, H = 32, 24


def gaussians(n: int, seed: int, dtype=torch.float64, spread: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * spread
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    log_scales = torch.log(torch.rand(n, 3, generator=g, dtype=dtype) * 0.08 + 0.03)
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.6 + 0.2
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, log_scales, opacities, colors


def look(seed: int) -> np.ndarray:
    """A pose a few degrees off identity."""
    rng = np.random.default_rng(seed)
    xi = torch.tensor(np.concatenate([rng.normal(size=3) * 0.05, rng.normal(size=3) * 0.1]))
    return se3_exp(xi).numpy()


@pytest.mark.parametrize("model", list(CAMERAS))
def test_projection_matches_engine_projection_and_its_jacobian(model):
    params = torch.tensor(CAMERAS[model], dtype=torch.float64)
    means, quats, log_scales, opacities, _ = gaussians(40, 1, spread=0.4)
    pose = torch.from_numpy(look(2))
    proj = project_gaussians(means, quats, log_scales, opacities, model, params, pose, W, H)
    cam_points = means @ pose[:3, :3].T + pose[:3, 3]
    pixels, valid = project(model, params, cam_points)
    vis = proj.visible
    assert vis.sum() > 20 and bool(valid[vis].all())
    assert torch.allclose(proj.means2d[vis], pixels[vis], atol=1e-9)
    # fisheye splats are ordered by distance from the camera centre (rays beyond 90 deg), others by z
    fisheye = get_model(model).fisheye
    assert torch.allclose(proj.depths, cam_points.norm(dim=-1) if fisheye else cam_points[:, 2], atol=1e-12)
    # covariance: J Sigma J^T + eps2d with J from autograd through engine.projection.project
    rot = quat_to_rotmat(quats)
    sigma3 = rot @ torch.diag_embed(torch.exp(2 * log_scales)) @ rot.transpose(-1, -2)
    checked = 0
    for i in torch.nonzero(vis).flatten().tolist():
        x_over_z = cam_points[i, :2] / cam_points[i, 2]
        if model != "OPENCV_FISHEYE" and x_over_z.abs().max() > 0.3:
            continue  # near the border J is evaluated at the clamped point (tested below)
        jac = torch.autograd.functional.jacobian(lambda p: project(model, params, p)[0], cam_points[i])
        cov = jac @ pose[:3, :3] @ sigma3[i] @ pose[:3, :3].T @ jac.T + EPS2D * torch.eye(2, dtype=torch.float64)
        a, b, c = proj.conics[i]
        assert torch.allclose(torch.linalg.inv(cov), torch.stack([a, b, b, c]).reshape(2, 2), rtol=1e-9), i
        r = proj.radii[i].double()
        # beyond the radius (marginal distance r / sigma_axis) alpha is below 1/255, or past 3.33 sigma
        reach = torch.minimum(torch.tensor(3.33), r / torch.sqrt(torch.diagonal(cov)))
        assert torch.all((opacities[i] * torch.exp(-0.5 * reach ** 2) < 1 / 255) | (reach >= 3.33))
        checked += 1
    assert checked >= 10


def test_far_off_view_splats_use_clamped_jacobian():
    params = torch.tensor(CAMERAS["PINHOLE"], dtype=torch.float64)
    means = torch.tensor([[1.2, 0.0, 1.0], [0.2, 0.0, 1.0]], dtype=torch.float64)  # x/z = 1.2: far beyond the edge
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64)
    log_scales = torch.log(torch.full((2, 3), 0.5, dtype=torch.float64))
    proj = project_gaussians(means, quats, log_scales, torch.full((2,), 0.9, dtype=torch.float64), "PINHOLE",
                             params, torch.eye(4, dtype=torch.float64), W, H)
    # unclamped, the x variance would grow by (1 + 1.2^2) * 0.25 * fx^2; clamped to 1.3x the field it stays bounded
    lim = 1.3 * (W - 17.0) / 40.0 * 1.0 + 0.0
    cov_xx = proj.conics[0, 2] / (proj.conics[0, 0] * proj.conics[0, 2] - proj.conics[0, 1] ** 2)
    assert cov_xx < 40.0 ** 2 * 0.25 * (1 + (lim * 1.2) ** 2) + EPS2D


def reference_composite(means2d, conics, colors, opacities, radii, depths, background):
    """gsplat's per-pixel loop, literally (slow; float64)."""
    image = torch.zeros(H, W, 3, dtype=torch.float64)
    alpha_out = torch.zeros(H, W, dtype=torch.float64)
    order = [i for i in torch.argsort(depths, stable=True).tolist() if radii[i].min() > 0]
    for row in range(H):
        for col in range(W):
            px, py = col + 0.5, row + 0.5
            t, pix = 1.0, torch.zeros(3, dtype=torch.float64)
            for g in order:
                if abs(means2d[g, 0] - px) > radii[g, 0] or abs(means2d[g, 1] - py) > radii[g, 1]:
                    continue
                a, b, c = conics[g].tolist()
                dx, dy = float(means2d[g, 0] - px), float(means2d[g, 1] - py)
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(MAX_ALPHA, float(opacities[g]) * math.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if t * (1 - alpha) <= T_MIN:
                    break
                pix += colors[g] * alpha * t
                t *= 1 - alpha
            image[row, col] = pix + t * background
            alpha_out[row, col] = 1 - t
    return image, alpha_out


def test_compositor_follows_gsplat_kernel_rules():
    params = torch.tensor(CAMERAS["OPENCV"], dtype=torch.float64)
    means, quats, log_scales, opacities, colors = gaussians(150, 3, spread=0.5)
    opacities[:40] = 0.995  # a dense opaque cluster: the 0.999 clamp and early termination (T <= 1e-4)
    means[:40, :2] *= 0.3
    log_scales[:40] = math.log(0.12)
    opacities[40:50] = 0.003  # below 1/255: never drawn
    proj = project_gaussians(means, quats, log_scales, opacities, "OPENCV", params, torch.eye(4, dtype=torch.float64),
                             W, H)
    background = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    image, alpha = rasterize(proj, colors, opacities, W, H, background)
    ref_image, ref_alpha = reference_composite(proj.means2d, proj.conics, colors, opacities, proj.radii,
                                               proj.depths, background)
    assert torch.allclose(image, ref_image, atol=1e-10)
    assert torch.allclose(alpha[..., 0], ref_alpha, atol=1e-10)
    assert (ref_alpha > 1 - 2e-4).sum() > 20  # early termination happened somewhere
    assert (ref_alpha < 0.5).sum() > 20  # and background shows elsewhere


@pytest.mark.parametrize("model", ["OPENCV", "OPENCV_FISHEYE", "SIMPLE_RADIAL"])
def test_gradients_match_finite_differences(model):
    """d(loss)/d(focal, pp, distortion, pose) through projection and compositor against central differences."""
    torch.manual_seed(0)
    fx, fy, cx, cy, extra = Camera(1, model, W, H, CAMERAS[model]).split()
    cam = Camera(1, model, W, H, CAMERAS[model])
    rig = CameraRig([cam], [0], look(4)[None], scene_scale=2.0, dtype=torch.float64)
    means, quats, log_scales, opacities, colors = gaussians(120, 5, spread=0.5)
    weights = torch.rand(H, W, 3, dtype=torch.float64)
    with torch.no_grad():  # a generic point, not exactly zero deltas
        rig.log_focal.fill_(0.01)
        rig.pp.copy_(torch.tensor([[0.004, -0.003]]))
        rig.pose.copy_(torch.tensor([[0.002, -0.001, 0.003, 0.001, 0.002, -0.001]]))

    def loss() -> torch.Tensor:
        params = rig.camera_params(0)
        proj = project_gaussians(means, quats, log_scales, opacities, model, params, rig.cam_from_world(0), W, H)
        image, _ = rasterize(proj, colors, opacities, W, H)
        return (image * weights).sum()

    rig.zero_grad()
    loss().backward()
    leaves = {"focal": rig.log_focal, "pp": rig.pp, "distortion": rig.distortion, "pose": rig.pose}
    for name, leaf in leaves.items():
        grad = leaf.grad.clone().flatten()
        assert torch.isfinite(grad).all()
        numeric = torch.zeros_like(grad)
        for k in range(grad.numel()):
            h = 1e-6
            with torch.no_grad():
                flat = leaf.view(-1)
                flat[k] += h
                up = float(loss())
                flat[k] -= 2 * h
                down = float(loss())
                flat[k] += h
            numeric[k] = (up - down) / (2 * h)
        scale = numeric.abs().max()
        assert scale > 1e-3, name  # the loss does depend on it
        assert torch.allclose(grad, numeric, atol=1e-5 * scale, rtol=1e-4), (name, grad, numeric)
