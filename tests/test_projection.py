"""Camera model maths (engine/projection.py, engine/camera_models.py) against pycolmap 4.2.1 and closed forms."""
from __future__ import annotations

import math

import numpy as np
import pycolmap
import pytest
import torch

from engine import projection
from engine.camera_models import (MODELS, distort_equidistant, distort_normalized, fisheye_theta_distorted,
                                  get_model)
from engine.errors import CameraModelError

# Realistic but strong distortion for every model (COLMAP order).
EXTRA = {
    "SIMPLE_PINHOLE": [],
    "PINHOLE": [],
    "SIMPLE_RADIAL": [-0.15],
    "RADIAL": [-0.2, 0.05],
    "OPENCV": [-0.28, 0.09, 0.0015, -0.001],
    "FULL_OPENCV": [-0.25, 0.08, 0.001, -0.002, -0.01, 0.05, 0.01, 0.002],
    "OPENCV_FISHEYE": [0.05, -0.01, 0.003, -0.0005],
    "SIMPLE_RADIAL_FISHEYE": [0.03],
    "RADIAL_FISHEYE": [0.03, -0.005],
    "THIN_PRISM_FISHEYE": [0.05, -0.01, 0.001, -0.002, 0.003, -0.0005, 0.001, -0.001],
}
# (width, height, focal / max side, fy / fx, principal point as a fraction of the image)
CONFIGS = {
    "landscape": (200, 150, 1.0, 1.0, (0.5, 0.5)),
    "portrait": (120, 180, 0.9, 1.0, (0.5, 0.5)),
    "off_centre": (200, 150, 1.0, 1.0, (0.58, 0.4)),
    "fx_ne_fy": (200, 150, 1.0, 0.93, (0.47, 0.52)),
}
ALL_MODELS = list(MODELS)
FISHEYE_MODELS = [m for m in MODELS if MODELS[m].fisheye]
PERSPECTIVE_MODELS = [m for m in MODELS if not MODELS[m].fisheye]


def camera_params(name: str, config: str) -> tuple[int, int, list[float]]:
    """(W, H, params); fisheye focal lengths are shorter so that the image corners pass 90 degrees."""
    w, h, focal, aspect, (px, py) = CONFIGS[config]
    model = MODELS[name]
    fx = focal * max(w, h) * (0.36 if model.fisheye else 1.0)
    fy = fx if model.shared_focal else fx * aspect
    return w, h, model.join(fx, fy, px * w, py * h, EXTRA[name])


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def colmap(name: str, w: int, h: int, params: list[float]) -> pycolmap.Camera:
    return pycolmap.Camera(model=name, width=w, height=h, params=params)


def pixel_grid(w: int, h: int, n: int = 25) -> torch.Tensor:
    """Pixels covering the whole image, borders and pixel centres included."""
    u = torch.cat([torch.linspace(0, w, n, dtype=torch.float64), torch.tensor([0.5, w - 0.5], dtype=torch.float64)])
    v = torch.cat([torch.linspace(0, h, n, dtype=torch.float64), torch.tensor([0.5, h - 0.5], dtype=torch.float64)])
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)


def focal(params: list[float], name: str) -> float:
    return float(params[0]) if MODELS[name].shared_focal else min(params[0], params[1])


