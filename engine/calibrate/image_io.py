"""Loading photos for calibration (Pillow): EXIF orientation, any bit depth or channel layout, big files.

`read_header` reads the size as displayed (after the EXIF orientation), the orientation and the EXIF tags without
decoding pixels. `load_image` returns 8-bit RGB pixels as displayed, optionally downscaled so the long side is at
most `max_side` (JPEGs are decoded at reduced size directly). With pixel centres at +0.5 (COLMAP's convention),
a pixel position in the downscaled image maps to the original by a pure scale: u = u_small / scale_x.
Anything unreadable (missing, not an image, truncated, absurdly large) raises `CalibrationError` naming the file.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .result import CalibrationError

# Refuse images above this many pixels (Pillow's own decompression-bomb guard stops at 2 x 89.5 MP); a 150 MP
# medium-format photo is 0.15e9.
MAX_PIXELS = 400_000_000
# EXIF orientation values whose transform swaps width and height (transpose, rotations by 90 and 270 degrees).
TRANSPOSED = (5, 6, 7, 8)

# EXIF tags read (name -> tag id): IFD0 and the Exif sub-IFD (EXIF 2.32, CIPA DC-008).
_IFD0_TAGS = {"Make": 0x010F, "Model": 0x0110, "Orientation": 0x0112}
_EXIF_TAGS = {"FocalLength": 0x920A, "FocalLengthIn35mmFilm": 0xA405, "FocalPlaneXResolution": 0xA20E,
              "FocalPlaneYResolution": 0xA20F, "FocalPlaneResolutionUnit": 0xA210, "PixelXDimension": 0xA002,
              "PixelYDimension": 0xA003}
_EXIF_IFD = 0x8769


@dataclass
class ImageHeader:
    path: Path
    width: int  # as displayed (after the EXIF orientation)
    height: int
    stored_width: int  # as stored in the file (before the orientation)
    stored_height: int
    orientation: int  # EXIF orientation 1..8 (1: none)
    exif: dict[str, Any] = field(default_factory=dict)  # the tags of _IFD0_TAGS / _EXIF_TAGS that are present


@dataclass
class LoadedImage:
    header: ImageHeader
    rgb: np.ndarray  # (h, w, 3) uint8, as displayed, possibly downscaled from header.width x header.height

    @property
    def width(self) -> int:
        return self.header.width

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): pixel coordinates in `rgb` are the original's times these."""
        h, w = self.rgb.shape[:2]
        return w / self.header.width, h / self.header.height

    def grey(self) -> np.ndarray:
        """(h, w) uint8 luma (Rec. 601 weights)."""
        rgb = self.rgb.astype(np.float32)
        return np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255).astype(np.uint8)


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise CalibrationError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is checked below
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise CalibrationError(f"{path}: image too large to calibrate ({exc})") from None
    except UnidentifiedImageError:
        raise CalibrationError(f"{path}: not an image file Pillow can read") from None
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot open image ({exc})") from None
    w, h = image.size
    if w * h > MAX_PIXELS:
        image.close()
        raise CalibrationError(f"{path}: image too large to calibrate ({w}x{h} = {w * h / 1e6:.0f} MP; "
                               f"the limit is {MAX_PIXELS / 1e6:.0f} MP)")
    if w < 1 or h < 1:
        image.close()
        raise CalibrationError(f"{path}: image has no pixels ({w}x{h})")
    return image


def _header(path: Path, image) -> ImageHeader:
    exif: dict[str, Any] = {}
    try:
        raw = image.getexif()
        sub = raw.get_ifd(_EXIF_IFD)
    except Exception as exc:  # noqa: BLE001 - Pillow raises assorted errors on damaged EXIF blocks
        warnings.warn(f"{path}: unreadable EXIF data ignored ({exc})")
        raw, sub = {}, {}
    for tags, source in ((_IFD0_TAGS, raw), (_EXIF_TAGS, sub)):
        for name, tag in tags.items():
            value = source.get(tag)
            if value is None:
                continue
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            if isinstance(value, str):
                value = value.strip("\x00 ").strip()
            exif[name] = value
    orientation = exif.get("Orientation", 1)
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1  # out-of-range values are ignored, as Pillow's exif_transpose does
    w, h = image.size
    dw, dh = (h, w) if orientation in TRANSPOSED else (w, h)
    return ImageHeader(path, dw, dh, w, h, orientation, exif)


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Size (as displayed), orientation and EXIF tags of an image file, without decoding its pixels."""
    path = Path(path)
    with _open(path) as image:
        return _header(path, image)


def _to_rgb8(image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded Pillow image of any mode; alpha is composited over mid-grey."""
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit / 32-bit / float greyscale
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        top = finite.max() if finite.size else 0.0
        # integer images: scale by the bit depth the data needs (8, 16 or 32 bits); float images: by their maximum
        full = (255.0 if top <= 255 else 65535.0 if top <= 65535 else 2.0 ** 32 - 1) if mode != "F" else max(top, 1e-12)
        grey = np.clip(np.nan_to_num(values, nan=0.0) / full * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if "A" in mode or mode == "P" and "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        return np.clip(rgba[..., :3] * alpha + 128.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    if mode != "RGB":
        image = image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, 48-bit RGB (Pillow reads it as 8-bit)
    rgb = np.asarray(image, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise CalibrationError(f"{path}: unexpected pixel layout {rgb.shape} for image mode {mode}")
    return rgb


def load_image(path: str | os.PathLike, max_side: int | None = None) -> LoadedImage:
    """8-bit RGB pixels of `path` as displayed (EXIF orientation applied), downscaled (area average) so that the
    long side is at most `max_side` when given."""
    from PIL import Image, ImageOps

    path = Path(path)
    with _open(path) as image:
        header = _header(path, image)
        long_side = max(header.width, header.height)
        if max_side is not None and long_side > max_side and image.format == "JPEG":
            # JPEG DCT scaling: decode at 1/2, 1/4 or 1/8 size, never below the requested size
            image.draft("RGB", (int(np.ceil(image.size[0] * max_side / long_side)),
                                int(np.ceil(image.size[1] * max_side / long_side))))
        try:
            image.load()
            image = ImageOps.exif_transpose(image) if header.orientation != 1 else image
            rgb = _to_rgb8(image, path)
        except OSError as exc:  # truncated or corrupt data
            raise CalibrationError(f"{path}: truncated or corrupt image data ({exc})") from None
        except (ValueError, SyntaxError) as exc:
            raise CalibrationError(f"{path}: cannot decode image ({exc})") from None
    h, w = rgb.shape[:2]
    if max_side is not None and max(w, h) > max_side:
        import cv2

        s = max_side / max(header.width, header.height)
        size = (max(1, round(header.width * s)), max(1, round(header.height * s)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return LoadedImage(header, np.ascontiguousarray(rgb))
