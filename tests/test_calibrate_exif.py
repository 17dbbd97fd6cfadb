"""EXIF calibration and photo loading (engine.calibrate.exif, engine.calibrate.image_io) on files written here
with Pillow: focal tags, orientation tags, bit depths, channel layouts and broken files."""
from __future__ import annotations

import math
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from engine.calibrate.exif import calibrate_exif
from engine.calibrate.image_io import MAX_PIXELS, load_image, read_header
from engine.calibrate.result import CalibrationError, CalibrationResult

EXIF_IFD = 0x8769
ORIENTATION = 0x0112
FOCAL_LENGTH, FOCAL_35MM = 0x920A, 0xA405
FP_XRES, FP_YRES, FP_UNIT = 0xA20E, 0xA20F, 0xA210
PIXEL_X, PIXEL_Y = 0xA002, 0xA003


def _write(path, array, orientation=None, **tags):
    """Save `array` (stored pixels) with EXIF tags given by tag id (keyword `t<hex id>`)."""
    image = Image.fromarray(array)
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    sub = exif.get_ifd(EXIF_IFD)
    for name, value in tags.items():
        sub[int(name[1:], 16)] = value
    image.save(path, exif=exif.tobytes(), **({"quality": 95} if str(path).endswith(".jpg") else {}))
    return path


def _grey(h, w):
    return np.full((h, w, 3), 128, np.uint8)


def test_35mm_equivalent(tmp_path):
    path = _write(tmp_path / "phone.jpg", _grey(300, 400), tA405=26)
    result = calibrate_exif(path)
    f = 26 / 43.27 * 500.0  # the 35 mm frame's diagonal maps onto the image's
    assert result.method == "exif" and result.model == "SIMPLE_PINHOLE"
    np.testing.assert_allclose(result.params, [f, 200.0, 150.0], rtol=1e-9)
    assert result.hfov_deg == pytest.approx(math.degrees(2 * math.atan(200 / f)))
    assert result.vfov_deg == pytest.approx(math.degrees(2 * math.atan(150 / f)))
    assert "35 mm equivalent 26 mm" in result.reason and 0 < result.confidence < 0.8
    assert result.cam_from_world is None


@pytest.mark.parametrize("unit, per_mm", [(2, 25.4), (3, 10.0), (4, 1.0)])
def test_focal_plane_resolution_of_a_resized_photo(tmp_path, unit, per_mm):
    """A 6000 px wide full-frame capture saved at 600 px: FocalPlaneXResolution is for the 6000 px image."""
    xres = 6000 / 36.0 * per_mm  # pixels per unit on a 36 mm wide sensor
    path = _write(tmp_path / "dslr.jpg", _grey(400, 600), t920A=IFDRational(50, 1), tA20E=IFDRational(xres),
                  tA210=unit, tA002=6000, tA003=4000, tA405=50)
    result = calibrate_exif(path)
    assert result.params[0] == pytest.approx(50 * 600 / 36.0, rel=1e-4)  # 50 mm on a 36 mm sensor 600 px wide
    assert result.confidence == pytest.approx(0.8) and "agrees" in result.reason


def test_disagreeing_tags_prefer_35mm_with_low_confidence(tmp_path):
    path = _write(tmp_path / "odd.jpg", _grey(400, 600), t920A=IFDRational(50, 1), tA20E=IFDRational(6000 / 36 * 25.4),
                  tA210=2, tA002=6000, tA405=35)
    result = calibrate_exif(path)
    assert result.params[0] == pytest.approx(35 / 43.27 * math.hypot(600, 400))
    assert result.confidence < 0.5 and "disagrees" in result.reason


def test_orientation_swaps_the_displayed_size(tmp_path):
    path = _write(tmp_path / "portrait.jpg", _grey(300, 400), orientation=6, tA405=28)
    result = calibrate_exif(path)
    assert (result.width, result.height) == (300, 400)
    f = 28 / 43.27 * 500.0
    np.testing.assert_allclose(result.params, [f, 150.0, 200.0])
    assert result.hfov_deg < result.vfov_deg and "orientation 6" in result.reason


@pytest.mark.parametrize("tags, match", [
    ({}, "EXIF gives no focal length"),
    ({"t920A": IFDRational(50, 1)}, "no FocalLength with FocalPlaneXResolution"),
    ({"t920A": IFDRational(50, 1), "tA20E": IFDRational(2, 1), "tA210": 2}, "implausible sensor width"),
    ({"tA405": 0}, "EXIF gives no focal length"),
])
def test_missing_or_broken_focal_tags_are_an_error(tmp_path, tags, match):
    path = _write(tmp_path / "none.jpg", _grey(40, 60), **tags)
    with pytest.raises(CalibrationError, match=match) as info:
        calibrate_exif(path)
    assert "none.jpg" in str(info.value)


