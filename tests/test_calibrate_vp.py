"""Vanishing-point calibration (engine.calibrate.vanishing) and `auto`, engine only: line drawings of a Manhattan
room seen by known cameras (fast, exact geometry), degenerate views and bad input. Rendered rooms are in
test_calibrate_render.py."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.calibrate import auto, vanishing
from engine.calibrate.result import CalibrationError


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """cam_from_world (OpenCV axes) of a camera looking along world +Y turned by yaw (about +Z, to the left),
    pitched up by `pitch` and rolled by `roll` (degrees); world +Z is up."""
    base = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # looks along +Y, image up = +Z

    def axis_rot(axis, deg):
        return cv2.Rodrigues(np.asarray(axis, float) * math.radians(deg))[0]

    world_from_cam = axis_rot([0, 0, 1], yaw) @ axis_rot([1, 0, 0], pitch) @ base.T @ axis_rot([0, 0, 1], roll)
    return world_from_cam.T


def room_segments() -> np.ndarray:
    """(N, 2, 3) world segments: floor and ceiling grids, wall grids of a 12 x 12 x 3 m room (+ door frames)."""
    segs = []
    for t in np.arange(-6, 6.01, 0.75):
        for z in (0.0, 3.0):
            segs += [[(t, -6, z), (t, 6, z)], [(-6, t, z), (6, t, z)]]
        for wall in (-6.0, 6.0):
            segs += [[(t, wall, 0), (t, wall, 3)], [(wall, t, 0), (wall, t, 3)]]
    for z in np.arange(0.25, 3.0, 0.5):
        for wall in (-6.0, 6.0):
            segs += [[(-6, wall, z), (6, wall, z)], [(wall, -6, z), (wall, 6, z)]]
    return np.array(segs, dtype=np.float64)


def draw(cam_from_world: np.ndarray, centre, f: float, width: int, height: int, pp=(0.0, 0.0)) -> np.ndarray:
    """Anti-aliased drawing (uint8 RGB) of the room's segments seen by a pinhole camera at `centre`."""
    image = np.full((height, width, 3), 200, np.uint8)
    k = np.array([[f, 0, width / 2 + pp[0]], [0, f, height / 2 + pp[1]], [0, 0, 1]])
    for a, b in room_segments():
        pa, pb = (cam_from_world @ (p - centre) for p in (a, b))
        if pa[2] < 0.05 and pb[2] < 0.05:
            continue
        if pa[2] < 0.05 or pb[2] < 0.05:  # clip at the near plane
            s = (0.05 - pa[2]) / (pb[2] - pa[2])
            pa, pb = (pa + s * (pb - pa), pb) if pa[2] < 0.05 else (pa, pa + s * (pb - pa))
        ua, ub = ((k @ p)[:2] / p[2] for p in (pa, pb))
        ok, p1, p2 = cv2.clipLine((-4 * width, -4 * height, 9 * width, 9 * height),
                                  tuple(int(v) for v in ua.clip(-1e6, 1e6)), tuple(int(v) for v in ub.clip(-1e6, 1e6)))
        if not ok:
            continue
        # sub-pixel end points (shift 4), OpenCV's pixel centres at integers: COLMAP u - 0.5
        q1, q2 = (tuple(int(round((v - 0.5) * 16)) for v in u) for u in (ua, ub))
        if max(map(abs, q1 + q2)) < 2 ** 26:
            cv2.line(image, q1, q2, (40, 40, 40), 2, cv2.LINE_AA, shift=4)
    return image


def _save(tmp_path, name, rgb):
    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return path


def _up_error_deg(result, truth):
    return math.degrees(math.acos(np.clip(result.cam_from_world[:3, 2] @ truth[:, 2], -1, 1)))


CENTRE = np.array([0.5, -1.0, 1.4])


