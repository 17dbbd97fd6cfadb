"""Network input preparation: the reference's sizes and pixels, and the map back to original pixels.

tests/data/pointmap/reference_preprocess.json holds, for synthetic photos of several shapes, the network input
size and the SHA-256 of the uint8 pixels that the reference's `load_images` produced (reference commits inside).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pointmap_checkpoint import synthetic_image

from engine.pointmap.preprocess import ImageError, load_and_prepare, load_rgb, pixel_map, prepare, to_tensor

GOLDEN = json.loads((Path(__file__).parent / "data" / "pointmap" / "reference_preprocess.json").read_text())


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name, (h, w) in GOLDEN["cases"].items():
        out[name] = folder / f"{name}.png"
        Image.fromarray(synthetic_image(h, w, GOLDEN["seed"])).save(out[name], compress_level=1)
    return out


@pytest.mark.parametrize("size, mode", [(512, "crop"), (512, "square_ok"), (224, "crop")])
def test_same_pixels_as_reference(photos, size, mode):
    names = list(GOLDEN["cases"])
    prepared = load_and_prepare([photos[n] for n in names], size=size, square_ok=mode == "square_ok")
    for name, (arr, pm) in zip(names, prepared):
        expected = GOLDEN["results"][f"{name}/{size}/{mode}"]
        assert list(arr.shape[:2]) == expected["hw"] and pm.size == tuple(expected["hw"][::-1]), name
        assert hashlib.sha256(arr.tobytes()).hexdigest() == expected["sha256"], name


@pytest.mark.parametrize("original, size, square_ok, net", [
    ((640, 480), 512, False, (512, 384)),  # landscape
    ((480, 640), 512, False, (384, 512)),  # portrait
    ((500, 500), 512, False, (512, 384)),  # square: cropped to 4:3 like the reference
    ((500, 500), 512, True, (512, 512)),
    ((20, 12), 512, False, (512, 304)),  # tiny: upsampled (307 rows cropped to 304)
    ((8000, 6000), 512, False, (512, 384)),  # huge
    ((1001, 333), 512, False, (512, 160)),
    ((4000, 3000), 224, False, (224, 224)),  # short side to 224, centre square
    ((333, 1001), 224, False, (224, 224)),
])
def test_network_sizes(original, size, square_ok, net):
    pm = pixel_map(original, size, square_ok)
    assert pm.size == net and all(v % 16 == 0 for v in pm.size)


def test_too_elongated_or_unreadable(tmp_path):
    with pytest.raises(ImageError, match=r"strip\.jpg: a 3000x40 image gives a 512x0 network input"):
        pixel_map((3000, 40), 512, name="strip.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"bad\.jpg: cannot read image"):
        load_rgb(bad)


def test_pixel_map_sends_network_pixels_back_to_the_photo():
    """A bright square in the photo lands where PixelMap.to_network says, and maps back within a pixel."""
    w0, h0 = 1001, 667
    photo = np.zeros((h0, w0, 3), np.uint8)
    x0, y0 = 700, 200  # top-left of a 30x30 square: centre (715, 215) in continuous pixel coordinates
    photo[y0:y0 + 30, x0:x0 + 30] = 255
    arr, pm = prepare(Image.fromarray(photo), 512)
    ys, xs = np.nonzero(arr[..., 0] > 127)
    centre_net = np.array([xs.mean() + 0.5, ys.mean() + 0.5])  # pixel centres at +0.5
    np.testing.assert_allclose(pm.to_original(centre_net), [715, 215], atol=0.5)
    np.testing.assert_allclose(pm.to_network(pm.to_original(centre_net)), centre_net, atol=1e-9)
    assert pm.original_size == (w0, h0) and pm.scale[0] == pytest.approx(w0 / pm.resized_size[0])


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with EXIF orientation 6 gives the same input as the upright photo."""
    upright = synthetic_image(300, 400, 3)  # 400 wide, 300 tall as displayed
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what a camera held sideways stores
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rotated.png", exif=exif)
    (arr, pm), = load_and_prepare([tmp_path / "rotated.png"])
    expected, _ = prepare(Image.fromarray(upright))
    assert pm.original_size == (400, 300)
    np.testing.assert_array_equal(arr, expected)


def test_normalisation():
    img = np.array([[[0, 128, 255]]], np.uint8)
    t = to_tensor(img)
    assert t.shape == (3, 1, 1)
    np.testing.assert_allclose(t.flatten().numpy(), [-1.0, 128 / 255 * 2 - 1, 1.0], atol=1e-7)
