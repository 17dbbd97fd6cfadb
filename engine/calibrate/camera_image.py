# SPDX-License-Identifier: GPL-3.0-or-later
"""DM-Calib's "Camera Image": a pinhole camera's intrinsics as a dense 3-channel image, and back.

Encoding (Deng et al. 2024, arXiv 2411.17240, Sec. 3; the reference code's `generate_rays`): the pixel centred at
(u, v) (COLMAP convention: u = column + 0.5) looks along d = normalize(K^-1 [u, v, 1]), whose azimuth
theta = atan2(d_x, d_z) and polar angle phi = arccos(d_y) are mapped linearly to [-1, 1] and clipped:
    ch0 = 2 (theta / pi - THETA[0]) / (THETA[1] - THETA[0]) - 1,    THETA = (-0.31, 0.31)
    ch1 = 2 (phi / pi - PHI[0]) / (PHI[1] - PHI[0]) - 1,            PHI = (0.21, 0.79)
and ch2 is the grey image in [-1, 1] (the network paints it along; decoding ignores it). So a camera image holds
an hFoV up to 2 x 0.31 x 180 = 111.6 degrees and a vFoV up to 104.4 degrees around a centred principal point;
rays beyond are clipped and carry no information.

Decoding: with x = (u - cx) / fx and y = (v - cy) / fy the ray is (x, y, 1) / |(x, y, 1)|, so exactly
    tan(theta) = x                 ->  u = fx tan(theta) + cx
    cot(phi) / cos(theta) = y      ->  v = fy cot(phi) / cos(theta) + cy
two straight lines, fitted separately by RANSAC whose residual is the distance in pixels between a pixel's own
coordinate and the one the line predicts from its angles. (The reference fits skimage's LineModelND to
(tan(theta), column) with a threshold in mixed units, which outliers pull far off.) Clipped pixels are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .result import CalibrationError

THETA = (-0.31, 0.31)  # azimuth range, fractions of pi
PHI = (0.21, 0.79)  # polar-angle range, fractions of pi
CLIPPED = 1.0 - 1e-3  # |channel| at or above this is a clipped (or saturated) value
THRESHOLD = 0.01  # default inlier threshold: this fraction of the image's long side, in pixels (at least 1 px)
MIN_PIXELS = 16  # fewer usable pixels than this on an axis: nothing to fit


@dataclass
class AxisFit:
    """x = focal * a + centre, fitted over one image axis (a = tan(theta) for u, cot(phi)/cos(theta) for v)."""
    focal: float
    centre: float
    inliers: float  # fraction of ALL pixels of the image within the threshold of the line
    rms_px: float  # root-mean-square residual of those inliers, pixels


@dataclass
class CameraImageFit:
    u: AxisFit
    v: AxisFit
    width: int
    height: int
    threshold_px: float

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy), pixels of the decoded image, COLMAP convention."""
        return self.u.focal, self.v.focal, self.u.centre, self.v.centre

    @property
    def inlier_ratio(self) -> float:
        """The smaller axis' inlier fraction: how much of the image agrees with one pinhole camera."""
        return min(self.u.inliers, self.v.inliers)


def encode(intrinsics: tuple[float, float, float, float], width: int, height: int,
           grey: np.ndarray | None = None) -> np.ndarray:
    """(3, height, width) float32 camera image of the pinhole (fx, fy, cx, cy); ch2 is `grey` ((height, width),
    uint8 0-255 or float 0-1) mapped to [-1, 1], or zeros without it."""
    fx, fy, cx, cy = (float(k) for k in intrinsics)
    if not (fx > 0 and fy > 0):
        raise ValueError(f"camera image: focal lengths must be positive, got fx={fx}, fy={fy}")
    x = (np.arange(width, dtype=np.float64) + 0.5 - cx) / fx
    y = (np.arange(height, dtype=np.float64) + 0.5 - cy) / fy
    x, y = np.meshgrid(x, y)
    theta = np.arctan2(x, 1.0)
    phi = np.arccos(y / np.sqrt(x * x + y * y + 1.0))
    out = np.empty((3, height, width), np.float32)
    out[0] = _to_unit(theta / np.pi, THETA)
    out[1] = _to_unit(phi / np.pi, PHI)
    if grey is None:
        out[2] = 0.0
    else:
        grey = np.asarray(grey)
        if grey.shape != (height, width):
            raise ValueError(f"camera image: grey image is {grey.shape}, expected {(height, width)}")
        scale = 255.0 if grey.dtype == np.uint8 else 1.0
        out[2] = grey.astype(np.float32) / scale * 2.0 - 1.0
    return out