@pytest.mark.parametrize("hfov, size, pose", [
    (60.0, (640, 480), (35.0, -12.0, 5.0)),
    (30.0, (640, 480), (-20.0, 8.0, -4.0)),
    (95.0, (640, 480), (50.0, -25.0, 0.0)),
    (55.0, (480, 640), (25.0, -10.0, 8.0)),  # portrait
])
def test_line_drawing_views(tmp_path, hfov, size, pose):
    w, h = size
    f = w / 2 / math.tan(math.radians(hfov) / 2)
    r = rotation(*pose)
    result = vanishing.calibrate_vp(_save(tmp_path, "room.png", draw(r, CENTRE, f, w, h)))
    assert (result.width, result.height) == (w, h) and result.method == "vp"
    assert result.hfov_deg == pytest.approx(hfov, abs=0.5)
    assert result.params[1:] == pytest.approx([w / 2, h / 2], abs=0.01 * w)
    assert _up_error_deg(result, r) < 0.5
    assert result.confidence > 0.7
    # the frame is right-handed with +Z up and X the horizontal direction nearest the image's right
    rot = result.cam_from_world[:3, :3]
    assert np.linalg.det(rot) == pytest.approx(1.0) and rot[0, 0] > 0.5
    np.testing.assert_allclose(np.abs(rot.T @ r), np.eye(3)[[0, 1, 2]] if abs(rot[:, 0] @ r[:, 0]) > 0.5
                               else np.eye(3)[[1, 0, 2]], atol=0.02)


def test_frontal_view_cannot_fix_the_focal(tmp_path):
    """Looking straight at a wall, level: two vanishing points at infinity, so f is unobservable; the answer
    must say so (low confidence), while the vertical is still exact."""
    w, h, f = 640, 480, 500.0
    r = rotation(0.0, 0.0, 0.0)
    result = vanishing.calibrate_vp(_save(tmp_path, "frontal.png", draw(r, CENTRE, f, w, h)))
    assert result.confidence < 0.3
    assert "poorly constrained" in result.reason
    assert _up_error_deg(result, r) < 0.5
    assert sum(p["at_infinity"] for p in result.extras["vanishing_points"].values()) == 2


def test_known_focal_gives_the_rotation(tmp_path):
    w, h, f = 640, 480, 450.0
    r = rotation(10.0, -5.0, 3.0)
    path = _save(tmp_path, "room.png", draw(r, CENTRE, f, w, h))
    result = vanishing.calibrate_vp(path, focal=f, principal=(w / 2, h / 2))
    assert result.params[0] == pytest.approx(f) and _up_error_deg(result, r) < 0.3


def test_off_centre_principal_point_from_three_finite_vanishing_points(tmp_path):
    w, h, f, pp = 640, 480, 380.0, (28.0, -18.0)
    r = rotation(40.0, -28.0, 6.0)
    result = vanishing.calibrate_vp(_save(tmp_path, "shifted.png", draw(r, CENTRE, f, w, h, pp)))
    assert result.extras["pp_source"] == "orthocentre"
    assert result.params[1:] == pytest.approx([w / 2 + pp[0], h / 2 + pp[1]], abs=4.0)
    assert result.params[0] == pytest.approx(f, rel=0.01)


