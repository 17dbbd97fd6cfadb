"""Fisheye lenses for generated scenes: a full-frame equidistant fisheye, and LENS_FIELD cameras built from an
analytic radial mapping theta -> theta_d, such as a polynomial beyond what OPENCV_FISHEYE's k1..k4 can express.

Field of view here is the full-frame one: twice the angle from the optical axis of the ray through the image's
corner (the outer corner of the corner pixel, measured from the principal point), so every pixel sees the scene
and a `fov_deg` lens has no ray beyond fov_deg / 2 from the axis (up to decentring). `scenegen.rigs.intrinsics`
instead measures the field across the image width.

A LENS_FIELD camera (lens contract of issue #7, `engine.camera_models`) carries its displacement field D on the
equidistant plane as the values at an n x n grid of nodes over [-R, R]^2, interpolated bilinearly: the recorded
camera IS that grid, which the renderer images exactly (`scenegen.render`); the analytic mapping only sets the
node values, D(a, b) = (theta_d(theta) / theta - 1) (a, b) + decentring(a, b) with theta = |(a, b)|.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .addon import module

if TYPE_CHECKING:  # the add-on's own copy is used at run time (see addon.py); same classes
    from engine.bundle import Camera

Radial = Callable[[np.ndarray], np.ndarray]  # theta (radians from the axis) -> theta_d = pixel radius / focal

# Default LENS_FIELD grid: nodes ~0.08 rad apart for a 190 deg lens on a square image; the polynomial lens's grid
# then differs from its analytic mapping by 0.09 px median, 0.6 px max at 160x160 (17 nodes: 0.33 / 1.6 px).
GRID = 33
GRID_MARGIN = 0.05  # the grid reaches this fraction beyond the widest pixel ray on the plane (the enlarged sensor)
POLYNOMIAL_ORDER = 12  # Chebyshev polynomial giving the polynomial lens's magnification (theta_d: degree 13)
POLYNOMIAL_AMPLITUDE = 0.4  # the polynomial lens's magnification theta_d' swings between 1 - this and 1 + this
POLYNOMIAL_DECENTRE = (0.002, -0.001)  # the polynomial lens's decentring (p1, p2), on the equidistant plane


def corner_radius(width: int, height: int) -> float:
    """Distance in pixels from the image centre to its outer corner."""
    return math.hypot(width / 2.0, height / 2.0)


def equidistant(width: int, height: int, fov_deg: float = 180.0, *, camera_id: int = 1) -> Camera:
    """OPENCV_FISHEYE without distortion (pixel radius f theta), centred, seeing `fov_deg` corner to corner."""
    half = _half_fov(fov_deg)
    f = corner_radius(width, height) / half
    return module("engine.bundle").Camera(camera_id, "OPENCV_FISHEYE", width, height,
                                          [f, f, width / 2.0, height / 2.0, 0.0, 0.0, 0.0, 0.0])


def polynomial_radial(fov_deg: float, amplitude: float = POLYNOMIAL_AMPLITUDE,
                      order: int = POLYNOMIAL_ORDER) -> Radial:
    """A polynomial lens with strong high-order terms: theta_d' = 1 + amplitude T_order(theta / theta_max).

    T_order is the Chebyshev polynomial (bounded by 1 on [0, 1], `order` / 4 oscillations there), theta_max =
    fov / 2, so theta_d is an odd polynomial of degree order + 1 in theta (13 by default, where OPENCV_FISHEYE
    stops at 9) whose magnification swings between 1 - amplitude and 1 + amplitude across the field: a lens
    k1..k4 cannot follow (`tests/test_scenegen_fisheye.py` measures by how much).
    """
    from numpy.polynomial import chebyshev, polynomial

    if order % 2 or order < 2:
        raise ValueError(f"order must be even and >= 2 (theta_d must be odd in theta), got {order}")
    if not 0 <= amplitude < 1:
        raise ValueError(f"amplitude must be in [0, 1) so the lens keeps magnifying, got {amplitude}")
    half = _half_fov(fov_deg)
    integral = polynomial.polyint(chebyshev.cheb2poly([0.0] * order + [1.0]))  # of T_order, zero at 0

    def radial(theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        return theta + amplitude * half * polynomial.polyval(theta / half, integral)
    return radial


def polynomial_lens(width: int, height: int, fov_deg: float = 190.0, *, amplitude: float = POLYNOMIAL_AMPLITUDE,
                    order: int = POLYNOMIAL_ORDER, decentre: Sequence[float] = POLYNOMIAL_DECENTRE, grid: int = GRID,
                    camera_id: int = 1) -> Camera:
    """The LENS_FIELD camera of `polynomial_radial` (plus a small decentring) seeing `fov_deg` corner to corner."""
    return radial_field_lens(width, height, fov_deg, polynomial_radial(fov_deg, amplitude, order), decentre=decentre,
                             grid=grid, camera_id=camera_id)


def radial_field_lens(width: int, height: int, fov_deg: float, radial: Radial, *,
                      decentre: Sequence[float] = (0.0, 0.0), grid: int = GRID, camera_id: int = 1) -> Camera:
    """A centred LENS_FIELD camera imaging the ray at angle theta from the axis at pixel radius f radial(theta),
    plus Brown decentring (p1, p2) on the equidistant plane (THIN_PRISM_FISHEYE's tangential terms).

    `radial` maps angles (radians, numpy arrays) to theta_d = pixel radius / f, with theta_d ~ theta near the axis.
    f puts the corner ray at fov_deg / 2 (radial part). Beyond fov / 2, where only grid nodes outside the image
    lie, theta_d continues along its tangent. The grid spans the widest pixel ray on the plane plus GRID_MARGIN.
    Raises ValueError unless 0 < theta_d' < 2 and 0 < theta_d / theta < 2 up to fov / 2 (then the radial part
    of D is a contraction, so the field's unprojection converges), and unless the grid stays within 180 deg.
    """
    if grid < 2:
        raise ValueError(f"grid must be at least 2 nodes across, got {grid}")
    half = _half_fov(fov_deg)
    _check_contraction(radial, half)  # then its tangent extension beyond `half` is one too
    slope = (radial(np.array([half + 1e-6])) - radial(np.array([half - 1e-6])))[0] / 2e-6
    end = float(radial(np.array([half]))[0])

    def extended(theta: np.ndarray) -> np.ndarray:
        return np.where(theta <= half, radial(np.minimum(theta, half)), end + slope * (theta - half))

    f = corner_radius(width, height) / end
    prism = [0.0, 0.0, float(decentre[0]), float(decentre[1]), 0.0, 0.0, 0.0, 0.0]  # THIN_PRISM_FISHEYE extra

    def displacement(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.hypot(a, b)
        ratio = np.where(theta > 0, extended(theta) / np.where(theta > 0, theta, 1.0), _slope_at_axis(radial))
        ad, bd = module("engine.camera_models").distort_equidistant("THIN_PRISM_FISHEYE", prism, a, b)
        return ad - a + (ratio - 1.0) * a, bd - b + (ratio - 1.0) * b

    # The widest pixel ray on the plane: the image border undistorted by fixed-point iteration x <- x_d - D(x),
    # which converges because D is a contraction.
    border = _border_pixels(width, height)
    target = np.stack([(border[:, 0] - width / 2.0) / f, (border[:, 1] - height / 2.0) / f])
    plane = target.copy()
    for _ in range(200):
        plane = target - np.stack(displacement(*plane))
    radius = (1.0 + GRID_MARGIN) * float(np.abs(plane).max())
    if radius * math.sqrt(2.0) >= math.pi:
        raise ValueError(f"a {fov_deg} deg lens on a {width}x{height} image needs a grid reaching "
                         f"{math.degrees(radius * math.sqrt(2.0)):.0f} deg from the axis (at most 180)")
    nodes = np.linspace(-radius, radius, grid)
    a, b = np.meshgrid(nodes, nodes)  # rows: b (image y), columns: a (image x)
    field = np.stack(displacement(a, b), -1)  # (n, n, 2), row-major as the contract stores it
    params = [f, f, width / 2.0, height / 2.0, radius, float(grid), *field.ravel().tolist()]
    return module("engine.bundle").Camera(camera_id, "LENS_FIELD", width, height, params)


def _half_fov(fov_deg: float) -> float:
    if not 0 < fov_deg < 360:
        raise ValueError(f"fov_deg must be in (0, 360), got {fov_deg}")
    return math.radians(fov_deg) / 2.0


def _slope_at_axis(radial: Radial) -> float:
    """theta_d / theta at theta -> 0 (the magnification on the axis)."""
    h = 1e-6
    return float(radial(np.array([h]))[0] / h)


def _border_pixels(width: int, height: int, per_pixel: int = 2) -> np.ndarray:
    """(N, 2) points along the image's outer border (pixel edges, COLMAP convention), `per_pixel` per pixel."""
    u = np.linspace(0.0, width, per_pixel * width + 1)
    v = np.linspace(0.0, height, per_pixel * height + 1)
    return np.concatenate([np.stack([u, np.zeros_like(u)], 1), np.stack([u, np.full_like(u, height)], 1),
                           np.stack([np.zeros_like(v), v], 1), np.stack([np.full_like(v, width), v], 1)])


def _check_contraction(radial: Radial, theta_max: float, samples: int = 4000) -> None:
    """ValueError unless 0 < theta_d' < 2 and 0 < theta_d / theta < 2 on (0, theta_max]: then the radial part of D
    has Jacobian eigenvalues theta_d' - 1 (radial) and theta_d / theta - 1 (tangential) inside (-1, 1)."""
    theta = np.linspace(0.0, theta_max, samples + 1)[1:]
    td = radial(theta)
    slope = np.gradient(td, theta)
    for name, values in (("theta_d'", slope), ("theta_d / theta", td / theta)):
        bad = ~((values > 0) & (values < 2))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"radial lens: {name} = {values[i]:.3f} at {math.degrees(theta[i]):.1f} deg from the "
                             f"axis; a lens field needs it in (0, 2) up to {math.degrees(theta_max):.1f} deg")
