"""`CalibrationResult`: what every single-image calibration method returns.

Intrinsics are in COLMAP's convention (model name and parameter order, pixel centres at +0.5) for the ORIGINAL
image as displayed, i.e. after its EXIF orientation is applied. `cam_from_world` (when a method finds one) is a
pure rotation from a Manhattan world frame with +Z up to OpenCV camera axes; its X/Y axes are only defined up to
a quarter turn about Z (`yawed` picks another).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle import Camera, check_pose
from ..camera_models import check_params, get_model
from ..errors import BundleError, CameraModelError, EngineError

METHODS = ("exif", "vp", "dmcalib", "prior")


class CalibrationError(EngineError):
    """A photo could not be calibrated (unreadable, too small, nothing to measure, or bad weights)."""


def field_of_view_deg(f: float, c: float, size: int) -> float:
    """Angle (degrees) a pinhole with focal `f` and principal coordinate `c` sees across `size` pixels."""
    return math.degrees(math.atan(c / f) + math.atan((size - c) / f))


@dataclass
class CalibrationResult:
    model: str  # COLMAP camera model name
    params: list[float]  # COLMAP order, original-image pixels
    width: int
    height: int
    hfov_deg: float
    vfov_deg: float
    confidence: float  # in [0, 1]: how much to trust the intrinsics
    method: str  # one of METHODS
    reason: str  # what was found / why this method was chosen
    cam_from_world: np.ndarray | None = None  # (4, 4) rotation-only pose, Manhattan frame with +Z up
    extras: dict[str, Any] = field(default_factory=dict)  # method details (vanishing points, EXIF tags, ...)

    def __post_init__(self) -> None:
        check_params(self.model, self.params)
        self.params = [float(p) for p in self.params]
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise CameraModelError(f"calibration: image size must be positive, got {self.width}x{self.height}")
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"calibration confidence must be in [0, 1], got {self.confidence}")
        self.confidence = float(self.confidence)
        self.hfov_deg, self.vfov_deg = float(self.hfov_deg), float(self.vfov_deg)
        if self.cam_from_world is not None:
            self.cam_from_world = check_pose(self.cam_from_world, "calibration cam_from_world")

    @classmethod
    def pinhole(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int, *, method: str,
                confidence: float, reason: str, cam_from_world: np.ndarray | None = None,
                extras: dict[str, Any] | None = None) -> "CalibrationResult":
        """A SIMPLE_PINHOLE result (PINHOLE when fx != fy), with the fields of view computed from K."""
        model = get_model("SIMPLE_PINHOLE" if fx == fy else "PINHOLE")
        return cls(model.name, model.join(fx, fy, cx, cy), width, height,
                   field_of_view_deg(fx, cx, width), field_of_view_deg(fy, cy, height), confidence, method,
                   reason, cam_from_world, dict(extras or {}))

    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in original-image pixels."""
        fx, fy, cx, cy, _ = get_model(self.model).split(self.params)
        return fx, fy, cx, cy

    def camera(self, camera_id: int = 1) -> Camera:
        """The engine camera (scene-bundle form) of this calibration."""
        return Camera(camera_id, self.model, self.width, self.height, list(self.params))

    def yawed(self, quarter_turns: int) -> np.ndarray | None:
        """`cam_from_world` with the world turned `quarter_turns` x 90 degrees about +Z (X -> Y -> -X ...): the
        other choices of which horizontal vanishing direction is +X. None when there is no rotation."""
        if self.cam_from_world is None:
            return None
        k = quarter_turns % 4
        c, s = (1, 0, -1, 0)[k], (0, 1, 0, -1)[k]
        turn = np.eye(4)
        turn[:2, :2] = [[c, -s], [s, c]]  # world_old_from_world_new: new +X is old (c, s)
        return self.cam_from_world @ turn

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields above (cam_from_world only when found) with numpy values as lists."""
        out = {"width": self.width, "height": self.height, "model": self.model, "params": list(self.params),
               "hfov_deg": self.hfov_deg, "vfov_deg": self.vfov_deg, "method": self.method,
               "confidence": self.confidence, "reason": self.reason}
        if self.cam_from_world is not None:
            out["cam_from_world"] = self.cam_from_world.tolist()
        out["extras"] = _jsonable(self.extras)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "calibration") -> "CalibrationResult":
        """Inverse of `to_json` (extra keys such as "image" are ignored); errors name `where` and the field."""
        if not isinstance(obj, dict):
            raise CalibrationError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("width", "height", "model", "params", "hfov_deg", "vfov_deg", "method",
                               "confidence", "reason") if k not in obj]
        if missing:
            raise CalibrationError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            return cls(obj["model"], list(obj["params"]), obj["width"], obj["height"], obj["hfov_deg"],
                       obj["vfov_deg"], obj["confidence"], obj["method"], obj["reason"],
                       None if obj.get("cam_from_world") is None else np.asarray(obj["cam_from_world"], float),
                       dict(obj.get("extras") or {}))
        except (TypeError, ValueError, BundleError, CameraModelError) as exc:
            raise CalibrationError(f"{where}: {exc}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
