# SPDX-License-Identifier: GPL-3.0-or-later
"""Lens distortion in Blender: MovieClip tracking cameras (Brown / polynomial / division) and the Cycles fisheye
polynomial (fitted to any wide lens, LENS_FIELD included).

Blender's scene cameras are ideal pinholes. Radial-tangential distortion lives on `MovieClip.tracking.camera`
(libmv models, used by the compositor's Movie Distortion node and the clip editor); fisheye lenses are Cycles
panoramic cameras whose `FISHEYE_LENS_POLYNOMIAL` maps sensor radius (mm) to ray angle. This module converts
between those and COLMAP camera models (`engine.camera_models`), exactly where the two agree and by a reported
least-squares fit where they do not.

libmv's coordinates put the origin at the bottom-left corner with y up, so a COLMAP principal point (cx, cy) is
(cx, H - cy) there, and OpenCV's tangential pair (p1, p2) becomes Brown (p2, -p1) (checked against the Movie
Distortion node, tests/test_movie_distortion.py).
"""
from __future__ import annotations

import math
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import NamedTuple

import bpy
import numpy as np

from ..engine import stmap
from ..engine.atomic import atomic_file
from ..engine.bundle import Camera
from ..engine.camera_models import get_model, radial_distortion_factor
from ..engine.errors import CameraModelError

SENSOR_WIDTH_MM = 36.0  # sensor width given to Blender cameras and clips (full frame; only lens/sensor matters)
CLIP_TAG = "unposed_clip"  # MovieClip custom property marking a clip made by Unposed
FISHEYE_FOV_MIN, FISHEYE_FOV_MAX = stmap.FISHEYE_FOV_MIN, stmap.FISHEYE_FOV_MAX  # Blender's limits (radians)
_FISHEYE_THETA_LIMIT = math.pi / 2 - 1e-6  # OPENCV_FISHEYE read back from a polynomial: the front hemisphere


class LensApproximationWarning(UserWarning):
    """Blender cannot hold a camera model exactly; the message says what was approximated and by how many px."""


class FisheyeFit(NamedTuple):
    coeffs: tuple[float, float, float, float, float]  # Camera.fisheye_polynomial_k0..k4 (Cycles' sign)
    fov: float  # Camera.fisheye_fov: twice the largest ray angle the model covers inside the image (radians)
    rms_px: float  # RMS over the image of the distance between Cycles' rays and the model, pixels


# --------------------------------------------------------------------------------------------------------------
# MovieClip tracking camera


