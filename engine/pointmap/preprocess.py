"""Network input exactly as the reference prepares it (dust3r.utils.image.load_images), and the way back.

Steps: apply the EXIF orientation, convert to RGB; size 512 (and any size but 224): resize the long side to
`size` (Lanczos when shrinking, bicubic otherwise, Pillow's filters), centre-crop each side to a multiple of the
patch size (a square image is cropped to 4:3 unless `square_ok`); size 224: resize the short side to 224 and
centre-crop a square. Pixels become [-1, 1] floats.

`PixelMap` records the resize and crop so network pixels map back to the original image (COLMAP convention,
pixel centres at +0.5): Pillow's resize maps continuous coordinates by the size ratio, so
u_original = (u_network + crop_x) * W_original / W_resized, and likewise for v.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EngineError


class ImageError(EngineError):
    """An input image that cannot be read or cannot become a network input."""


@dataclass(frozen=True)
class PixelMap:
    """How a network input was cut from its original image (sizes are (width, height))."""

    original_size: tuple[int, int]  # after the EXIF orientation is applied
    resized_size: tuple[int, int]
    crop: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the resized image

    @property
    def size(self) -> tuple[int, int]:
        """Network input (width, height)."""
        return (self.crop[2] - self.crop[0], self.crop[3] - self.crop[1])

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per network pixel along u and v."""
        return (self.original_size[0] / self.resized_size[0], self.original_size[1] / self.resized_size[1])

    def to_original(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) continuous network pixel coordinates -> original image coordinates."""
        uv = np.asarray(uv, dtype=np.float64)
        offset = np.array(self.crop[:2], dtype=np.float64)
        return (uv + offset) * np.array(self.scale)

    def to_network(self, uv: np.ndarray) -> np.ndarray:
        """Inverse of `to_original`."""
        uv = np.asarray(uv, dtype=np.float64)
        return uv / np.array(self.scale) - np.array(self.crop[:2], dtype=np.float64)


def pixel_map(original_size: tuple[int, int], size: int = 512, square_ok: bool = False, patch: int = 16,
              name: str = "image") -> PixelMap:
    """The reference's resize and crop for an image of `original_size` (width, height)."""
    w1, h1 = (int(v) for v in original_size)
    if w1 <= 0 or h1 <= 0:
        raise ImageError(f"{name}: empty image ({w1}x{h1})")
    long_edge = round(size * max(w1 / h1, h1 / w1)) if size == 224 else size
    s = max(w1, h1)
    w, h = (int(round(x * long_edge / s)) for x in (w1, h1))
    cx, cy = w // 2, h // 2
    if size == 224:
        half = min(cx, cy)
        box = (cx - half, cy - half, cx + half, cy + half)
    else:
        halfw = ((2 * cx) // patch) * patch / 2
        halfh = ((2 * cy) // patch) * patch / 2
        if not square_ok and w == h:
            halfh = 3 * halfw / 4
        box = (cx - halfw, cy - halfh, cx + halfw, cy + halfh)
    crop = tuple(int(round(v)) for v in box)  # as Pillow's Image.crop rounds its box
    result = PixelMap((w1, h1), (w, h), crop)
    cw, ch = result.size
    if cw < patch or ch < patch or cw % patch or ch % patch:
        raise ImageError(f"{name}: a {w1}x{h1} image gives a {cw}x{ch} network input at size {size}, "
                         f"which is not a positive multiple of {patch} on both sides (image too elongated?)")
    return result


def load_rgb(path: str | os.PathLike):
    """The image as Pillow shows it upright (EXIF orientation applied), in RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def prepare(img, size: int = 512, square_ok: bool = False, patch: int = 16, name: str = "image"
            ) -> tuple[np.ndarray, PixelMap]:
    """A Pillow RGB image -> (H, W, 3) uint8 network input and its PixelMap."""
    from PIL import Image

    pm = pixel_map(img.size, size, square_ok, patch, name)
    filt = Image.LANCZOS if max(img.size) > max(pm.resized_size) else Image.BICUBIC
    out = img.resize(pm.resized_size, filt).crop(pm.crop)
    return np.array(out, dtype=np.uint8), pm


def load_and_prepare(paths: Sequence[str | os.PathLike], size: int = 512, square_ok: bool = False,
                     patch: int = 16, workers: int | None = None) -> list[tuple[np.ndarray, PixelMap]]:
    """`prepare(load_rgb(p))` for every path, decoded and resized in parallel threads (Pillow releases the GIL)."""
    def one(path):
        return prepare(load_rgb(path), size, square_ok, patch, name=str(Path(path)))

    workers = workers or min(len(paths), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def to_tensor(image: np.ndarray):
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1], with the reference's arithmetic (x/255 - 0.5) / 0.5."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    return t.sub(0.5).div(0.5)