# --- against pycolmap ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_MODELS)
def test_project_matches_pycolmap(name):
    gen = torch.Generator().manual_seed(1)
    for config in CONFIGS:
        w, h, params = camera_params(name, config)
        cam = colmap(name, w, h, params)
        if MODELS[name].fisheye:  # directions up to 85 degrees (COLMAP projects the front hemisphere only)
            theta = torch.rand(400, generator=gen, dtype=torch.float64) * math.radians(85)
            phi = torch.rand(400, generator=gen, dtype=torch.float64) * 2 * math.pi
            dirs = torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], -1)
        else:  # pinhole-plane points that land on the image and a margin around it
            half = torch.tensor([0.6 * w / params[0], 0.6 * h / params[0]], dtype=torch.float64)
            xy = (torch.rand(400, 2, generator=gen, dtype=torch.float64) * 2 - 1) * half
            dirs = torch.cat([xy, torch.ones(400, 1, dtype=torch.float64)], -1)
        depth = 0.5 + 4 * torch.rand(400, 1, generator=gen, dtype=torch.float64)
        points = torch.cat([dirs * depth, f64([[0.0, 0.0, 2.0], [1e-7, -2e-7, 1.0]])])  # + on/near axis
        pixels, valid = projection.project(name, f64(params), points)
        expected = cam.img_from_cam(points.numpy())
        assert np.isfinite(expected).all()
        assert valid.all(), f"{name}/{config}: {int((~valid).sum())} points marked invalid"
        err = np.abs(pixels.numpy() - expected).max()
        assert err < 1e-6, f"{name}/{config}: {err} px from pycolmap"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_unproject_matches_pycolmap(name):
    for config in CONFIGS:
        w, h, params = camera_params(name, config)
        pixels = pixel_grid(w, h, 15)
        rays, valid = projection.unproject(name, f64(params), pixels)
        expected = colmap(name, w, h, params).cam_from_img(pixels.numpy())
        assert torch.all(rays[..., 2] == 1)
        if MODELS[name].fisheye:  # z = 1 rays exist below 90 degrees only: compare those, and require plenty
            assert 0.25 < valid.double().mean() < 1.0
        else:
            assert valid.all()
        ours, theirs = rays.numpy()[valid.numpy()], np.c_[expected, np.ones(len(expected))][valid.numpy()]
        if MODELS[name].fisheye:  # compare directions (angle x focal ~ pixels), not tan(theta), which explodes at 90
            ours, theirs = (v / np.linalg.norm(v, axis=-1, keepdims=True) for v in (ours, theirs))
        err = np.abs(ours - theirs).max() * focal(params, name)
        assert err < 1e-6, f"{name}/{config}: {err} px from pycolmap"


