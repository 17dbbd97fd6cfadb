"""engine.stmap: numpy lens projection, the Cycles fisheye fit and the ST-maps, against engine.projection (torch).

The maps are checked as maps: bilinear lookups composed both ways return the pixel they started from, and points
projected by the true lens (engine.projection, the reference) and by the render camera (an independent
re-derivation here: K for the pinhole, bisection on Cycles' polynomial for the fisheye) land where the maps say.
"""
import math

import numpy as np
import pytest
import torch

from engine import projection, stmap
from engine.bundle import Camera
from engine.camera_models import get_model, lens_field_length
from engine.errors import CameraModelError

F185 = 160 / math.radians(185.0)  # equidistant focal giving 185 degrees across a 160 px width
OPENCV = Camera(1, "OPENCV", 200, 150, [150.0, 152.0, 97.3, 70.0, -0.2, 0.05, 0.01, -0.005])
FISHEYE_185 = Camera(2, "OPENCV_FISHEYE", 160, 160, [F185, F185, 80.0, 80.0, 0.02, -0.01, 0.002, 0.0])
SENSOR = 36.0


def _lens_field(n: int = 9, radius: float = 2.4, strength: float = 1.0) -> Camera:
    """A 185-degree equidistant lens bent by a smooth field that no radial model holds (a LENS_FIELD)."""
    g = np.linspace(-radius, radius, n)
    a, b = np.meshgrid(g, g)  # row-major over (row y, column x), as the model's layout
    d = strength * np.stack([0.03 * a * b + 0.02 * np.sin(b), 0.025 * (a * a - b * b) / 2 - 0.015 * a], -1)
    params = [F185, F185, 81.5, 79.0, radius, float(n), *d.ravel()]
    assert len(params) == lens_field_length(n)
    return Camera(3, "LENS_FIELD", 160, 160, params)


LENS_FIELD = _lens_field()


def _render(camera: Camera) -> stmap.RenderCamera:
    if get_model(camera.model).fisheye:
        return stmap.fit_fisheye_render(camera, SENSOR)[0]
    fx, fy, cx, cy, _ = camera.split()
    return stmap.RenderPinhole(camera.width, camera.height, fx, fy, cx, cy)


