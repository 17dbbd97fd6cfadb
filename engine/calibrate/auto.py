"""Choosing a calibration method for one photo, and the documented fallback prior.

`calibrate(image, "auto")` tries, in order, and keeps the first that holds:
  1. DM-Calib, when its weights are found (`dmcalib.find_weights`) and its result has confidence >= DMCALIB_MIN
     (a corrupt weight folder or an output that is not a camera image falls through);
  2. vanishing points, when confidence >= VP_MIN;
  3. EXIF focal-length tags;
  4. vanishing points with confidence >= VP_FALLBACK_MIN: an uncertain measurement of this photo still beats a
     fixed guess (on the generated rooms of bench/bench_calibrate.py such estimates erred by a median of a few
     degrees, the prior by ~20), and its confidence says how uncertain it is;
  5. the prior: a centred pinhole with PRIOR_HFOV_DEG across the image's long side (about a 35 mm-equivalent
     focal of 38 mm, between phone main cameras, ~26 mm, and the normal 50 mm), confidence PRIOR_CONFIDENCE.
The result's `reason` says which method won and why the earlier ones did not. When the winner has no rotation
but vanishing points were found, the rotation is re-fitted from them with the winner's intrinsics held fixed.
`calibrate(image, "exif" | "vp" | "dmcalib")` runs one method and raises CalibrationError if it cannot.
"""
from __future__ import annotations

import math
import os
from typing import Any

from ..errors import EngineError
from ..progress import Progress
from .exif import calibrate_exif
from .image_io import ImageHeader, LoadedImage, load_image, read_header
from .result import CalibrationError, CalibrationResult
from .vanishing import WORK_SIDE, calibrate_vp

METHODS = ("auto", "exif", "vp", "dmcalib")
DMCALIB_MIN = 0.3
VP_MIN = 0.5
VP_FALLBACK_MIN = 0.1
PRIOR_HFOV_DEG = 50.0
PRIOR_CONFIDENCE = 0.05


def prior(width: int, height: int, reason: str) -> CalibrationResult:
    """The fallback camera: PRIOR_HFOV_DEG across the long side, principal point at the centre."""
    f = max(width, height) / 2 / math.tan(math.radians(PRIOR_HFOV_DEG) / 2)
    return CalibrationResult.pinhole(f, f, width / 2, height / 2, width, height, method="prior",
                                     confidence=PRIOR_CONFIDENCE, reason=reason)


def _dmcalib(path: str | os.PathLike, weights: str | os.PathLike | None, progress: Progress | None,
             required: bool, options: dict[str, Any]) -> tuple[CalibrationResult | None, str]:
    """DM-Calib's result (None when its weights are absent and not `required`) and a note for the reason."""
    from . import dmcalib

    spec = weights if weights is not None else dmcalib.DEFAULT_WEIGHTS
    found = dmcalib.find_weights(spec)
    if found is None:
        message = f"no DM-Calib weights found ({spec})"
        if required:
            raise CalibrationError(f"{message}: pass --weights with a folder in the diffusers layout or a Hub id "
                                   f"in the local Hugging Face cache")
        return None, message
    return dmcalib.calibrate_dmcalib(path, found, progress, **options), f"DM-Calib weights found ({found})"


def _with_rotation(result: CalibrationResult, loaded: LoadedImage | None) -> CalibrationResult:
    """`result` with a rotation from vanishing points fitted at its intrinsics, when the image has them."""
    if result.cam_from_world is not None or loaded is None:
        return result
    fx, fy, cx, cy = result.intrinsics()
    try:
        fitted = calibrate_vp(loaded, focal=math.sqrt(fx * fy), principal=(cx, cy))
    except CalibrationError:
        return result
    if fitted.confidence < VP_MIN:
        return result
    result.cam_from_world = fitted.cam_from_world
    result.extras["rotation"] = {"method": "vp", "confidence": fitted.confidence,
                                 "vanishing_points": fitted.extras["vanishing_points"]}
    result.reason += "; rotation from vanishing points at these intrinsics"
    return result


def calibrate(image: str | os.PathLike, method: str = "auto", *, weights: str | os.PathLike | None = None,
              progress: Progress | None = None, **dmcalib_options: Any) -> CalibrationResult:
    """Calibrate the photo at `image` with `method` (see the module doc); `dmcalib_options` go to
    `dmcalib.calibrate_dmcalib` (base, device, steps, ...). extras["orientation"] is the EXIF orientation that
    was applied (the intrinsics are for the photo as displayed)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    header = read_header(image)  # unreadable files fail here, before any method runs
    result = _calibrate(image, header, method, weights, progress, dmcalib_options)
    result.extras["orientation"] = header.orientation
    return result


def _calibrate(image: str | os.PathLike, header: ImageHeader, method: str, weights: str | os.PathLike | None,
               progress: Progress | None, options: dict[str, Any]) -> CalibrationResult:
    if method == "exif":
        return calibrate_exif(header)
    if method == "vp":
        return calibrate_vp(image)
    if method == "dmcalib":
        return _dmcalib(image, weights, progress, True, options)[0]
    notes = []
    loaded = None
    try:
        loaded = load_image(image, WORK_SIDE)
    except CalibrationError as exc:
        notes.append(str(exc))
    try:
        result, note = _dmcalib(image, weights, progress, False, options)
        if result is not None and result.confidence >= DMCALIB_MIN:
            result.reason = f"auto chose DM-Calib ({note}): {result.reason}"
            return _with_rotation(result, loaded)
        if result is not None:
            note = f"DM-Calib not confident ({result.confidence:.2f} < {DMCALIB_MIN})"
    except (EngineError, ImportError) as exc:  # e.g. a corrupt weight folder, or diffusers not installed
        note = f"DM-Calib failed: {exc}"
    notes.append(note)

    vp = None
    if loaded is not None:
        try:
            vp = calibrate_vp(loaded)
        except CalibrationError as exc:
            notes.append(f"vanishing points failed: {exc}")
    if vp is not None:
        if vp.confidence >= VP_MIN:
            vp.reason = f"auto chose vanishing points (confidence {vp.confidence:.2f} >= {VP_MIN}; " \
                        f"{'; '.join(notes)}): {vp.reason}"
            return vp
        notes.append(f"vanishing points not confident ({vp.confidence:.2f} < {VP_MIN})")

    try:
        result = calibrate_exif(header)
        result.reason = f"auto chose EXIF ({'; '.join(notes)}): {result.reason}"
        return _with_rotation(result, loaded if vp is not None else None)
    except CalibrationError as exc:
        notes.append(str(exc))
    if vp is not None and vp.confidence >= VP_FALLBACK_MIN:
        vp.reason = f"auto kept the uncertain vanishing-point estimate over the prior ({'; '.join(notes)}): " \
                    f"{vp.reason}"
        return vp
    result = prior(header.width, header.height,
                   f"auto fell back to the prior of {PRIOR_HFOV_DEG:g} deg across the long side ({'; '.join(notes)})")
    return _with_rotation(result, loaded if vp is not None else None)