# --- round trips ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_MODELS)
def test_round_trip_over_the_image(name):
    """pixel -> unit direction -> pixel over the whole image (fisheye corners beyond 90 degrees included)."""
    behind = 0
    for config in CONFIGS:
        w, h, params = camera_params(name, config)
        pixels = pixel_grid(w, h)
        dirs, valid = projection.unproject_directions(name, f64(params), pixels)
        assert valid.all(), f"{name}/{config}: {int((~valid).sum())} pixels not undistorted"
        assert torch.allclose(dirs.norm(dim=-1), torch.ones(len(dirs), dtype=torch.float64), atol=1e-14)
        back, ok = projection.project(name, f64(params), dirs * 3.0)
        assert ok.all()
        err = (back - pixels).abs().max().item()
        assert err < 1e-6, f"{name}/{config}: round trip off by {err} px"
        behind += int((dirs[..., 2] < 0).sum())
    assert (behind > 0) == MODELS[name].fisheye, "the fisheye test images should reach past 90 degrees"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_distort_undistort_round_trip(name):
    w, h, params = camera_params(name, "off_centre")
    p = f64(params)
    xy, valid = projection.undistort(name, p, projection.distort(name, p, torch.zeros(1, 2, dtype=torch.float64)))
    assert valid.all() and xy.abs().max() < 1e-15
    gen = torch.Generator().manual_seed(2)
    half = 0.5 * math.hypot(w, h) / params[0]
    xy = (torch.rand(2000, 2, generator=gen, dtype=torch.float64) * 2 - 1) * min(half, 1.5)
    back, valid = projection.undistort(name, p, projection.distort(name, p, xy))
    assert valid.all()
    assert (back - xy).abs().max().item() * params[0] < 1e-6
    # distort agrees with project on the same rays
    pixels, _ = projection.project(name, p, torch.cat([xy, torch.ones(len(xy), 1, dtype=torch.float64)], -1))
    k = projection.intrinsics_matrix(name, p)
    d = projection.distort(name, p, xy)
    assert torch.allclose(d @ k[:2, :2].T + k[:2, 2], pixels, atol=1e-9)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_unproject_inverts_project(name):
    gen = torch.Generator().manual_seed(3)
    w, h, params = camera_params(name, "fx_ne_fy")
    p = f64(params)
    if MODELS[name].fisheye:  # all around, including behind the image plane, up to the model's limit
        top = min(float(projection.radius_limit(name, p)), math.radians(170)) * 0.99
        theta = torch.rand(500, generator=gen, dtype=torch.float64) * top
        phi = torch.rand(500, generator=gen, dtype=torch.float64) * 2 * math.pi
        dirs = torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], -1)
        points = dirs * (0.5 + 4 * torch.rand(500, 1, generator=gen, dtype=torch.float64))
        pixels, valid = projection.project(name, p, points)
        assert valid.all() and (points[:, 2] < 0).any()
        back, ok = projection.unproject_directions(name, p, pixels)
        assert ok.all()
        assert (back - dirs).abs().max() < 1e-9
    else:
        xy = (torch.rand(500, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 0.8
        depth = 0.5 + 4 * torch.rand(500, 1, generator=gen, dtype=torch.float64)
        points = torch.cat([xy, torch.ones(500, 1, dtype=torch.float64)], -1) * depth
        pixels, valid = projection.project(name, p, points)
        assert valid.all()
        rays, ok = projection.unproject(name, p, pixels)
        assert ok.all()
        assert (rays * points[:, 2:] - points).abs().max() < 1e-9


# --- fisheye beyond 90 degrees (the intentional difference from COLMAP) ----------------------------------------

def test_fisheye_projects_points_behind_the_image_plane():
    k1, k2, k3, k4 = EXTRA["OPENCV_FISHEYE"]
    params = [300.0, 310.0, 400.0, 300.0, k1, k2, k3, k4]
    theta, phi = math.radians(110), math.radians(30)
    point = f64([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)]) * 2.0
    (pixel, valid) = projection.project("OPENCV_FISHEYE", f64(params), point)
    theta_d = theta * (1 + k1 * theta ** 2 + k2 * theta ** 4 + k3 * theta ** 6 + k4 * theta ** 8)  # Kannala-Brandt
    expected = [400 + 300 * theta_d * math.cos(phi), 300 + 310 * theta_d * math.sin(phi)]
    assert bool(valid)
    assert np.allclose(pixel.numpy(), expected, atol=1e-9)
    assert np.isnan(colmap("OPENCV_FISHEYE", 800, 600, params).img_from_cam(point.numpy()[None])).all()
    # beyond the limit angle (where theta_d stops increasing: ~131.6 deg here) the point is invalid
    limit = float(projection.radius_limit("OPENCV_FISHEYE", params))
    assert math.radians(130) < limit < math.radians(132)
    behind = f64([[math.sin(limit + 0.01), 0.0, math.cos(limit + 0.01)],
                           [math.sin(limit - 0.01), 0.0, math.cos(limit - 0.01)]])
    assert projection.project("OPENCV_FISHEYE", f64(params), behind)[1].tolist() == [False, True]
    # a lens that never folds sees almost all the way round; straight behind (theta = pi) has no direction
    k = 0.03
    params = [300.0, 400.0, 300.0, k]
    points = f64([[math.sin(math.radians(179)), 0.0, math.cos(math.radians(179))], [0.0, 0.0, -1.0]])
    pixels, valid = projection.project("SIMPLE_RADIAL_FISHEYE", f64(params), points)
    theta = math.radians(179)
    assert valid.tolist() == [True, False] and torch.isfinite(pixels).all()
    assert pixels[0].tolist() == pytest.approx([400 + 300 * theta * (1 + k * theta ** 2), 300.0], abs=1e-9)


# --- validity, folds and termination -----------------------------------------------------------------------

def test_radius_limit_matches_closed_form():
    # SIMPLE_RADIAL: d/dr (r + k r^3) = 0 at r = 1 / sqrt(-3k)
    step = (math.pi / 2) / 2048
    for k in (-0.05, -0.5, -3.0):
        fold = 1 / math.sqrt(-3 * k)
        limit = float(projection.radius_limit("SIMPLE_RADIAL", [100.0, 50.0, 50.0, k]))
        assert 0 <= math.atan(fold) - math.atan(limit) <= 2.01 * step
    # RADIAL_FISHEYE with k1 = 0: d/dtheta (theta + k2 theta^5) = 0 at theta = (-1 / (5 k2)) ** 0.25
    fold = (1 / 0.05) ** 0.25
    limit = float(projection.radius_limit("RADIAL_FISHEYE", [100.0, 50.0, 50.0, 0.0, -0.01]))
    assert 0 <= fold - limit <= 2.01 * math.pi / 2048
    assert math.isinf(projection.radius_limit("OPENCV", [100.0, 100, 50, 50, 0, 0, 0, 0]))
    assert float(projection.radius_limit("OPENCV_FISHEYE", [100.0, 100, 50, 50, 0, 0, 0, 0])) == pytest.approx(math.pi)
    batched = projection.radius_limit("SIMPLE_RADIAL", f64([[100.0, 50, 50, -0.5], [100.0, 50, 50, 0.1]]))
    assert batched.shape == (2,) and math.isinf(batched[1])


@pytest.mark.parametrize("name, params", [
    ("OPENCV", [100.0, 100.0, 150.0, 100.0, -0.5, 0.0, 0.0, 0.0]),  # folds at r = 0.816, r_d at most 0.544
    ("FULL_OPENCV", [100.0, 100.0, 150.0, 100.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0]),  # pole at r = 1
    ("SIMPLE_RADIAL", [1000.0, 150.0, 100.0, -50.0]),  # folds at r = 0.08
    ("OPENCV_FISHEYE", [60.0, 60.0, 150.0, 100.0, -0.3, 0.0, 0.0, 0.0]),  # folds at theta = 1.05
])
def test_non_invertible_coefficients_terminate_and_are_reported(name, params, monkeypatch):
    calls = []
    jacobian = projection.distortion_jacobian
    monkeypatch.setattr(projection, "distortion_jacobian", lambda *a: calls.append(1) or jacobian(*a))
    pixels = pixel_grid(300, 200, 41)
    p = f64(params)
    rays, valid = projection.unproject_directions(name, p, pixels)
    assert len(calls) <= projection.NEWTON_MAX_ITERATIONS + 1
    assert torch.isfinite(rays).all()
    # ground truth: the largest distorted radius the lens reaches is r_d at the fold
    limit = float(projection.radius_limit(name, p))
    model = MODELS[name]
    extra = params[3:] if model.shared_focal else params[4:]
    r_max = (fisheye_theta_distorted(name, extra, limit) if model.fisheye
             else distort_normalized(name, extra, limit, 0.0)[0])
    r_d = torch.hypot((pixels[:, 0] - params[-len(extra) - 2]) / params[0],
                      (pixels[:, 1] - params[-len(extra) - 1]) / params[0])
    assert not valid[r_d > r_max * 1.001].any()
    inside = r_d < r_max * 0.98
    assert inside.sum() > 20 and valid[inside].all()
    back, ok = projection.project(name, p, rays[inside])
    assert ok.all() and (back - pixels[inside]).abs().max() < 1e-6


def test_project_marks_points_past_the_fold_invalid():
    params = f64([100.0, 100.0, 150.0, 100.0, -0.5, 0.0, 0.0, 0.0])  # fold at r = 0.816
    points = f64([[0.7, 0.0, 1.0], [0.0, 0.9, 1.0], [1.5, 1.5, 1.0], [0.1, 0.1, -1.0], [0.1, 0.1, 0.0]])
    assert projection.project("OPENCV", params, points)[1].tolist() == [True, False, False, False, False]


# --- gradients and dtypes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE", "THIN_PRISM_FISHEYE"])
def test_gradcheck(name):
    w, h, params = camera_params(name, "fx_ne_fy")
    p = f64(params).requires_grad_(True)
    if MODELS[name].fisheye:
        points = f64([[0.3, -0.2, 1.0], [0.0, 0.0, 1.5], [1e-7, 2e-7, 1.5], [1.2, 0.4, -0.5], [-0.5, 0.7, 0.1]])
    else:
        points = f64([[0.3, -0.2, 1.0], [0.0, 0.0, 2.0], [-0.35, 0.25, 0.8]])
    points.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, x: projection.project(name, q, x)[0], (p, points))
    pixels = f64([[0.3 * w, 0.8 * h], [0.5 * w, 0.5 * h], [0.95 * w, 0.1 * h]]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, u: projection.unproject(name, q, u)[0], (p, pixels))
    assert torch.autograd.gradcheck(lambda q, u: projection.unproject_directions(name, q, u)[0], (p, pixels))