def _bilinear(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Bilinear sample of image (H, W, C) at COLMAP positions (..., 2) (pixel centres at +0.5)."""
    h, w = image.shape[:2]
    x, y = pixels[..., 0] - 0.5, pixels[..., 1] - 0.5
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - wx) + image[y0, x0 + 1] * wx
    bottom = image[y0 + 1, x0] * (1 - wx) + image[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _lookup(st_map: np.ndarray, pixels: np.ndarray, width: int, height: int):
    """Position (in a width x height image) and validity that an ST-map gives at pixels; valid only where all four
    bilinear neighbours are valid and the position lies inside the map."""
    h, w = st_map.shape[:2]
    sample = _bilinear(st_map.astype(np.float64), pixels)
    inside = ((pixels[..., 0] >= 0.5) & (pixels[..., 0] <= w - 0.5) & (pixels[..., 1] >= 0.5)
              & (pixels[..., 1] <= h - 0.5))
    return stmap.pixels_from_st(sample[..., :2], width, height), inside & (sample[..., 2] > 1 - 1e-6)


@pytest.mark.parametrize("camera", [OPENCV, FISHEYE_185, LENS_FIELD,
                                    Camera(4, "FULL_OPENCV", 200, 150, [150.0, 150.0, 100, 75, -0.2, 0.05, 0.01,
                                                                        -0.005, 0.01, 0.1, 0.0, 0.0]),
                                    Camera(5, "THIN_PRISM_FISHEYE", 200, 150, [70.0, 72.0, 100, 75, 0.05, -0.02,
                                                                               0.001, 0.002, 0.01, -0.002, 0.001,
                                                                               0.002])],
                         ids=lambda c: c.model)
def test_numpy_projection_matches_engine_projection(camera):
    rng = np.random.default_rng(0)
    rays = rng.normal(size=(4000, 3))  # all directions, behind the camera too
    pixels, valid = stmap.project(camera, rays)
    ref, ref_valid = projection.project(camera.model, camera.params, torch.from_numpy(rays))
    ref, ref_valid = ref.numpy(), ref_valid.numpy()
    np.testing.assert_array_equal(valid, ref_valid)
    assert 0.3 < valid.mean()
    assert np.abs(pixels - ref)[valid].max() < 1e-9


@pytest.mark.parametrize("camera", [OPENCV, FISHEYE_185, LENS_FIELD], ids=lambda c: c.model)
def test_distort_and_undistort_are_inverse(camera):
    maps = stmap.st_maps(camera, _render(camera))
    width, height = camera.width, camera.height
    big = maps.render
    assert maps.distort.dtype == maps.undistort.dtype == np.float32
    assert maps.distort.shape == (height, width, 3) and maps.undistort.shape == (big.height, big.width, 3)
    assert (big.width, big.height) == (width + 2 * maps.margins[0], height + 2 * maps.margins[1])

    plate = stmap.pixel_grid(width, height)
    q, q_valid = _lookup(maps.distort, plate, big.width, big.height)
    back, back_valid = _lookup(maps.undistort, q, width, height)
    ok = q_valid & back_valid
    # The whole plate is covered: the overscan holds every ray (the fisheyes' corners are inside their fields).
    assert ok[2:-2, 2:-2].all()
    assert np.linalg.norm(back - plate, axis=-1)[ok].max() < 0.05

    cg = stmap.pixel_grid(big.width, big.height)
    p, p_valid = _lookup(maps.undistort, cg, width, height)
    again, again_valid = _lookup(maps.distort, p, big.width, big.height)
    ok = p_valid & again_valid
    assert ok.mean() > 0.5
    assert np.linalg.norm(again - cg, axis=-1)[ok].max() < 0.05


def _fisheye_pixels(render: stmap.RenderFisheye, rays: np.ndarray) -> np.ndarray:
    """Cycles' polynomial camera inverted independently: bisection on theta(r) = the ray's angle."""
    theta = np.arctan2(np.hypot(rays[:, 0], rays[:, 1]), rays[:, 2])
    k = render.coeffs
    lo, hi = np.zeros_like(theta), np.full_like(theta, render.sensor_width)
    for _ in range(80):
        mid = (lo + hi) / 2
        below = -sum(c * mid ** i for i, c in enumerate(k)) < theta
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    r = (lo + hi) / 2
    phi = np.arctan2(rays[:, 1], rays[:, 0])
    mm = render.sensor_width / render.width
    return np.c_[render.width / 2 + r * np.cos(phi) / mm,
                 render.height / 2 + r * np.sin(phi) / (mm * render.pixel_aspect)]


@pytest.mark.parametrize("camera", [OPENCV, FISHEYE_185, LENS_FIELD], ids=lambda c: c.model)
def test_maps_send_lens_projections_to_render_projections(camera):
    maps = stmap.st_maps(camera, _render(camera))
    big = maps.render
    rng = np.random.default_rng(1)
    # Rays through random plate pixels (engine.projection's unprojection), at random depths.
    pixels = rng.uniform([3, 3], [camera.width - 3, camera.height - 3], (400, 2))
    rays, ok = projection.unproject_directions(camera.model, camera.params, torch.from_numpy(pixels))
    points = (rays.numpy() * rng.uniform(0.5, 5.0, (400, 1)))[ok.numpy()]
    lens_px, valid = projection.project(camera.model, camera.params, torch.from_numpy(points))
    lens_px = lens_px.numpy()[valid.numpy()]
    points = points[valid.numpy()]
    if isinstance(big, stmap.RenderPinhole):
        render_px = np.c_[big.fx * points[:, 0] / points[:, 2] + big.cx, big.fy * points[:, 1] / points[:, 2] + big.cy]
        assert (big.fx, big.fy) == tuple(camera.params[:2])  # overscan keeps the focal length in pixels
    else:
        render_px = _fisheye_pixels(big, points)
    inside = np.all((render_px > 1) & (render_px < [big.width - 1, big.height - 1]), axis=1)
    assert inside.mean() > 0.95

    q, q_ok = _lookup(maps.distort, lens_px[inside], big.width, big.height)
    p, p_ok = _lookup(maps.undistort, render_px[inside], camera.width, camera.height)
    assert q_ok.all() and p_ok.all()
    assert np.linalg.norm(q - render_px[inside], axis=1).max() < 0.03
    assert np.linalg.norm(p - lens_px[inside], axis=1).max() < 0.03


def test_overscan_is_the_least_that_holds_the_plate(monkeypatch):
    maps = stmap.st_maps(OPENCV, _render(OPENCV))
    mx, my = maps.margins
    assert mx > 10 and my > 10  # barrel distortion: the plate's corners see well past the pinhole frame
    q = stmap.pixels_from_st(maps.distort[..., :2].astype(np.float64), maps.render.width, maps.render.height)
    assert min(q[..., 0].min(), maps.render.width - q[..., 0].max()) == pytest.approx(0.5, abs=1.0)
    assert min(q[..., 1].min(), maps.render.height - q[..., 1].max()) == pytest.approx(0.5, abs=1.0)
    assert (maps.render.cx, maps.render.cy) == (OPENCV.params[2] + mx, OPENCV.params[3] + my)
    # Margins are capped at MAX_OVERSCAN of the size; plate pixels whose ray falls outside are invalid.
    monkeypatch.setattr(stmap, "MAX_OVERSCAN", 0.05)
    capped = stmap.st_maps(OPENCV, _render(OPENCV))
    assert capped.margins == (10, 8)
    valid = capped.distort[..., 2] > 0
    assert 0.5 < valid.mean() < 1.0 and valid[75, 100] and not valid[0, 0]


def test_fisheye_fit_covers_past_90_degrees_and_reports_its_error():
    render, rms = stmap.fit_fisheye_render(FISHEYE_185, SENSOR)
    assert render.fov > math.radians(185) and render.coeffs[0] == 0.0
    assert rms < 0.2
    # An equidistant lens: the polynomial is linear, nothing left over.
    zero = _lens_field(strength=0.0)
    zero.params[2:4] = [80.0, 80.0]
    flat, flat_rms = stmap.fit_fisheye_render(zero, SENSOR)
    assert flat_rms < 0.01
    assert flat.coeffs[1] == pytest.approx(-1.0 / (F185 * SENSOR / 160), rel=1e-4)
    # A lens that is not radially symmetric: the RMS is what Cycles' rays really miss by, measured here with
    # engine.projection.
    render, rms = stmap.fit_fisheye_render(LENS_FIELD, SENSOR)
    u, v = np.meshgrid(np.arange(0.5, 160, 4.0), np.arange(0.5, 160, 4.0))
    pixels = np.stack([u, v], -1).reshape(-1, 2)
    rays, seen = render.rays(pixels)
    back, valid = projection.project("LENS_FIELD", LENS_FIELD.params, torch.from_numpy(rays))
    err = np.linalg.norm(back.numpy() - pixels, axis=1)[seen & valid.numpy()]
    assert 0.3 < rms == pytest.approx(float(np.sqrt(np.mean(err ** 2))), rel=0.1)


def test_bad_input():
    with pytest.raises(CameraModelError, match="not a fisheye model"):
        stmap.fit_fisheye_render(OPENCV, SENSOR)
    with pytest.raises(CameraModelError, match="render camera is 100x75 but the lens is 200x150"):
        stmap.st_maps(OPENCV, stmap.RenderPinhole(100, 75, 150.0, 152.0, 50.0, 37.0))
    short = Camera(3, "LENS_FIELD", 160, 160, LENS_FIELD.params[:-1])
    with pytest.raises(CameraModelError, match="LENS_FIELD takes 6 \\+ 2 n\\^2 parameters"):
        stmap.st_maps(short, _render(FISHEYE_185))
