"""Camera model registry: COLMAP's model names, ids and parameter orders, plus Unposed's own LENS_FIELD (no torch,
no bpy).

Conventions (see docs/CONVENTIONS.md): pixel centres at +0.5, so a centred principal point is
(W/2, H/2); camera axes are OpenCV's (x right, y down, z forward). The projection maths lives in
`engine.projection` (torch); this module only says what the parameters are.

LENS_FIELD (id 100, not a COLMAP model, so not in `MODELS`) is the learned lens of `engine.lens_field`: the
equidistant plane (a, b) = theta (X, Y) / |(X, Y)| displaced by a field D, bilinear between the nodes of an n x n
grid over [-R, R]^2, then u = fx (a + D_x) + cx, v = fy (b + D_y) + cy. Its parameter vector has a variable length,
`[fx, fy, cx, cy, R, n, d_0 ... d_{2 n^2 - 1}]` with d row-major over (grid row y, grid column x), each node
(dx, dy) in radians (all zeros: the equidistant lens). Its `params` / `extra_params` name the fixed head only
(`extra_params` = (R, n)); `split` returns every value after cy as the extra (R, n, d...).
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
    variable: bool = False  # `params` names a fixed head; more values follow (LENS_FIELD: 2 n^2 displacements)

    @property
    def num_params(self) -> int:
        """The parameter count; a CameraModelError for LENS_FIELD, whose count depends on its grid."""
        if self.variable:
            raise CameraModelError(f"{self.name} has a variable number of parameters ({LENS_FIELD_LAYOUT}); "
                                   f"use lens_field_length(n)")
        return len(self.params)

    @property
    def shared_focal(self) -> bool:
        """True when one focal length serves both axes (param 'f')."""
        return self.params[0] == "f"

    @property
    def extra_params(self) -> tuple[str, ...]:
        """Distortion parameter names (everything after focal and principal point; LENS_FIELD: its head (R, n))."""
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
        """Parameter vector in this model's order; for shared-focal models fx and fy must agree.

        Missing distortion parameters are zero; LENS_FIELD needs its whole extra (R, n, d...)."""
        if self.variable:
            params = [float(fx), float(fy), float(cx), float(cy), *map(float, extra)]
            check_params(self.name, params)
            return params
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
MODELS: dict[str, CameraModel] = {m.name: m for m in _MODELS}  # COLMAP's models
MODELS_BY_ID: dict[int, CameraModel] = {m.model_id: m for m in _MODELS}

LENS_FIELD = CameraModel("LENS_FIELD", 100, ("fx", "fy", "cx", "cy", "R", "n"), fisheye=True, variable=True)
LENS_FIELD_LAYOUT = "fx, fy, cx, cy, R, n, then 2 n^2 displacements"
OWN_MODELS: dict[str, CameraModel] = {LENS_FIELD.name: LENS_FIELD}  # Unposed's models (not COLMAP's)


def get_model(name: str) -> CameraModel:
    """The model called `name` (COLMAP spelling, or LENS_FIELD), or a CameraModelError listing the known ones."""
    model = MODELS.get(name) or OWN_MODELS.get(name)
    if model is None:
        raise CameraModelError(f"unknown camera model {name!r}; known models: {', '.join([*MODELS, *OWN_MODELS])}")
    return model


def lens_field_length(n: int) -> int:
    """Length of a LENS_FIELD parameter vector with an n x n grid: 6 + 2 n^2."""
    return 6 + 2 * n * n


def lens_field_grid_size(length: int) -> int:
    """n of a LENS_FIELD parameter vector of `length` values, or a CameraModelError if no n >= 2 fits."""
    n = int(round(((length - 6) / 2) ** 0.5)) if length >= 6 else 0
    if n < 2 or lens_field_length(n) != length:
        raise CameraModelError(f"LENS_FIELD takes 6 + 2 n^2 parameters ({LENS_FIELD_LAYOUT}) with n >= 2 "
                               f"(e.g. {lens_field_length(17)} for n = 17), got {length}")
    return n


def _param_name(model: CameraModel, index: int) -> str:
    return model.params[index] if index < len(model.params) else f"d_{index - len(model.params)}"


def check_params(name: str, params: Sequence[float]) -> None:
    """Raise CameraModelError unless `params` has the right length and finite values for model `name`.

    LENS_FIELD also needs n a whole number >= 2 matching the length and R > 0."""
    model = get_model(name)
    if model.variable:
        lens_field_grid_size(len(params))
    elif len(params) != model.num_params:
        raise CameraModelError(f"{name} takes {model.num_params} parameters ({', '.join(model.params)}), "
                               f"got {len(params)}")
    for i, value in enumerate(params):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise CameraModelError(f"{name} parameter {_param_name(model, i)} is not a number: {value!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise CameraModelError(f"{name} parameter {_param_name(model, i)} is not finite: {value!r}")
    if float(params[0]) <= 0 or (not model.shared_focal and float(params[1]) <= 0):
        raise CameraModelError(f"{name} focal length must be positive, got {list(params[:2])}")
    if model.variable:
        radius, n = float(params[4]), float(params[5])
        if radius <= 0:
            raise CameraModelError(f"LENS_FIELD parameter R (half-width of the control grid, radians) must be "
                                   f"positive, got {radius}")
        expected = lens_field_grid_size(len(params))
        if n != expected:
            raise CameraModelError(f"LENS_FIELD parameter n (grid size) must be a whole number matching the "
                                   f"{len(params)} parameters (n = {expected}), got {params[5]!r}")


# ---------------------------------------------------------------------------------------------------------------
# Distortion maps, arithmetic only (+ - * /), so one definition serves floats, numpy arrays and torch tensors
# (the Blender side has numpy but no torch) and forward-mode jets (engine.projection derives the Newton
# Jacobian from these same formulas). `extra` holds the model's distortion parameters in COLMAP
# order (a sequence, or an array whose first axis is the parameter); each entry is a float or an array/tensor
# broadcastable against the coordinates (batched cameras).
# The formulas are COLMAP's `Distortion` functions (src/colmap/sensor/models.h) written as the distorted point
# itself, x_d = x + du. Perspective models act on the pinhole plane (x, y) = (X/Z, Y/Z); fisheye models act on
# the equidistant plane (a, b) = theta * (X, Y) / |(X, Y)|, theta being the angle from the optical axis.
# Pixels are then u = fx * x_d + cx, v = fy * y_d + cy.


def radial_distortion_factor(model_name: str, extra, r2):
    """Radial factor s(r2) with r_d = r * s: r is the pinhole radius (perspective) or theta (fisheye), r2 = r**2."""
    model = get_model(model_name)
    name, n = model.name, len(extra)
    if model.variable:
        raise CameraModelError(f"{name} has no radial distortion formula (see engine.projection)")
    if n != len(model.extra_params):
        raise CameraModelError(f"{name} takes {len(model.extra_params)} distortion parameters "
                               f"({', '.join(model.extra_params)}), got {n}")
    if name in ("SIMPLE_PINHOLE", "PINHOLE"):
        return 1.0 + 0.0 * r2
    if name in ("SIMPLE_RADIAL", "SIMPLE_RADIAL_FISHEYE"):
        (k,) = extra
        return 1.0 + k * r2
    if name in ("RADIAL", "RADIAL_FISHEYE"):
        k1, k2 = extra
        return 1.0 + r2 * (k1 + k2 * r2)
    if name == "OPENCV":
        k1, k2, _, _ = extra
        return 1.0 + r2 * (k1 + k2 * r2)
    if name == "OPENCV_FISHEYE":
        k1, k2, k3, k4 = extra
        return 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + k4 * r2)))
    if name == "THIN_PRISM_FISHEYE":
        k1, k2, _, _, k3, k4, _, _ = extra
        return 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + k4 * r2)))
    if name == "FULL_OPENCV":  # rational model (OpenCV's CALIB_RATIONAL_MODEL)
        k1, k2, _, _, k3, k4, k5, k6 = extra
        return (1.0 + r2 * (k1 + r2 * (k2 + k3 * r2))) / (1.0 + r2 * (k4 + r2 * (k5 + k6 * r2)))
    raise CameraModelError(f"no distortion formula for camera model {name}")  # registry and formulas disagree


def _distort_plane(model: CameraModel, extra, x, y):
    """Radial factor plus the tangential (p1, p2) and thin-prism (sx1, sy1) terms of Brown-Conrady."""
    x2, y2, xy = x * x, y * y, x * y
    r2 = x2 + y2
    s = radial_distortion_factor(model.name, extra, r2)
    xd, yd = x * s, y * s
    if model.name in ("OPENCV", "FULL_OPENCV", "THIN_PRISM_FISHEYE"):
        p1, p2 = extra[2], extra[3]
        xd = xd + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x2)
        yd = yd + 2.0 * p2 * xy + p1 * (r2 + 2.0 * y2)
    if model.name == "THIN_PRISM_FISHEYE":
        sx1, sy1 = extra[6], extra[7]
        xd = xd + sx1 * r2
        yd = yd + sy1 * r2
    return xd, yd


def distort_normalized(model_name: str, extra, x, y):
    """(x_d, y_d) of a perspective model from pinhole-plane coordinates (x, y) = (X/Z, Y/Z); identity for pinholes."""
    model = get_model(model_name)
    if model.fisheye:
        raise CameraModelError(f"{model_name} is a fisheye model: use distort_equidistant / fisheye_theta_distorted")
    return _distort_plane(model, extra, x, y)


def distort_equidistant(model_name: str, extra, a, b):
    """(a_d, b_d) of a fisheye model from equidistant coordinates (a, b) = theta * (X, Y) / |(X, Y)|."""
    model = get_model(model_name)
    if not model.fisheye:
        raise CameraModelError(f"{model_name} is not a fisheye model: use distort_normalized")
    return _distort_plane(model, extra, a, b)


def fisheye_theta_distorted(model_name: str, extra, theta):
    """theta_d = r_d / f of a fisheye model as a function of the angle theta from the optical axis (radians).

    Exact for the radially symmetric models; for THIN_PRISM_FISHEYE the radial part (tangential and thin-prism
    terms are left out).
    """
    if not get_model(model_name).fisheye:
        raise CameraModelError(f"{model_name} is not a fisheye model")
    return theta * radial_distortion_factor(model_name, extra, theta * theta)