# EXIF orientation o: how the stored pixels were made from the displayed picture (inverse of the display
# transform in the EXIF 2.32 definition: 6 = "0th row is the visual right side", i.e. display = stored turned
# 90 degrees clockwise; np.rot90 turns counter-clockwise).
STORED_FROM_DISPLAYED = {
    1: lambda d: d, 2: lambda d: d[:, ::-1], 3: lambda d: d[::-1, ::-1], 4: lambda d: d[::-1],
    5: lambda d: d.transpose(1, 0, 2), 6: lambda d: np.rot90(d, 1), 7: lambda d: d[::-1, ::-1].transpose(1, 0, 2),
    8: lambda d: np.rot90(d, -1),
}


def displayed_picture(h=30, w=40):
    """A picture whose every pixel differs: red ramps along x, green along y."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 6, y * 8, np.full_like(x, 200)], -1).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_gives_the_displayed_pixels(tmp_path, orientation):
    shown = displayed_picture()
    path = _write(tmp_path / "o.png", np.ascontiguousarray(STORED_FROM_DISPLAYED[orientation](shown)), orientation)
    header = read_header(path)
    assert header.orientation == orientation and (header.width, header.height) == (40, 30)
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.rgb, shown)
    assert loaded.scale == (1.0, 1.0)


def test_bit_depths_and_channel_layouts(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    cv2.imwrite(str(tmp_path / "grey16.png"), ramp)
    grey16 = load_image(tmp_path / "grey16.png").rgb
    assert grey16.dtype == np.uint8 and grey16.shape == (8, 64, 3)
    np.testing.assert_allclose(grey16[0, :, 0], np.linspace(0, 255, 64), atol=0.6)  # scaled, not clipped
    rgb16 = np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 30000)], -1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    np.testing.assert_allclose(load_image(tmp_path / "rgb16.png").rgb.astype(float), rgb16 / 257.0, atol=1.0)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png").rgb
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 1].tolist() == [128, 128, 128]  # over mid-grey
    Image.fromarray(ramp.astype(np.float32) / 65535 * 255 // 1).convert("L").save(tmp_path / "grey.jpg")
    assert load_image(tmp_path / "grey.jpg").rgb.shape == (8, 64, 3)
    Image.fromarray(displayed_picture()).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").rgb.shape == (30, 40, 3)


def _png_header_only(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_broken_and_absurd_files_are_clear_errors(tmp_path):
    full = _write(tmp_path / "full.jpg", (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8))
    data = full.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    cases = {"truncated.jpg": "truncated or corrupt", "text.png": "not an image file", "missing.jpg": "not found"}
    for name, match in cases.items():
        with pytest.raises(CalibrationError, match=match) as info:
            load_image(tmp_path / name)
        assert name in str(info.value)
    huge = _png_header_only(tmp_path / "huge.png", 30000, 30000)  # 900 MP, declared only
    assert 30000 * 30000 > MAX_PIXELS
    with pytest.raises(CalibrationError, match="too large"):
        read_header(huge)


def test_big_jpeg_is_decoded_downscaled(tmp_path):
    big = cv2.resize(displayed_picture(), (6000, 4500), interpolation=cv2.INTER_LINEAR)
    path = _write(tmp_path / "big.jpg", big)
    loaded = load_image(path, max_side=1000)
    assert loaded.rgb.shape == (750, 1000, 3) and (loaded.width, loaded.height) == (6000, 4500)
    assert loaded.scale == pytest.approx((1000 / 6000, 750 / 4500))
    small = cv2.resize(big, (1000, 750), interpolation=cv2.INTER_AREA)
    assert np.abs(loaded.rgb.astype(int) - small).mean() < 3.0


def test_result_json_round_trip_and_validation():
    pose = np.eye(4)
    pose[:3, :3] = [[0, 1, 0], [0, 0, -1], [-1, 0, 0]]
    result = CalibrationResult.pinhole(500, 500, 321, 239, 640, 480, method="vp", confidence=0.7, reason="test",
                                       cam_from_world=pose, extras={"a": np.float32(1.5), "b": np.arange(2)})
    doc = result.to_json()
    assert doc["extras"] == {"a": 1.5, "b": [0, 1]}
    back = CalibrationResult.from_json(doc)
    np.testing.assert_array_equal(back.cam_from_world, pose)
    assert back.params == result.params and back.hfov_deg == result.hfov_deg
    # yawed: a quarter turn makes the old +Y the new +X
    turned = result.yawed(1)
    np.testing.assert_allclose(turned[:3, 0], pose[:3, 1])
    np.testing.assert_allclose(result.yawed(4), pose)
    with pytest.raises(CalibrationError, match="missing field"):
        CalibrationResult.from_json({"width": 1})
    with pytest.raises(CalibrationError, match="proper rotation"):
        CalibrationResult.from_json({**doc, "cam_from_world": np.diag([1, 1, -1, 1]).tolist()})
    with pytest.raises(ValueError, match="confidence"):
        CalibrationResult.pinhole(1, 1, 0, 0, 2, 2, method="vp", confidence=1.5, reason="")