def clip_for_camera(camera: Camera, image_path: str | Path | None, name: str) -> bpy.types.MovieClip | None:
    """A MovieClip whose tracking camera holds `camera`'s radial-tangential distortion, or None without one.

    Loads the photo at `image_path` (its size may differ from the camera's by a scale, not an aspect ratio), or
    with no path a blank frame of the camera's size, written once under the system temp folder since Blender
    cannot make a clip without a file. Pinhole and fisheye models have nothing to put on a clip: None.
    FULL_OPENCV's rational terms (k4..k6) are fitted with Brown's r^8 term and warn (LensApproximationWarning).
    """
    model = get_model(camera.model)
    if model.fisheye or not model.extra_params:
        return None
    values = tracking_values(camera)  # validate before anything is created
    path = Path(image_path) if image_path is not None else _blank_frame(camera.width, camera.height)
    try:
        clip = bpy.data.movieclips.load(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot be loaded as a movie clip ({exc})") from None
    try:
        set_tracking_camera(clip, values)
    except BaseException:
        bpy.data.movieclips.remove(clip)
        raise
    clip.name = name
    clip[CLIP_TAG] = True
    return clip


def set_tracking_camera(clip: bpy.types.MovieClip, values: dict) -> None:
    """Write `tracking_values(camera)` onto the clip, scaling pixel quantities to the clip's frame size.

    Raises ValueError, changing nothing, when the clip's frame has another aspect ratio than the camera.
    """
    width, height = values["width"], values["height"]
    cw, ch = _clip_size(clip, width, height)
    if abs(cw * height - ch * width) > max(cw, ch, width, height):  # allow a rounded pixel
        raise ValueError(f"{clip.filepath}: image is {cw}x{ch} but the camera is {width}x{height} "
                         f"(aspect ratios differ)")
    tc = clip.tracking.camera
    tc.units = "PIXELS"
    tc.sensor_width = SENSOR_WIDTH_MM
    tc.pixel_aspect = values["pixel_aspect"]
    tc.focal_length_pixels = values["focal"] * cw / width
    # Normalised principal point in [-1, 1] (bottom-left origin), independent of the clip's size.
    tc.principal_point = (2.0 * values["pp"][0] / width - 1.0, 2.0 * values["pp"][1] / height - 1.0)
    tc.distortion_model = values["model"]
    for key, value in values["coeffs"].items():
        setattr(tc, key, value)


def tracking_values(camera: Camera) -> dict:
    """Tracking-camera settings equivalent to a perspective `camera` with distortion (see `clip_for_camera`).

    libmv's POLYNOMIAL (x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6)) holds SIMPLE_RADIAL and RADIAL; BROWN holds
    OPENCV and FULL_OPENCV. libmv works in y scaled by 1 / pixel_aspect with one focal length (its solver's
    convention), so focal = fx and pixel_aspect = fy / fx.
    """
    fx, fy, cx, cy, extra = camera.split()
    name = camera.model
    out = {"width": camera.width, "height": camera.height, "focal": fx, "pixel_aspect": fy / fx,
           "pp": (cx, camera.height - cy)}
    if name in ("SIMPLE_RADIAL", "RADIAL"):
        ks = list(extra) + [0.0] * (3 - len(extra))
        out.update(model="POLYNOMIAL", coeffs={"k1": ks[0], "k2": ks[1], "k3": ks[2]})
        return out
    if name not in ("OPENCV", "FULL_OPENCV"):
        raise CameraModelError(f"{name}: no MovieClip distortion model for this camera model")
    k1, k2, p1, p2 = extra[:4]
    k3, k4 = 0.0, 0.0
    if name == "FULL_OPENCV":
        k3 = extra[4]
        if any(extra[5:]):
            k1, k2, k3, k4, err = _brown_for_rational(camera)
            warnings.warn(LensApproximationWarning(
                f"FULL_OPENCV rational terms k4..k6={list(extra[5:])} have no Blender equivalent; fitted with "
                f"Brown k1..k4 (largest error {err:.3f} px inside the {camera.width}x{camera.height} image)"),
                stacklevel=3)
    out.update(model="BROWN", coeffs={"brown_k1": k1, "brown_k2": k2, "brown_k3": k3, "brown_k4": k4,
                                      "brown_p1": p2, "brown_p2": -p1})
    return out


def camera_from_clip(clip: bpy.types.MovieClip, width: int, height: int) -> Camera:
    """The COLMAP camera (size width x height) equivalent to the clip's tracking camera.

    The simplest exact model: POLYNOMIAL -> SIMPLE_RADIAL / RADIAL (OPENCV for non-square pixels, FULL_OPENCV
    when k3 is used), BROWN -> OPENCV (FULL_OPENCV when k3 is used), DIVISION -> FULL_OPENCV (its 1 / (1 + k1 r^2 +
    k2 r^4) is the rational model's denominator). Brown's r^8 term is fitted with the rational model and warns.
    NUKE (anamorphic, defined in the undistort direction) is refused.
    """
    tc = clip.tracking.camera
    cw, _ = _clip_size(clip, width, height)
    fx = tc.focal_length_pixels * width / cw
    fy = fx * tc.pixel_aspect
    ppx, ppy = tc.principal_point
    cx, cy = (ppx + 1.0) * width / 2.0, height - (ppy + 1.0) * height / 2.0
    dm = tc.distortion_model
    square = abs(fx - fy) <= 1e-9 * fx
    if dm == "POLYNOMIAL":
        k1, k2, k3 = tc.k1, tc.k2, tc.k3
        if k3 != 0:
            return _full_opencv(width, height, fx, fy, cx, cy, k1, k2, 0.0, 0.0, k3)
        if not square:
            return Camera(1, "OPENCV", width, height, [fx, fy, cx, cy, k1, k2, 0.0, 0.0])
        if k2 == 0:
            return Camera(1, "SIMPLE_RADIAL", width, height, [fx, cx, cy, k1])
        return Camera(1, "RADIAL", width, height, [fx, cx, cy, k1, k2])
    if dm == "BROWN":
        p1, p2 = -tc.brown_p2, tc.brown_p1
        k1, k2, k3, k4 = tc.brown_k1, tc.brown_k2, tc.brown_k3, tc.brown_k4
        if k4 != 0:
            rational, err = _rational_for_brown(fx, fy, cx, cy, width, height, (k1, k2, k3, k4))
            warnings.warn(LensApproximationWarning(
                f"clip {clip.name!r}: Brown k4 (an r^8 term) has no COLMAP equivalent; fitted with FULL_OPENCV's "
                f"rational model (largest error {err:.3f} px inside the {width}x{height} image)"), stacklevel=2)
            a1, a2, a3, b1, b2, b3 = rational
            return _full_opencv(width, height, fx, fy, cx, cy, a1, a2, p1, p2, a3, b1, b2, b3)
        if k3 == 0:
            return Camera(1, "OPENCV", width, height, [fx, fy, cx, cy, k1, k2, p1, p2])
        return _full_opencv(width, height, fx, fy, cx, cy, k1, k2, p1, p2, k3)
    if dm == "DIVISION":  # libmv: x_d = x / (1 + k1 r^2 + k2 r^4), r the undistorted radius
        return _full_opencv(width, height, fx, fy, cx, cy, 0.0, 0.0, 0.0, 0.0, 0.0, tc.division_k1, tc.division_k2)
    raise CameraModelError(f"clip {clip.name!r}: distortion model {dm} has no COLMAP equivalent "
                           f"(use Brown, Polynomial or Divisions in the clip's camera settings)")


def _full_opencv(width: int, height: int, fx: float, fy: float, cx: float, cy: float, k1: float, k2: float,
                 p1: float, p2: float, k3: float, k4: float = 0.0, k5: float = 0.0, k6: float = 0.0) -> Camera:
    return Camera(1, "FULL_OPENCV", width, height, [fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6])


def _clip_size(clip: bpy.types.MovieClip, width: int, height: int) -> tuple[int, int]:
    """The clip's frame size, or (width, height) when its file is missing (size 0)."""
    cw, ch = clip.size
    return (cw, ch) if cw > 0 and ch > 0 else (width, height)


def _blank_frame(width: int, height: int) -> Path:
    """A grey PNG of the given size under the temp folder (created once, atomically)."""
    path = Path(tempfile.gettempdir()) / "unposed" / f"blank_{width}x{height}.png"
    if not path.is_file():
        row = b"\x00" + b"\x80\x80\x80" * width  # filter byte 0, then RGB
        chunks = [(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
                  (b"IDAT", zlib.compress(row * height, 9)), (b"IEND", b"")]
        with atomic_file(path) as f:
            f.write(b"\x89PNG\r\n\x1a\n")
            for tag, data in chunks:
                f.write(struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data)))
    return path


