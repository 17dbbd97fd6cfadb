# SPDX-License-Identifier: GPL-3.0-or-later
"""The input photos of a reconstruction: finding them, measuring them upright, and decoding video frames.

COLMAP and Blender read pixels as they are stored and ignore the EXIF orientation tag (checked with pycolmap
4.2.1 and bpy 5.0.1), while a camera must describe the photo as people see it. So every photo is measured
upright (engine.calibrate.image_io reads the headers), and one stored rotated or mirrored (orientation tag
other than 1), or in a format COLMAP cannot read (WebP), gets an upright copy that the reconstruction and the
bundle use instead (`make_upright`). The originals are never changed. The EXIF focal length, when there is one
(engine.calibrate.exif, as Match Camera reads it), seeds the camera. Video frames are decoded to JPEG files
(`extract_frames`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from ..errors import EngineError
from ..progress import Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
_READ_AS_IS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}  # COLMAP and Blender both read these
_JPEG_QUALITY = 95


class ImageInputError(EngineError):
    """Input photos or a video that cannot be used: missing, unreadable, too few, or with clashing names."""


@dataclass(frozen=True)
class Photo:
    name: str  # unique among the inputs: the file name, used as the image name in the bundle
    source: Path  # the user's file (or the decoded video frame)
    width: int  # upright size (EXIF orientation applied)
    height: int
    group: str  # photos of one group with one size share a camera: the source folder, or the video
    orientation: int = 1  # EXIF orientation tag of `source`
    exif_focal: float | None = None  # focal length in (upright) pixels from the EXIF tags
    path: Path | None = None  # the upright file to read: `source`, or its copy made by `make_upright`

    @property
    def needs_copy(self) -> bool:
        """True when COLMAP and Blender would not see `source` as it is meant to look."""
        return self.orientation != 1 or self.source.suffix.lower() not in _READ_AS_IS

    @property
    def file(self) -> Path:
        """The upright file: the copy when there is one, else the source."""
        return self.path or self.source


def listing(names: Sequence[str], limit: int = 5) -> str:
    """`names` joined for a message, the first `limit` of them."""
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _natural_key(path: Path) -> list:
    """Name order with digit runs compared as numbers (frame_2 before frame_10)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _probe(path: Path, group: str) -> Photo:
    from ..calibrate.exif import calibrate_exif
    from ..calibrate.image_io import read_header
    from ..calibrate.result import CalibrationError

    try:
        header = read_header(path)
    except CalibrationError as exc:
        raise ImageInputError(str(exc)) from None
    try:
        focal = calibrate_exif(header).params[0]
    except CalibrationError:  # no focal length in the tags
        focal = None
    return Photo(path.name, path, header.width, header.height, group, header.orientation, focal)


def _folder_images(folder: Path, progress: Progress) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural_key)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        held = f" (it holds {len(others)} other file(s): {listing(others)})" if others else ""
        raise ImageInputError(f"{folder}: no images in this folder{held}; supported: {' '.join(IMAGE_SUFFIXES)}")
    if others:
        progress.log(f"{folder}: skipped {len(others)} file(s) that are not images: {listing(others)}", "warning")
    return images


def _check_count(photos: Sequence[Photo], what: str) -> None:
    if len(photos) < 2:
        found = f": {photos[0].source}" if photos else ""
        raise ImageInputError(f"a reconstruction needs at least 2 images; {what} gave {len(photos)}{found}")


