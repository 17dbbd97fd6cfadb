# SPDX-License-Identifier: GPL-3.0-or-later
"""DM-Calib's Camera Image: encoding against its definition, decoding by pixel-residual RANSAC."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.calibrate.camera_image import decode, encode
from engine.calibrate.result import CalibrationError

CASES = {  # (fx, fy, cx, cy), width, height
    "landscape-centred": ((120.0, 120.0, 80.0, 60.0), 160, 120),
    "portrait-off-centre": ((150.0, 156.0, 38.0, 131.0), 96, 160),
    "landscape-off-centre-long-lens": ((420.0, 415.0, 121.0, 67.0), 200, 112),
}


def _relative_error(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got) / np.asarray(want) - 1.0)))


def test_encoding_follows_the_published_definition():
    fx, fy, cx, cy, w, h = 100.0, 90.0, 64.5, 40.5, 128, 80
    image = encode((fx, fy, cx, cy), w, h)
    assert image.shape == (3, h, w) and image.dtype == np.float32
    # the pixel whose centre is the principal point looks straight ahead: theta = 0, phi = pi/2
    assert image[0, 40, 64] == pytest.approx(2 * (0.31 / 0.62) - 1, abs=1e-6)
    assert image[1, 40, 64] == pytest.approx(2 * ((0.5 - 0.21) / 0.58) - 1, abs=1e-6)
    # pixel (u, v) = (10.5, 70.5): ray (x, y, 1) with x = (u - cx)/fx, y = (v - cy)/fy
    x, y = (10.5 - cx) / fx, (70.5 - cy) / fy
    theta, phi = math.atan2(x, 1.0), math.acos(y / math.sqrt(x * x + y * y + 1))
    assert image[0, 70, 10] == pytest.approx(2 * ((theta / math.pi + 0.31) / 0.62) - 1, abs=1e-6)
    assert image[1, 70, 10] == pytest.approx(2 * ((phi / math.pi - 0.21) / 0.58) - 1, abs=1e-6)
    grey = np.arange(w * h, dtype=np.uint32).reshape(h, w) % 256
    with_grey = encode((fx, fy, cx, cy), w, h, grey.astype(np.uint8))
    np.testing.assert_allclose(with_grey[2], grey / 255.0 * 2 - 1, atol=1e-6)
    np.testing.assert_array_equal(with_grey[:2], image[:2])


def test_wide_angles_clip_at_the_published_range():
    # hFoV 2 x 0.31 x 180 = 111.6 deg fits exactly: a wider view saturates its borders at +-1
    w = 200
    fx = (w / 2) / math.tan(math.radians(70))  # hFoV 140 deg
    image = encode((fx, fx, w / 2, 50.0), w, 100)
    assert image[0].min() == -1.0 and image[0].max() == 1.0
    theta_edge = math.atan((w / 2 - 0.5) / fx)
    assert theta_edge > 0.31 * math.pi


@pytest.mark.parametrize("name", list(CASES))
def test_encode_then_decode_recovers_the_intrinsics(name):
    k, w, h = CASES[name]
    fit = decode(encode(k, w, h))
    assert _relative_error(fit.intrinsics, k) < 1e-3
    assert fit.u.inliers == 1.0 and fit.v.inliers == 1.0 and fit.inlier_ratio == 1.0
    assert (fit.width, fit.height) == (w, h)


def test_decode_skips_clipped_borders_of_a_very_wide_view():
    w, h = 240, 160
    fx = (w / 2) / math.tan(math.radians(65))  # hFoV 130 deg: both side borders are clipped
    k = (fx, fx * 1.02, 117.0, 83.0)
    fit = decode(encode(k, w, h))
    assert _relative_error(fit.intrinsics, k) < 1e-3
    assert 0.5 < fit.u.inliers < 0.95  # the clipped columns are neither fitted nor counted as inliers


@pytest.mark.parametrize("name", list(CASES))
def test_ransac_survives_30_percent_outliers(name):
    k, w, h = CASES[name]
    rng = np.random.default_rng(7)
    image = encode(k, w, h)
    outliers = np.zeros((h, w), bool)
    bh, bw = int(0.3 * h), int(0.35 * w)  # a ~10% block of another smooth camera (a coherent outlier) ...
    outliers[:bh, -bw:] = True
    image[:2, outliers] = encode((k[0] * 0.6, k[1] * 0.6, k[2], k[3]), w, h)[:2, outliers]
    p = (0.3 - outliers.mean()) / (1 - outliers.mean())  # ... and random values scattered over the rest
    scattered = ~outliers & (rng.random((h, w)) < p)
    image[:2, scattered] = rng.uniform(-1, 1, (2, int(scattered.sum())))
    outliers |= scattered
    assert 0.28 < outliers.mean() < 0.32
    fit = decode(image)
    assert _relative_error(fit.intrinsics, k) < 1e-3
    assert fit.inlier_ratio == pytest.approx(1 - outliers.mean(), abs=0.03)


def test_noisy_camera_image_with_outliers_stays_accurate():
    k, w, h = (665.0, 660.0, 380.0, 300.0), 768, 576
    rng = np.random.default_rng(3)
    image = encode(k, w, h)
    image[:2] += rng.normal(0.0, 0.003, (2, h, w)).astype(np.float32)  # ~2 px of noise near the centre
    bad = rng.random((h, w)) < 0.3
    image[:2, bad] = rng.uniform(-1, 1, (2, int(bad.sum())))
    fit = decode(image)
    assert _relative_error(fit.intrinsics, k) < 2e-3
    assert fit.inlier_ratio > 0.65


def test_noise_is_not_a_camera():
    rng = np.random.default_rng(0)
    fit = decode(rng.uniform(-1, 1, (3, 96, 128)))
    assert fit.inlier_ratio < 0.1


def test_degenerate_inputs_raise_clear_errors():
    with pytest.raises(CalibrationError, match="unclipped"):
        decode(np.ones((3, 32, 32), np.float32))  # every angle saturated
    with pytest.raises(CalibrationError, match="positive focal"):
        decode(np.full((3, 32, 32), 0.25, np.float32))  # the same ray everywhere
    with pytest.raises(CalibrationError, match="shape"):
        decode(np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="positive"):
        encode((0.0, 10.0, 5.0, 5.0), 10, 10)
