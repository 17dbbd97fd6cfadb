"""Calibration from photo metadata (EXIF 2.32 / CIPA DC-008 tags read by `image_io`).

Two sources of the focal length in pixels:
  * focal plane: FocalLength (mm) x FocalPlaneXResolution (pixels per FocalPlaneResolutionUnit) on the sensor,
    rescaled when the file's size differs from the PixelXDimension the camera recorded. Exact when the camera
    fills it in correctly (mostly interchangeable-lens cameras);
  * 35 mm equivalent: f_px = FocalLengthIn35mmFilm / 43.27 mm x image diagonal in pixels (the full-frame diagonal
    is 43.27 mm). Phones write this one; it is rounded to whole millimetres (1-4 % on phone lenses).
When both exist and agree (within `AGREE`), the focal-plane value is used; when they disagree the 35 mm value is
(cameras compute it themselves; focal-plane resolutions are the tags most often wrong) and the confidence drops.
The principal point is the image centre. Sizes and intrinsics are for the image as displayed.
"""
from __future__ import annotations

import math
import os
from typing import Any

from .image_io import TRANSPOSED, ImageHeader, read_header
from .result import CalibrationError, CalibrationResult

FULL_FRAME_DIAGONAL_MM = 43.27  # sqrt(36^2 + 24^2)
UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # FocalPlaneResolutionUnit: inch (default), cm, mm, micrometre
SENSOR_WIDTH_RANGE_MM = (1.0, 100.0)  # plausible sensor widths: outside this the focal-plane tags are wrong
AGREE = 0.08  # relative difference under which the two sources count as agreeing
# Confidence per outcome: the tags are usually right, but nothing in the photo checks them (and a crop or a
# resize by software that kept the tags makes them wrong).
CONFIDENCE = {"both": 0.8, "focal_plane": 0.65, "35mm": 0.65, "disagree": 0.45}


def _number(value: Any) -> float | None:
    """A positive finite float from an EXIF value (int, IFDRational, tuple), else None."""
    try:
        v = float(value[0]) / float(value[1]) if isinstance(value, tuple) and len(value) == 2 else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _focal_plane_px(header: ImageHeader) -> tuple[float | None, str]:
    """Focal length in displayed pixels from FocalLength and the focal-plane resolution, and what was found."""
    focal_mm = _number(header.exif.get("FocalLength"))
    xres = _number(header.exif.get("FocalPlaneXResolution"))
    if focal_mm is None or xres is None:
        return None, "no FocalLength with FocalPlaneXResolution"
    unit = header.exif.get("FocalPlaneResolutionUnit", 2)
    if unit not in UNIT_MM:
        return None, f"FocalPlaneResolutionUnit {unit!r} is not an absolute unit"
    # The resolution is in the stored (sensor) x direction, for an image PixelXDimension pixels wide.
    recorded_width = _number(header.exif.get("PixelXDimension")) or header.stored_width
    sensor_mm = recorded_width / xres * UNIT_MM[unit]
    if not SENSOR_WIDTH_RANGE_MM[0] <= sensor_mm <= SENSOR_WIDTH_RANGE_MM[1]:
        return None, f"focal-plane tags give an implausible sensor width of {sensor_mm:.3g} mm"
    f_px = focal_mm * xres / UNIT_MM[unit] * header.stored_width / recorded_width
    return f_px, f"FocalLength {focal_mm:g} mm on a {sensor_mm:.2f} mm wide sensor"


def _equivalent_px(header: ImageHeader) -> tuple[float | None, str]:
    f35 = _number(header.exif.get("FocalLengthIn35mmFilm"))
    if f35 is None:
        return None, "no FocalLengthIn35mmFilm"
    return f35 / FULL_FRAME_DIAGONAL_MM * math.hypot(header.width, header.height), f"35 mm equivalent {f35:g} mm"


def calibrate_exif(image: str | os.PathLike | ImageHeader) -> CalibrationResult:
    """SIMPLE_PINHOLE intrinsics from the photo's EXIF tags; CalibrationError when they give no focal length."""
    header = image if isinstance(image, ImageHeader) else read_header(image)
    plane, plane_note = _focal_plane_px(header)
    equiv, equiv_note = _equivalent_px(header)
    if plane is None and equiv is None:
        raise CalibrationError(f"{header.path}: EXIF gives no focal length ({plane_note}; {equiv_note})")
    if plane is not None and equiv is not None:
        agree = abs(plane / equiv - 1.0) <= AGREE
        f, kind = (plane, "both") if agree else (equiv, "disagree")
        reason = (f"EXIF {plane_note} agrees with the {equiv_note}" if agree else
                  f"EXIF {equiv_note} used; {plane_note} disagrees by {100 * abs(plane / equiv - 1):.0f}%")
    elif plane is not None:
        f, kind, reason = plane, "focal_plane", f"EXIF {plane_note} ({equiv_note})"
    else:
        f, kind, reason = equiv, "35mm", f"EXIF {equiv_note} ({plane_note})"
    if header.orientation in TRANSPOSED:
        reason += f"; orientation {header.orientation} applied (displayed {header.width}x{header.height})"
    extras = {"exif": {k: (_number(v) if k.startswith(("Focal", "Pixel")) else v) for k, v in header.exif.items()},
              "focal_plane_px": plane, "equivalent_px": equiv}
    return CalibrationResult.pinhole(f, f, header.width / 2.0, header.height / 2.0, header.width, header.height,
                                     method="exif", confidence=CONFIDENCE[kind], reason=reason, extras=extras)