@pytest.mark.parametrize("name", ["SIMPLE_RADIAL", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE", "THIN_PRISM_FISHEYE"])
def test_float32(name):
    w, h, params = camera_params(name, "off_centre")
    pixels = pixel_grid(w, h, 15)
    dirs64, valid64 = projection.unproject_directions(name, f64(params), pixels)
    p32 = torch.tensor(params, dtype=torch.float32, requires_grad=True)
    dirs32, valid32 = projection.unproject_directions(name, p32, pixels.float())
    assert dirs32.dtype == torch.float32 and valid32.all() and valid64.all()
    assert (dirs32.double() - dirs64).abs().max() < 1e-5
    back, ok = projection.project(name, p32, dirs32)
    assert back.dtype == torch.float32 and ok.all()
    assert (back.double() - pixels).abs().max() < 5e-3
    back.sum().backward()
    assert torch.isfinite(p32.grad).all() and p32.grad.abs().sum() > 0


# --- batching, intrinsics, bad input --------------------------------------------------------------------------

def test_batched_params_broadcast_against_points():
    name = "OPENCV"
    cams = f64([camera_params(name, c)[2] for c in CONFIGS])  # (4, 8)
    points = torch.rand(4, 30, 3, dtype=torch.float64) * 0.6 - 0.3
    points[..., 2] = 1.0 + points[..., 2]
    pixels, valid = projection.project(name, cams[:, None, :], points)
    assert pixels.shape == (4, 30, 2) and valid.all()
    for i in range(4):
        assert torch.equal(pixels[i], projection.project(name, cams[i], points[i])[0])
    rays, ok = projection.unproject(name, cams[:, None, :], pixels)
    assert ok.all() and torch.allclose(rays * points[..., 2:], points, atol=1e-12)


def test_intrinsics_matrix_matches_pycolmap():
    for name in ("SIMPLE_RADIAL", "OPENCV_FISHEYE"):
        w, h, params = camera_params(name, "fx_ne_fy")
        k = projection.intrinsics_matrix(name, params)
        assert np.allclose(k.numpy(), colmap(name, w, h, params).calibration_matrix(), atol=0)
    batch = projection.intrinsics_matrix("PINHOLE", f64([[100.0, 90, 50, 40], [10.0, 20, 30, 40]]))
    assert batch.shape == (2, 3, 3) and batch[1, 1, 1] == 20 and batch[1, 0, 2] == 30 and batch[0, 2, 2] == 1


def test_bad_input_is_named():
    with pytest.raises(CameraModelError, match="OPENCV takes 8 parameters"):
        projection.project("OPENCV", [100.0, 100.0, 50.0, 50.0], torch.zeros(3, 3))
    with pytest.raises(CameraModelError, match="unknown camera model 'KB4'"):
        projection.project("KB4", [100.0], torch.zeros(3, 3))
    with pytest.raises(CameraModelError, match=r"shape \(\.\.\., 2\)"):
        projection.unproject("PINHOLE", [100.0, 100.0, 50.0, 50.0], torch.zeros(3, 3))
    with pytest.raises(CameraModelError, match="RADIAL takes 2 distortion parameters"):
        distort_normalized("RADIAL", [0.1], 0.1, 0.2)
    with pytest.raises(CameraModelError, match="fisheye"):
        distort_normalized("OPENCV_FISHEYE", [0.0] * 4, 0.1, 0.2)
    with pytest.raises(CameraModelError, match="not a fisheye"):
        fisheye_theta_distorted("OPENCV", [0.0] * 4, 0.1)


# --- the arithmetic-only functions (numpy / torch / float) ------------------------------------------------------

@pytest.mark.parametrize("name", ALL_MODELS)
def test_arithmetic_distortion_numpy_torch_and_pycolmap_agree(name):
    model = get_model(name)
    rng = np.random.default_rng(4)
    x, y = rng.uniform(-1.0, 1.0, (2, 50))
    extra = EXTRA[name]
    fn = distort_equidistant if model.fisheye else distort_normalized
    xd_np, yd_np = fn(name, extra, x, y)
    xd_t, yd_t = fn(name, [torch.tensor(e, dtype=torch.float64) for e in extra],
                    torch.from_numpy(x), torch.from_numpy(y))
    assert np.allclose(xd_np, xd_t.numpy(), rtol=1e-15, atol=0) and np.allclose(yd_np, yd_t.numpy(), rtol=1e-15, atol=0)
    scalar = fn(name, extra, float(x[0]), float(y[0]))
    assert scalar == pytest.approx((xd_np[0], yd_np[0]), rel=1e-15)
    # batched coefficients: one row per camera
    if extra:
        scaled = [np.array([[e], [0.5 * e]]) for e in extra]
        xd_b, _ = fn(name, scaled, x, y)
        assert xd_b.shape == (2, 50) and np.array_equal(xd_b[0], xd_np)
        assert np.allclose(xd_b[1], fn(name, [0.5 * e for e in extra], x, y)[0], rtol=1e-15)
    # and the numpy path alone reproduces COLMAP's pixels (the Blender side has no torch)
    w, h, params = camera_params(name, "off_centre")
    fx, fy, cx, cy, _ = model.split(params)
    if model.fisheye:
        theta = np.hypot(x, y)
        points = np.stack([x / theta * np.sin(theta), y / theta * np.sin(theta), np.cos(theta)], -1)
    else:
        points = np.stack([x, y, np.ones_like(x)], -1)
    expected = colmap(name, w, h, params).img_from_cam(points)
    assert np.allclose(np.stack([fx * xd_np + cx, fy * yd_np + cy], -1), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", FISHEYE_MODELS)
def test_fisheye_theta_distorted_matches_pycolmap_radius(name):
    model = get_model(name)
    extra = list(EXTRA[name])
    if name == "THIN_PRISM_FISHEYE":  # the radial part only: compare with tangential and prism terms zeroed
        extra[2] = extra[3] = extra[6] = extra[7] = 0.0
    params = model.join(250.0, 250.0, 300.0, 200.0, extra)
    theta = np.linspace(0.01, math.radians(89), 40)
    pixels = colmap(name, 600, 400, params).img_from_cam(np.stack([np.sin(theta), 0 * theta, np.cos(theta)], -1))
    assert np.allclose((pixels[:, 0] - 300.0) / 250.0, fisheye_theta_distorted(name, extra, theta), atol=1e-12)
    assert np.allclose(pixels[:, 1], 200.0, atol=1e-9)
    as_torch = fisheye_theta_distorted(name, [f64(e) for e in extra], torch.from_numpy(theta))
    assert np.allclose(as_torch.numpy(), fisheye_theta_distorted(name, extra, theta), rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", [m for m in ALL_MODELS if MODELS[m].extra_params])
def test_forward_mode_jacobian_matches_autograd(name):
    model = MODELS[name]
    extra = tuple(torch.tensor(e, dtype=torch.float64) for e in EXTRA[name])
    x = torch.tensor([0.3, -0.7, 0.05], dtype=torch.float64)
    y = torch.tensor([-0.4, 0.2, 0.9], dtype=torch.float64)
    _, _, (a, b, c, d) = projection.distortion_jacobian(model, extra, x, y)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda v: torch.stack(projection._distort_plane(model, extra, v[0], v[1])), torch.stack([x[i], y[i]]))
        assert torch.allclose(jac, torch.tensor([[a[i], b[i]], [c[i], d[i]]], dtype=torch.float64), atol=1e-13)