def find_photos(paths: Sequence[str | os.PathLike], progress: Progress, frame_step: int = 1) -> list[Photo]:
    """The photos named by `paths` (files, or folders whose image files are taken in name order), every
    `frame_step`-th one kept. Raises ImageInputError for a missing path, a file that is not an image, a folder
    without images, two photos with the same file name, or fewer than 2 photos; other files in a folder are
    skipped with a warning."""
    if frame_step < 1:
        raise ImageInputError(f"frame step must be at least 1, got {frame_step}")
    files: list[tuple[Path, str]] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files += [(p, str(entry.resolve())) for p in _folder_images(entry, progress)]
        elif entry.is_file():
            if entry.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageInputError(f"{entry}: not an image file (supported: {' '.join(IMAGE_SUFFIXES)})")
            files.append((entry, str(entry.parent.resolve())))
        else:
            raise ImageInputError(f"{entry}: no such file or folder")
    files = files[::frame_step]
    by_name: dict[str, Path] = {}
    for path, _ in files:
        if path.name in by_name:
            first = by_name[path.name]
            what = "is given twice" if first.resolve() == path.resolve() else f"and {first} have the same name"
            raise ImageInputError(f"{path} {what}: image names must be unique (rename one of them)")
        by_name[path.name] = path
    progress.stage("read photos", len(files))
    photos = []
    for path, group in files:
        photos.append(_probe(path.absolute(), group))
        progress.advance()
    _check_count(photos, "the input")
    return photos


def make_upright(photos: Sequence[Photo], folder: Path, progress: Progress) -> list[Photo]:
    """`photos` with `path` set: the source itself, or an upright copy written into `folder` (JPEG for JPEG
    sources, else PNG; named after the photo, plus ".png" when that changes the format)."""
    from PIL import Image

    from ..calibrate.image_io import load_image
    from ..calibrate.result import CalibrationError

    todo = sum(p.needs_copy for p in photos)
    if todo:
        progress.stage("upright copies", todo)
        folder.mkdir(parents=True, exist_ok=True)
    out = []
    for photo in photos:
        if not photo.needs_copy:
            out.append(replace(photo, path=photo.source))
            continue
        suffix = photo.source.suffix.lower()
        target = folder / (photo.name if suffix in (".jpg", ".jpeg", ".png") else f"{photo.name}.png")
        try:
            rgb = load_image(photo.source).rgb  # EXIF orientation applied
        except CalibrationError as exc:
            raise ImageInputError(str(exc)) from None
        Image.fromarray(rgb).save(target, **({"quality": _JPEG_QUALITY} if suffix in (".jpg", ".jpeg") else {}))
        out.append(replace(photo, path=target))
        progress.advance()
    return out


def extract_frames(video: str | os.PathLike, folder: Path, progress: Progress, step: int = 1,
                   first: int = 1, last: int | None = None) -> list[Photo]:
    """Every `step`-th frame of `video` from frame `first` to `last` (1-based, inclusive; default: to the end),
    decoded to `folder/<video stem>_<frame>.jpg`."""
    import cv2

    video = Path(video)
    if step < 1 or first < 1 or (last is not None and last < first):
        raise ImageInputError(f"{video}: bad frame selection (step {step}, frames {first} to {last}); the step "
                              f"must be at least 1 and the range 1-based and not empty")
    if not video.is_file():
        raise ImageInputError(f"{video}: no such video file")
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ImageInputError(f"{video}: not a video OpenCV can read")
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        end = min(last, count) if last is not None and count else (last or count)
        total = None if end is None else max(0, (end - first) // step + 1)
        progress.stage("decode video frames", total)
        folder.mkdir(parents=True, exist_ok=True)
        photos = []
        frame = 0
        while end is None or frame < end:
            if not capture.grab():
                break
            frame += 1
            if frame < first or (frame - first) % step:
                continue
            ok, bgr = capture.retrieve()
            if not ok:
                raise ImageInputError(f"{video}: frame {frame} cannot be decoded")
            path = folder / f"{video.stem}_{frame:06d}.jpg"
            cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            photos.append(Photo(path.name, path, bgr.shape[1], bgr.shape[0], str(video.resolve()), path=path))
            progress.advance()
    finally:
        capture.release()
    if frame == 0:
        raise ImageInputError(f"{video}: no frames could be read (not a video OpenCV can decode)")
    _check_count(photos, f"{video} (frames {first} to {last or 'the end'}, every {step})")
    return photos