def test_large_photo_is_measured_downscaled_and_reported_in_original_pixels(tmp_path):
    w, h, hfov = 4800, 3600, 65.0
    f = w / 2 / math.tan(math.radians(hfov) / 2)
    small = draw(rotation(30.0, -15.0, 2.0), CENTRE, f * 1200 / w, 1200, 900)
    path = tmp_path / "large.jpg"
    Image.fromarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)).save(path, quality=90)
    result = vanishing.calibrate_vp(path)
    assert (result.width, result.height) == (w, h)
    assert result.params[0] == pytest.approx(f, rel=0.01)
    assert result.extras["work_size"] == [vanishing.WORK_SIDE, vanishing.WORK_SIDE * 3 // 4]


def test_no_lines_tiny_and_noise_images(tmp_path):
    rng = np.random.default_rng(0)
    blobs = cv2.GaussianBlur((rng.random((240, 320, 3)) * 255).astype(np.uint8), (0, 0), 12)
    blobs = cv2.normalize(blobs, None, 0, 255, cv2.NORM_MINMAX)
    cases = {"blobs.png": blobs, "tiny.png": np.full((1, 1, 3), 90, np.uint8),
             "noise.png": (rng.random((240, 320, 3)) * 255).astype(np.uint8)}
    for name, rgb in cases.items():
        path = _save(tmp_path, name, rgb)
        try:
            result = vanishing.calibrate_vp(path)
        except CalibrationError as exc:
            assert name in str(exc)
        else:  # whatever it found must not claim to be trustworthy
            assert result.confidence < 0.3, (name, result.reason)
        fallback = auto.calibrate(path)
        assert fallback.method in ("prior", "vp") and fallback.confidence < 0.3
        if fallback.method == "prior":
            assert fallback.hfov_deg == pytest.approx(auto.PRIOR_HFOV_DEG) or fallback.vfov_deg == pytest.approx(
                auto.PRIOR_HFOV_DEG)
            assert "auto fell back to the prior" in fallback.reason
    with pytest.raises(CalibrationError, match="too small"):
        vanishing.calibrate_vp(tmp_path / "tiny.png")


def test_auto_prefers_confident_vp_then_exif(tmp_path):
    w, h, f = 640, 480, 420.0
    room = draw(rotation(30.0, -10.0, 0.0), CENTRE, f, w, h)
    result = auto.calibrate(_save(tmp_path, "room.png", room))
    assert result.method == "vp" and "auto chose vanishing points" in result.reason
    assert "no DM-Calib weights found" in result.reason and result.extras["orientation"] == 1
    # A frontal view (focal unobservable) with EXIF: EXIF wins, and the rotation comes from the vanishing points
    frontal = Image.fromarray(draw(rotation(0.0, 0.0, 0.0), CENTRE, f, w, h))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 30  # 35 mm equivalent
    frontal.save(tmp_path / "frontal.jpg", exif=exif.tobytes(), quality=95)
    result = auto.calibrate(tmp_path / "frontal.jpg")
    assert result.method == "exif" and "vanishing points not confident" in result.reason
    assert result.params[0] == pytest.approx(30 / 43.27 * 800)
    assert result.cam_from_world is not None and "rotation from vanishing points" in result.reason


def test_auto_falls_back_from_corrupt_dmcalib_weights(tmp_path):
    weights = tmp_path / "weights"
    (weights / "unet").mkdir(parents=True)
    (weights / "unet" / "config.json").write_text("{ not json")
    path = _save(tmp_path, "room.png", draw(rotation(30.0, -10.0, 0.0), CENTRE, 420.0, 640, 480))
    result = auto.calibrate(path, weights=weights)
    assert result.method == "vp" and "DM-Calib failed" in result.reason
    with pytest.raises(CalibrationError, match="DM-Calib"):
        auto.calibrate(path, "dmcalib", weights=weights)
    with pytest.raises(CalibrationError, match="no DM-Calib weights found"):
        auto.calibrate(path, "dmcalib", weights=tmp_path / "absent")


@pytest.mark.parametrize("confidence, method", [(0.9, "vp"), (0.3, "vp"), (0.05, "prior")])
def test_auto_order_without_exif(tmp_path, monkeypatch, confidence, method):
    """Confident VP wins; without EXIF an uncertain VP estimate is kept over the prior unless it is near zero."""
    from engine.calibrate.result import CalibrationResult

    def fake_vp(image, **fixed):
        return CalibrationResult.pinhole(300.0, 300.0, 160.0, 120.0, 320, 240, method="vp", confidence=confidence,
                                         reason="fake", cam_from_world=np.eye(4))
    monkeypatch.setattr(auto, "calibrate_vp", fake_vp)
    result = auto.calibrate(_save(tmp_path, "grey.png", np.full((240, 320, 3), 100, np.uint8)))
    assert result.method == method
    assert {0.9: "auto chose vanishing points", 0.3: "auto kept the uncertain vanishing-point estimate",
            0.05: "auto fell back to the prior"}[confidence] in result.reason