# --------------------------------------------------------------------------------------------------------------
# Radial fits between the rational (FULL_OPENCV) and Brown radial factors


def _undistorted_radii(radial, r_d_max: float, n: int = 400) -> np.ndarray:
    """Undistorted radii r in [0, r_max] with r * radial(r^2) <= r_d_max, where r * radial(r^2) still increases."""
    r = np.linspace(0.0, 4.0 * r_d_max, 8 * n)
    rd = r * radial(r * r)
    bad = (np.diff(rd) <= 0) | (rd[1:] > r_d_max * 1.02)
    end = int(np.argmax(bad)) if bad.any() else len(r) - 1
    return np.linspace(0.0, r[max(end, 1)], n)


def _corner_radius(fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> float:
    """Largest normalised (distorted) radius of an image corner."""
    return max(math.hypot((u - cx) / fx, (v - cy) / fy) for u in (0, width) for v in (0, height))


def _brown_for_rational(camera: Camera) -> tuple[float, float, float, float, float]:
    """Brown k1..k4 minimising the pixel error of FULL_OPENCV's rational radial factor; also the max error (px)."""
    fx, fy, cx, cy, extra = camera.split()

    def radial(r2):
        return radial_distortion_factor("FULL_OPENCV", extra, r2)

    r = _undistorted_radii(radial, _corner_radius(fx, fy, cx, cy, camera.width, camera.height))
    s = r * r
    target = radial(s) - 1.0
    # Pixel error = f * r * (R_fit - R): weight each row by r.
    a = np.stack([s, s ** 2, s ** 3, s ** 4], axis=1) * r[:, None]
    k, *_ = np.linalg.lstsq(a, target * r, rcond=None)
    err = max(fx, fy) * float(np.max(np.abs(a @ k - target * r)))
    return float(k[0]), float(k[1]), float(k[2]), float(k[3]), err


def _rational_for_brown(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                        ks: tuple[float, float, float, float]) -> tuple[tuple[float, ...], float]:
    """FULL_OPENCV (k1, k2, k3, k4, k5, k6) fitting Brown's 1 + k1 s + .. + k4 s^4 (s = r^2); also the max error.

    Linearised: N(s) - R(s) D(s) = 0 with N = 1 + a1 s + a2 s^2 + a3 s^3, D = 1 + b1 s + b2 s^2 + b3 s^3.
    """
    k1, k2, k3, k4 = ks

    def brown(s):
        return 1.0 + s * (k1 + s * (k2 + s * (k3 + k4 * s)))

    r = _undistorted_radii(brown, _corner_radius(fx, fy, cx, cy, width, height))
    s = r * r
    rs = brown(s)
    a = np.stack([s, s ** 2, s ** 3, -rs * s, -rs * s ** 2, -rs * s ** 3], axis=1) * r[:, None]
    coef, *_ = np.linalg.lstsq(a, (rs - 1.0) * r, rcond=None)
    a1, a2, a3, b1, b2, b3 = coef
    fitted = (1 + s * (a1 + s * (a2 + s * a3))) / (1 + s * (b1 + s * (b2 + s * b3)))
    err = max(fx, fy) * float(np.max(np.abs((fitted - rs) * r)))
    return tuple(float(c) for c in coef), err


# --------------------------------------------------------------------------------------------------------------
# Cycles fisheye polynomial


def fit_fisheye_polynomial(camera: Camera, sensor_width: float = SENSOR_WIDTH_MM) -> FisheyeFit:
    """Cycles' FISHEYE_LENS_POLYNOMIAL for any wide lens (COLMAP fisheye models, LENS_FIELD), by weighted least
    squares over the lens's rays (`engine.stmap.fit_fisheye_render`, which documents the fit).

    `rms_px` is measured over a grid of pixels by projecting each Cycles ray with the full lens: it includes what
    Cycles cannot represent — a principal point off the image centre (also warned about, LensApproximationWarning),
    THIN_PRISM_FISHEYE's non-radial terms, a LENS_FIELD's non-radial displacements.
    """
    render, rms = stmap.fit_fisheye_render(camera, sensor_width)
    _, _, cx, cy, _ = camera.split()
    offset = math.hypot(cx - camera.width / 2.0, cy - camera.height / 2.0)
    if offset > 0.01:
        warnings.warn(LensApproximationWarning(
            f"{camera.model} principal point ({cx:.2f}, {cy:.2f}) is {offset:.2f} px from the centre of the "
            f"{camera.width}x{camera.height} image; Cycles fisheye cameras are always centred (RMS error "
            f"{rms:.2f} px)"), stacklevel=2)
    return FisheyeFit(render.coeffs, render.fov, rms)


def polynomial_fisheye_camera(coeffs: tuple[float, ...], fov: float, width: int, height: int,
                              pixel_aspect: float, sensor_width: float) -> tuple[Camera, float]:
    """OPENCV_FISHEYE (centred) fitting a Cycles lens polynomial; also the largest error in pixels.

    `pixel_aspect` is the scene's y/x pixel aspect. The model's pixel radius f * theta (1 + k1 theta^2 + ..
    + k4 theta^8) is linear in (f, f k1, .., f k4), so this is one linear least-squares solve over the radii in
    the image (and inside the fov).
    """
    r_corner = 0.5 * sensor_width * math.hypot(1.0, height * pixel_aspect / width)
    r = np.linspace(0.0, r_corner, 600)[1:]
    theta = -sum(k * r ** i for i, k in enumerate(coeffs))
    keep = (theta > 0) & (theta <= min(fov / 2.0, _FISHEYE_THETA_LIMIT))
    r, theta = r[keep], theta[keep]
    if r.size < 10 or np.any(np.diff(theta) <= 0):
        raise CameraModelError(f"fisheye polynomial {list(coeffs)} does not map the image radius to increasing "
                               f"ray angles in (0, 90 deg); no COLMAP fisheye model fits it")
    rho = r * width / sensor_width  # pixel radius (horizontal pixels)
    design = np.stack([theta ** (2 * i + 1) for i in range(5)], axis=1)
    sol, *_ = np.linalg.lstsq(design, rho, rcond=None)
    err = float(np.max(np.abs(design @ sol - rho)))
    f = float(sol[0])
    fy = f / pixel_aspect
    extra = [float(s) / f for s in sol[1:]]
    return Camera(1, "OPENCV_FISHEYE", width, height, [f, fy, width / 2.0, height / 2.0, *extra]), err
