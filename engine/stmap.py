# SPDX-License-Identifier: GPL-3.0-or-later
"""ST-maps between a real lens (the plate) and the camera Blender renders CG with, and the Cycles fisheye fit.

Numpy only (no torch, no bpy): this runs inside Blender's own Python, which has numpy but not torch, when a bundle
is imported. The distortion formulas are `engine.camera_models`' (arithmetic, shared with `engine.projection`);
what `engine.projection` does with torch around them (plane geometry, fold limits, LENS_FIELD's bilinear field) is
restated here in numpy with the same definitions, and its tests compare the two.

The render camera (what the bridge puts in Blender for a lens, `RenderPinhole` / `RenderFisheye`):
- perspective models: the ideal pinhole with the lens's fx, fy, cx, cy (the distortion goes on a MovieClip);
- fisheye models and LENS_FIELD: a Cycles FISHEYE_LENS_POLYNOMIAL camera fitted to the lens
  (`fit_fisheye_render`).
ST-maps assume the CG is rendered with that camera on a canvas grown by `margins` (mx, my) pixels on every side:
render size (W + 2 mx, H + 2 my) and the camera's sensor width scaled by the same factor as the width (shift scaled
by the inverse), which keeps the focal length in pixels and puts the plate's frame exactly in the middle. The
margins are the least whole number of pixels that holds every plate pixel's ray (plus bilinear support), at most
MAX_OVERSCAN of the size per side.

ST convention (Nuke's STMap, Blender's Map UV node: measured, no offset): a position (x, y) in COLMAP pixels
(centres at +0.5, y down) of an image W x H is s = x / W, t = 1 - y / H (t measured from the bottom). Maps are
arrays (rows, columns, 3) = (s, t, valid), row 0 the top of the image. `distort` has the plate's size: for each
plate pixel, where to sample the CG render (distorts CG to match the plate). `undistort` has the render's size:
for each render pixel, where to sample the plate. valid is 1 where the other image sees the pixel's ray inside its
frame, else 0; where no position exists (no ray, outside the lens's valid region) s = t = -1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .bundle import Camera
from .camera_models import (distort_equidistant, distort_normalized, get_model, lens_field_grid_size,
                            radial_distortion_factor)
from .errors import CameraModelError

MAX_OVERSCAN = 0.5  # largest render margin per side, as a fraction of the plate's width / height
FISHEYE_FOV_MIN = 0.1745  # Blender's hard limits on Camera.fisheye_fov (radians)
FISHEYE_FOV_MAX = 31.4159
SOLVE_TOLERANCE_PX = 1e-4  # a distort-map position counts as found when it reproduces its plate pixel this well
_CHUNK = 1 << 19  # pixels per vectorised batch (bounds memory at full resolution)
_LATTICE = 8  # the distort map is first solved every this many pixels (`_solve_grid`)
_LIMIT_SAMPLES = 2048  # fold-limit grid, as engine.projection.radius_limit
_MAX_ANGLE = math.pi / 2 * _LIMIT_SAMPLES / (_LIMIT_SAMPLES + 1)
_FIT_THETA_SAMPLES, _FIT_AZIMUTHS = 600, 32
_RMS_SAMPLES = 96


# --------------------------------------------------------------------------------------------------------------
# The real lens: projection of camera rays for every model (numpy)


def _radius_limit(name: str, extra: tuple[float, ...], fisheye: bool) -> float:
    """Largest undistorted radius (pinhole radius, or theta) up to which r s(r^2) increases (see
    engine.projection.radius_limit: same grid, same rule)."""
    cap = math.pi if fisheye else math.inf
    if not extra:
        return cap
    angle = np.linspace(0.0, math.pi if fisheye else _MAX_ANGLE, _LIMIT_SAMPLES + 1)
    r = angle if fisheye else np.tan(angle)
    with np.errstate(all="ignore"):
        rd = r * radial_distortion_factor(name, extra, r * r)
        bad = ~(rd[1:] > rd[:-1])
    if not bad.any():
        return cap
    return float(r[max(int(np.argmax(bad)) - 1, 0)])


def _field(extra: tuple[float, ...], a: np.ndarray, b: np.ndarray):
    """LENS_FIELD's displacement (Dx, Dy) and its Jacobian (dDx/da, dDx/db, dDy/da, dDy/db) at plane points (a, b):
    bilinear between the nodes of the n x n grid over [-R, R]^2, node (row j, column i) at (-R + i h, -R + j h),
    h = 2 R / (n - 1); clamped to the grid's border outside it (engine.projection._field)."""
    radius, n = float(extra[0]), lens_field_grid_size(len(extra) + 4)
    nodes = np.asarray(extra[2:], dtype=np.float64).reshape(n * n, 2)
    h = 2.0 * radius / (n - 1)
    tx_raw, ty_raw = (a + radius) / h, (b + radius) / h
    tx, ty = np.clip(tx_raw, 0.0, n - 1.0), np.clip(ty_raw, 0.0, n - 1.0)
    i0 = np.clip(np.floor(np.nan_to_num(tx)), 0, n - 2)
    j0 = np.clip(np.floor(np.nan_to_num(ty)), 0, n - 2)
    k = (j0 * n + i0).astype(np.int64)
    wx, wy = (tx - i0)[..., None], (ty - j0)[..., None]
    g00, g01, g10, g11 = nodes[k], nodes[k + 1], nodes[k + n], nodes[k + n + 1]
    top, bottom = g00 + wx * (g01 - g00), g10 + wx * (g11 - g10)
    disp = top + wy * (bottom - top)
    in_x = ((tx_raw >= 0) & (tx_raw <= n - 1))[..., None]
    in_y = ((ty_raw >= 0) & (ty_raw <= n - 1))[..., None]
    d_da = (g01 - g00 + wy * (g11 - g10 - g01 + g00)) * in_x / h
    d_db = (bottom - top) * in_y / h
    return disp[..., 0], disp[..., 1], (d_da[..., 0], d_db[..., 0], d_da[..., 1], d_db[..., 1])


