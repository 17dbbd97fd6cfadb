"""Camera model registry: COLMAP's model names, ids and parameter orders (no torch, no bpy).

Conventions (see docs/CONVENTIONS.md): pixel centres at +0.5, so a centred principal point is
(W/2, H/2); camera axes are OpenCV's (x right, y down, z forward). The projection maths lives in
`engine.projection` (torch); this module only says what the parameters are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .errors import CameraModelError


@dataclass(frozen=True)
class CameraModel:
    name: str
    model_id: int  # COLMAP's numeric id (used by its binary format)
    params: tuple[str, ...]  # parameter names in COLMAP's order
    fisheye: bool = False

    @property
    def num_params(self) -> int:
        return len(self.params)

    @property
    def shared_focal(self) -> bool:
        """True when one focal length serves both axes (param 'f')."""
        return self.params[0] == "f"

    @property
    def extra_params(self) -> tuple[str, ...]:
        """Distortion parameter names (everything after focal and principal point)."""
        return self.params[3:] if self.shared_focal else self.params[4:]

    def split(self, params: Sequence[float]) -> tuple[float, float, float, float, tuple[float, ...]]:
        """(fx, fy, cx, cy, extra) from a parameter vector in this model's order."""
        check_params(self.name, params)
        if self.shared_focal:
            f, cx, cy, *extra = params
            return float(f), float(f), float(cx), float(cy), tuple(float(e) for e in extra)
        fx, fy, cx, cy, *extra = params
        return float(fx), float(fy), float(cx), float(cy), tuple(float(e) for e in extra)

    def join(self, fx: float, fy: float, cx: float, cy: float, extra: Sequence[float] = ()) -> list[float]:
        """Parameter vector in this model's order; for shared-focal models fx and fy must agree."""
        extra = list(extra) + [0.0] * (len(self.extra_params) - len(extra))
        if len(extra) != len(self.extra_params):
            raise CameraModelError(f"{self.name} takes {len(self.extra_params)} distortion parameters "
                                   f"({', '.join(self.extra_params)}), got {len(extra)}")
        if self.shared_focal:
            if abs(fx - fy) > 1e-9 * max(abs(fx), 1.0):
                raise CameraModelError(f"{self.name} has one focal length; fx={fx} and fy={fy} differ")
            return [float(fx), float(cx), float(cy), *map(float, extra)]
        return [float(fx), float(fy), float(cx), float(cy), *map(float, extra)]


_MODELS = [
    CameraModel("SIMPLE_PINHOLE", 0, ("f", "cx", "cy")),
    CameraModel("PINHOLE", 1, ("fx", "fy", "cx", "cy")),
    CameraModel("SIMPLE_RADIAL", 2, ("f", "cx", "cy", "k")),
    CameraModel("RADIAL", 3, ("f", "cx", "cy", "k1", "k2")),
    CameraModel("OPENCV", 4, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    CameraModel("OPENCV_FISHEYE", 5, ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"), fisheye=True),
    CameraModel("FULL_OPENCV", 6, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
    CameraModel("SIMPLE_RADIAL_FISHEYE", 8, ("f", "cx", "cy", "k"), fisheye=True),
    CameraModel("RADIAL_FISHEYE", 9, ("f", "cx", "cy", "k1", "k2"), fisheye=True),
    CameraModel("THIN_PRISM_FISHEYE", 10, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1"),
                fisheye=True),
]
MODELS: dict[str, CameraModel] = {m.name: m for m in _MODELS}
MODELS_BY_ID: dict[int, CameraModel] = {m.model_id: m for m in _MODELS}


def get_model(name: str) -> CameraModel:
    """The model called `name` (COLMAP spelling), or a CameraModelError listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise CameraModelError(f"unknown camera model {name!r}; known models: {', '.join(MODELS)}") from None


def check_params(name: str, params: Sequence[float]) -> None:
    """Raise CameraModelError unless `params` has the right length and finite values for model `name`."""
    model = get_model(name)
    if len(params) != model.num_params:
        raise CameraModelError(f"{name} takes {model.num_params} parameters ({', '.join(model.params)}), "
                               f"got {len(params)}")
    for pname, value in zip(model.params, params):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise CameraModelError(f"{name} parameter {pname} is not a number: {value!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise CameraModelError(f"{name} parameter {pname} is not finite: {value!r}")
    if float(params[0]) <= 0 or (not model.shared_focal and float(params[1]) <= 0):
        raise CameraModelError(f"{name} focal length must be positive, got {list(params[:2])}")