def _to_unit(value: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    return np.clip(2.0 * (value - span[0]) / (span[1] - span[0]) - 1.0, -1.0, 1.0)


def _from_unit(channel: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    return np.pi * ((channel + 1.0) / 2.0 * (span[1] - span[0]) + span[0])


def decode(camera_image: np.ndarray, *, threshold_px: float | None = None, hypotheses: int = 256,
           sample: int = 8192, seed: int = 0) -> CameraImageFit:
    """Fit (fx, fy, cx, cy) to a camera image ((C >= 2, H, W), channels in [-1, 1]) by RANSAC on each axis.

    threshold_px: inlier distance in pixels (default THRESHOLD x the long side, at least 1 px). hypotheses: RANSAC
    draws (pixel pairs); each is scored on `sample` random pixels, the best refitted by least squares on all its
    inliers, then once more on those within 3 robust standard deviations of that fit. CalibrationError when an
    axis has too few unclipped pixels or no line with a positive focal length fits."""
    image = np.asarray(camera_image)
    if image.ndim != 3 or image.shape[0] < 2 or min(image.shape[1:]) < 1:
        raise CalibrationError(f"camera image: expected an array of shape (C >= 2, H, W), got {image.shape}")
    _, h, w = image.shape
    if threshold_px is None:
        threshold_px = max(1.0, THRESHOLD * max(w, h))
    if not threshold_px > 0:
        raise ValueError(f"camera image: threshold_px must be positive, got {threshold_px}")
    ch0, ch1 = image[0].astype(np.float64), image[1].astype(np.float64)
    ok_u = np.isfinite(ch0) & (np.abs(ch0) < CLIPPED)
    ok_v = ok_u & np.isfinite(ch1) & (np.abs(ch1) < CLIPPED)
    theta = _from_unit(np.where(ok_u, ch0, 0.0), THETA)
    phi = _from_unit(np.where(ok_v, ch1, 0.0), PHI)
    rows, cols = np.indices((h, w), dtype=np.float64) + 0.5
    rng = np.random.default_rng(seed)
    fits = []
    for axis, ok, a, coord in (("u", ok_u, np.tan(theta), cols), ("v", ok_v, 1.0 / np.tan(phi) / np.cos(theta), rows)):
        if ok.sum() < MIN_PIXELS:
            raise CalibrationError(f"camera image: only {int(ok.sum())} of {h * w} pixels have unclipped angles "
                                   f"for the {axis} axis (needs {MIN_PIXELS})")
        fits.append(_fit_line(a[ok], coord[ok], h * w, threshold_px, rng, hypotheses, sample, axis))
    return CameraImageFit(fits[0], fits[1], w, h, float(threshold_px))


def _least_squares(a: np.ndarray, x: np.ndarray) -> tuple[float, float] | None:
    """Slope and intercept of x = s a + o by least squares, or None when a does not vary or s <= 0."""
    if a.size < 2:
        return None
    da = a - a.mean()
    denom = float(da @ da)
    if denom <= 1e-300:
        return None
    s = float(da @ (x - x.mean())) / denom
    o = float(x.mean() - s * a.mean())
    return (s, o) if np.isfinite(s) and np.isfinite(o) and s > 0 else None


def _fit_line(a: np.ndarray, x: np.ndarray, total: int, threshold: float, rng: np.random.Generator,
              hypotheses: int, sample: int, axis: str) -> AxisFit:
    """RANSAC for x = s a + o with s > 0 and the pixel residual |s a + o - x|."""
    n = a.size
    i, j = rng.integers(0, n, (2, hypotheses))
    da, dx = a[i] - a[j], x[i] - x[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = dx / da
    o = x[i] - s * a[i]
    good = (dx != 0) & np.isfinite(s) & np.isfinite(o) & (s > 0)
    if not good.any():
        raise CalibrationError(f"camera image: no line with a positive focal length fits the {axis} axis "
                               f"(the angles do not grow across the image)")
    s, o = s[good], o[good]
    pick = rng.integers(0, n, min(n, sample))
    scores = (np.abs(s[:, None] * a[pick] + o[:, None] - x[pick]) < threshold).sum(axis=1)
    best = int(np.argmax(scores))
    model = (float(s[best]), float(o[best]))
    residual = np.abs(model[0] * a + model[1] - x)
    inside = residual < threshold
    model = _least_squares(a[inside], x[inside]) or model  # least squares on the hypothesis' inliers ...
    residual = np.abs(model[0] * a + model[1] - x)
    inside = residual < threshold
    if inside.sum() >= 2:  # ... then on those within 3 robust standard deviations of that fit
        sigma = 1.4826 * float(np.median(residual[pick][inside[pick]])) if inside[pick].any() else threshold
        tight = residual <= min(threshold, 3.0 * sigma)
        model = _least_squares(a[tight], x[tight]) or model
        residual = np.abs(model[0] * a + model[1] - x)
        inside = residual < threshold
    rms = float(np.sqrt(np.mean(residual[inside] ** 2))) if inside.any() else float("nan")
    return AxisFit(model[0], model[1], float(inside.sum()) / total, rms)