def project(camera: Camera, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (..., 2) and validity (...) of camera-frame rays (..., 3) (OpenCV axes) through `camera`'s lens.

    The numpy counterpart of `engine.projection.project`, with its validity rules: perspective rays in front of
    the camera below the fold limit; fisheye rays by their angle from the axis (also past 90 degrees) below the
    fold limit; LENS_FIELD inside its grid, below 180 degrees, where the field does not fold.
    """
    model = get_model(camera.model)
    fx, fy, cx, cy, extra = camera.split()
    rays = np.asarray(rays, dtype=np.float64)
    X, Y, Z = rays[..., 0], rays[..., 1], rays[..., 2]
    with np.errstate(all="ignore"):
        if model.fisheye:
            rxy = np.hypot(X, Y)
            theta = np.arctan2(rxy, Z)
            scale = np.where(rxy > 0, theta / np.where(rxy > 0, rxy, 1.0), 0.0)
            x, y = X * scale, Y * scale
            if model.variable:
                dx, dy, (ja, jb, jc, jd) = _field(extra, x, y)
                xd, yd = x + dx, y + dy
                radius = extra[0]
                valid = ((np.abs(x) <= radius) & (np.abs(y) <= radius) & (theta < math.pi)
                         & ((1.0 + ja) * (1.0 + jd) - jb * jc > 0))
            else:
                xd, yd = distort_equidistant(model.name, extra, x, y)
                valid = theta < _radius_limit(model.name, extra, True)
        else:
            in_front = Z > np.finfo(np.float64).eps
            z = np.where(in_front, Z, 1.0)
            x, y = X / z, Y / z
            xd, yd = distort_normalized(model.name, extra, x, y)
            valid = in_front & (np.hypot(x, y) < _radius_limit(model.name, extra, False))
        pixels = np.stack([fx * xd + cx, fy * yd + cy], -1)
    valid = valid & np.isfinite(pixels).all(-1)
    return pixels, valid


# --------------------------------------------------------------------------------------------------------------
# Render cameras: what Blender renders CG with


@dataclass(frozen=True)
class RenderPinhole:
    """Blender's perspective camera as set for a lens: pinhole with the lens's focal lengths and principal point."""
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.cx, self.cy

    def rays(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rays (x, y, 1) through pixels (..., 2), all valid."""
        x = (pixels[..., 0] - self.cx) / self.fx
        y = (pixels[..., 1] - self.cy) / self.fy
        return np.stack([x, y, np.ones_like(x)], -1), np.ones(x.shape, dtype=bool)

    def pixels(self, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of rays (..., 3); valid in front of the camera."""
        z = rays[..., 2]
        front = z > np.finfo(np.float64).eps
        z = np.where(front, z, 1.0)
        return np.stack([self.fx * rays[..., 0] / z + self.cx, self.fy * rays[..., 1] / z + self.cy], -1), front

    def grown(self, mx: int, my: int) -> RenderPinhole:
        """The same camera on a canvas grown by (mx, my) pixels per side."""
        return RenderPinhole(self.width + 2 * mx, self.height + 2 * my, self.fx, self.fy, self.cx + mx,
                             self.cy + my)


@dataclass(frozen=True)
class RenderFisheye:
    """Cycles' FISHEYE_LENS_POLYNOMIAL camera: the ray through sensor point (su, sv) mm from the image centre
    (su = (u - W/2) sensor_width / W, sv = (v - H/2) (sensor_width / W) pixel_aspect, pixel_aspect = the scene's
    y/x pixel aspect = fx/fy) leaves at theta = -(k0 + k1 r + k2 r^2 + k3 r^3 + k4 r^4) from the axis, r = |(su, sv)|,
    towards the point's azimuth; rays beyond fov / 2 are cut (`Camera.fisheye_polynomial_k*`, `fisheye_fov`)."""
    width: int
    height: int
    sensor_width: float
    pixel_aspect: float
    coeffs: tuple[float, float, float, float, float]
    fov: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.width / 2.0, self.height / 2.0

    def _sensor(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mm = self.sensor_width / self.width
        return (pixels[..., 0] - self.width / 2.0) * mm, (pixels[..., 1] - self.height / 2.0) * mm * self.pixel_aspect

    def theta(self, r: np.ndarray) -> np.ndarray:
        """Ray angle at sensor radius r (mm)."""
        k0, k1, k2, k3, k4 = self.coeffs
        return -(k0 + r * (k1 + r * (k2 + r * (k3 + r * k4))))

    def rays(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit rays through pixels (..., 2); valid inside the field of view."""
        su, sv = self._sensor(pixels)
        theta = self.theta(np.hypot(su, sv))
        phi = np.arctan2(sv, su)
        s = np.sin(theta)
        rays = np.stack([s * np.cos(phi), s * np.sin(phi), np.cos(theta)], -1)
        return rays, (theta >= 0) & (theta <= self.fov / 2.0)

    def pixels(self, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of rays (..., 3): the sensor radius where theta(r) reaches the ray's angle, on the polynomial's
        increasing branch from the centre; valid inside the field of view."""
        X, Y, Z = rays[..., 0], rays[..., 1], rays[..., 2]
        rxy = np.hypot(X, Y)
        theta = np.arctan2(rxy, Z)
        r_tab, t_tab = self._branch()
        r = np.interp(theta, t_tab, r_tab)
        k0, k1, k2, k3, k4 = self.coeffs
        for _ in range(3):  # Newton on theta(r) = theta from the table's guess (a table step is ~1e-4 of the range)
            slope = -(k1 + r * (2 * k2 + r * (3 * k3 + r * 4 * k4)))
            r = r - (self.theta(r) - theta) / np.where(slope > 0, slope, np.inf)
        valid = (theta <= min(self.fov / 2.0, t_tab[-1])) & (r >= 0)
        with np.errstate(all="ignore"):
            cos, sin = np.where(rxy > 0, X / rxy, 1.0), np.where(rxy > 0, Y / rxy, 0.0)
        mm = self.sensor_width / self.width
        u = self.width / 2.0 + r * cos / mm
        v = self.height / 2.0 + r * sin / (mm * self.pixel_aspect)
        return np.stack([u, v], -1), valid

    def _branch(self) -> tuple[np.ndarray, np.ndarray]:
        """(r, theta) tabulated from the centre while theta(r) increases, up to fov / 2 (or 4 frame diagonals)."""
        mm = self.sensor_width / self.width
        r_max = 4.0 * mm * math.hypot(self.width, self.height * self.pixel_aspect)
        r = np.linspace(0.0, r_max, 16385)
        t = self.theta(r)
        rising = np.diff(t) > 0
        end = int(np.argmin(rising)) if not rising.all() else len(r) - 1
        past = np.flatnonzero(t[: end + 1] >= self.fov / 2.0)
        end = int(past[0]) if past.size else end
        return r[: end + 1], t[: end + 1]

    def grown(self, mx: int, my: int) -> RenderFisheye:
        """The same camera on a canvas grown by (mx, my) pixels per side (sensor grown with the width)."""
        width = self.width + 2 * mx
        return RenderFisheye(width, self.height + 2 * my, self.sensor_width * width / self.width, self.pixel_aspect,
                             self.coeffs, self.fov)


RenderCamera = RenderPinhole | RenderFisheye


def fit_fisheye_render(camera: Camera, sensor_width: float) -> tuple[RenderFisheye, float]:
    """The Cycles lens-polynomial camera for a wide lens (any fisheye model, LENS_FIELD), and its RMS error (px).

    Rays on a polar grid (theta, azimuth) are projected through the lens; along each azimuth, from the axis while
    the lens is valid and the sensor radius r (mm, measured from the principal point) increases, up to 2 % past the
    farthest image corner. theta(r) = -(k1 r + .. + k4 r^4) (k0 = 0: the centre ray is the axis) is fitted to them
    by least squares, each sample weighted by its pixel error per radian (d r / d theta, px) and by sqrt(r) (pixel
    area per radius). fov is twice the widest fitted angle. The RMS error is measured over a grid of pixel centres
    by projecting each Cycles ray through the lens: it includes what Cycles cannot hold (a principal point off the
    image centre, a lens that is not radially symmetric).
    """
    model = get_model(camera.model)
    if not model.fisheye:
        raise CameraModelError(f"{camera.model} is not a fisheye model (no Cycles fisheye camera for it)")
    fx, fy, cx, cy, _ = camera.split()
    width, height = camera.width, camera.height
    mm, aspect = sensor_width / width, fx / fy
    reach = 1.02 * max(math.hypot((u - cx) * mm, (v - cy) * mm * aspect) for u in (0, width) for v in (0, height))

    def profile(theta_max: float):
        theta, phi = np.meshgrid(np.linspace(0.0, theta_max, _FIT_THETA_SAMPLES + 1)[1:],
                                 np.linspace(0.0, 2 * math.pi, _FIT_AZIMUTHS, endpoint=False), indexing="ij")
        rays = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
        pixels, valid = project(camera, rays)
        r = np.hypot((pixels[..., 0] - cx) * mm, (pixels[..., 1] - cy) * mm * aspect)
        rising = np.diff(r, axis=0, prepend=0.0) > 0
        keep = np.cumprod(valid & rising, axis=0).astype(bool) & (r <= reach)
        return theta, r, keep

    theta, r, keep = profile(math.pi)
    if keep.sum(axis=0).min() < 2:
        raise CameraModelError(f"{camera.model} params {camera.params}: the image radius does not increase with "
                               f"the ray angle from the axis; no Cycles fisheye polynomial fits it")
    theta, r, keep = profile(float(theta[keep].max()) + math.pi / _FIT_THETA_SAMPLES)  # resample the used range
    dr = np.gradient(r, theta[:, 0], axis=0) / mm  # px per radian along each azimuth
    weight = (np.abs(dr) * np.sqrt(r))[keep]
    scale = float(r[keep].max())
    design = np.stack([(r[keep] / scale) ** i for i in range(1, 5)], axis=1)
    c, *_ = np.linalg.lstsq(design * weight[:, None], theta[keep] * weight, rcond=None)
    coeffs = (0.0, *(-float(ci) / scale ** i for i, ci in zip(range(1, 5), c)))
    fov = min(max(2.0 * float(theta[keep].max()), FISHEYE_FOV_MIN), FISHEYE_FOV_MAX)
    render = RenderFisheye(width, height, float(sensor_width), aspect, coeffs, fov)
    return render, _rms_error(camera, render)


def _rms_error(camera: Camera, render: RenderCamera) -> float:
    """RMS distance (px) over a grid of pixel centres from each pixel to where the lens images the render ray
    through it (pixels whose ray either camera does not see are left out)."""
    u = (np.arange(_RMS_SAMPLES) + 0.5) * camera.width / _RMS_SAMPLES
    v = (np.arange(_RMS_SAMPLES) + 0.5) * camera.height / _RMS_SAMPLES
    pixels = np.stack(np.meshgrid(u, v), -1)
    rays, seen = render.rays(pixels)
    back, valid = project(camera, rays)
    err = np.linalg.norm(back - pixels, axis=-1)[seen & valid]
    return float(np.sqrt(np.mean(err ** 2))) if err.size else 0.0


# --------------------------------------------------------------------------------------------------------------
# ST-maps


@dataclass
class STMaps:
    distort: np.ndarray  # (H, W, 3) float32 (s, t, valid): plate pixel -> position in the render
    undistort: np.ndarray  # (H', W', 3) float32: render pixel -> position in the plate
    render: RenderCamera  # the render camera on the grown canvas (H', W') the maps refer to
    margins: tuple[int, int]  # (mx, my): pixels added on each side of the plate's frame


def pixel_grid(width: int, height: int) -> np.ndarray:
    """Pixel centres (height, width, 2) in COLMAP's convention, row 0 at the top."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64) + 0.5, np.arange(height, dtype=np.float64) + 0.5)
    return np.stack([u, v], -1)


def st_from_pixels(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(s, t) (..., 2) of COLMAP pixel positions in a width x height image: s = x / W, t = 1 - y / H."""
    return np.stack([pixels[..., 0] / width, 1.0 - pixels[..., 1] / height], -1)


def pixels_from_st(st: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inverse of `st_from_pixels`."""
    return np.stack([st[..., 0] * width, (1.0 - st[..., 1]) * height], -1)


def _solve(forward: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], target: np.ndarray,
           start: np.ndarray, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """q (N, 2) with forward(q) = target, and its residual (px; inf where no valid start): damped Newton with
    forward-difference Jacobians. A step that does not lower the residual (or leaves forward's valid region) is
    retried at half length; a successful one restores the length."""
    q = start.copy()
    p, ok = forward(q)
    res = np.where(ok, np.linalg.norm(p - target, axis=-1), np.inf)
    trust = np.ones(len(q))
    active = np.isfinite(res) & (res > 1e-3 * SOLVE_TOLERANCE_PX)
    h = 1e-3
    for _ in range(iterations):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        qa, pa = q[idx], p[idx]
        du = (forward(qa + [h, 0.0])[0] - pa) / h
        dv = (forward(qa + [0.0, h])[0] - pa) / h
        ru, rv = (pa - target[idx]).T
        det = du[:, 0] * dv[:, 1] - dv[:, 0] * du[:, 1]
        good = np.isfinite(det) & (np.abs(det) > 1e-12)
        det = np.where(good, det, 1.0)
        step = np.where(good[:, None], np.stack([dv[:, 1] * ru - dv[:, 0] * rv, du[:, 0] * rv - du[:, 1] * ru], -1)
                        / det[:, None], np.stack([ru, rv], -1))
        cand = qa - trust[idx, None] * step
        pc, okc = forward(cand)
        rc = np.where(okc, np.linalg.norm(pc - target[idx], axis=-1), np.inf)
        accept = rc < res[idx]
        hit = idx[accept]
        q[hit], p[hit], res[hit] = cand[accept], pc[accept], rc[accept]
        trust[idx] = np.where(accept, np.minimum(2.0 * trust[idx], 1.0), 0.5 * trust[idx])
        active[idx] = (res[idx] > 1e-3 * SOLVE_TOLERANCE_PX) & (trust[idx] > 1e-6)
    return q, res


def _solve_grid(forward: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], target: np.ndarray,
                offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_solve` for a grid of targets (H, W, 2): first on every _LATTICE-th row and column (and the last), from
    the target moved by `offset` (from the lens's principal point to the render's centre: exact for a
    distortion-free lens and a pinhole render), then everywhere from those solutions interpolated bilinearly, which
    leaves Newton about one step; where that fails, from the plain start again."""
    height, width = target.shape[:2]
    rows = np.unique(np.r_[np.arange(0, height, _LATTICE), height - 1])
    cols = np.unique(np.r_[np.arange(0, width, _LATTICE), width - 1])
    coarse_target = target[np.ix_(rows, cols)].reshape(-1, 2)
    coarse, coarse_res = _solve(forward, coarse_target, coarse_target + offset)
    coarse[~(coarse_res <= SOLVE_TOLERANCE_PX)] = np.nan  # no start from here: neighbours fall back
    start = _upsample(coarse.reshape(len(rows), len(cols), 2), rows, cols, height, width).reshape(-1, 2)
    flat = target.reshape(-1, 2)
    q, res = np.empty_like(flat), np.empty(len(flat))
    for sl in _chunks(len(flat)):
        q[sl], res[sl] = _solve(forward, flat[sl], np.where(np.isfinite(start[sl]), start[sl], flat[sl] + offset))
        retry = sl.start + np.flatnonzero(~(res[sl] <= SOLVE_TOLERANCE_PX))
        if retry.size:
            q2, res2 = _solve(forward, flat[retry], flat[retry] + offset)
            better = res2 < res[retry]
            q[retry[better]], res[retry[better]] = q2[better], res2[better]
    return q.reshape(height, width, 2), res.reshape(height, width)


def _upsample(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation to every (row, column) of a (height, width) grid from values (len(rows), len(cols),
    C) known at the given (increasing, integer) rows and columns, which include the first and last."""

    def weights(known: np.ndarray, n: int):
        i = np.clip(np.searchsorted(known, np.arange(n), side="right") - 1, 0, len(known) - 2)
        return i, (np.arange(n) - known[i]) / (known[i + 1] - known[i])

    i, wx = weights(cols, width)
    wx = wx[None, :, None]
    along = values[:, i] * (1 - wx) + values[:, i + 1] * wx  # known rows, every column
    j, wy = weights(rows, height)
    wy = wy[:, None, None]
    return along[j] * (1 - wy) + along[j + 1] * wy


def _chunks(n: int):
    for start in range(0, n, _CHUNK):
        yield slice(start, min(start + _CHUNK, n))


def st_maps(camera: Camera, render: RenderCamera) -> STMaps:
    """The distort / undistort ST-maps between `camera` (the real lens, the plate) and `render` (the camera
    Blender renders CG with, at the plate's size), and the grown render they refer to (module docstring)."""
    width, height = camera.width, camera.height
    if (render.width, render.height) != (width, height):
        raise CameraModelError(f"render camera is {render.width}x{render.height} but the lens is {width}x{height}")
    _, _, cx, cy, _ = camera.split()

    def lens_of_render(q: np.ndarray):
        rays, seen = render.rays(q)
        p, valid = project(camera, rays)
        return p, seen & valid

    # Distort: solve lens(render ray(q)) = p for each plate pixel p (only the lens's forward projection is needed,
    # so one solver serves every model).
    q, res = _solve_grid(lens_of_render, pixel_grid(width, height), np.array(render.centre) - [cx, cy])
    q, found = q.reshape(-1, 2), res.ravel() <= SOLVE_TOLERANCE_PX

    # Margins: every found position with a pixel of bilinear support on each side, at most MAX_OVERSCAN.
    margins = []
    for axis, size in ((0, width), (1, height)):
        spill = 0.0
        if found.any():
            spill = max(0.5 - q[found, axis].min(), q[found, axis].max() - (size - 0.5), 0.0)
        margins.append(min(math.ceil(spill - 1e-9), math.ceil(MAX_OVERSCAN * size)))
    mx, my = margins
    grown = render.grown(mx, my)
    q += [mx, my]
    inside = found & (q[:, 0] >= 0) & (q[:, 0] <= grown.width) & (q[:, 1] >= 0) & (q[:, 1] <= grown.height)
    distort = _pack(q, (grown.width, grown.height), found, inside, (height, width))

    # Undistort: the lens's pixel of each render pixel's ray (explicit).
    cg = pixel_grid(grown.width, grown.height).reshape(-1, 2)
    p = np.empty_like(cg)
    seen = np.empty(len(cg), dtype=bool)
    for sl in _chunks(len(cg)):
        rays, ok = grown.rays(cg[sl])
        p[sl], valid = project(camera, rays)
        seen[sl] = ok & valid
    inside = seen & (p[:, 0] >= 0) & (p[:, 0] <= width) & (p[:, 1] >= 0) & (p[:, 1] <= height)
    undistort = _pack(p, (width, height), seen, inside, (grown.height, grown.width))
    return STMaps(distort, undistort, grown, (mx, my))


def _pack(pixels: np.ndarray, size: tuple[int, int], defined: np.ndarray, valid: np.ndarray,
          shape: tuple[int, int]) -> np.ndarray:
    """The (rows, columns, 3) float32 map of positions `pixels` (N, 2) in an image of `size` (W, H)."""
    out = np.empty((len(pixels), 3), dtype=np.float32)
    out[:, :2] = st_from_pixels(pixels, *size)
    out[~defined, :2] = -1.0
    out[:, 2] = valid
    return out.reshape(*shape, 3)
