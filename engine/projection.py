"""Projection and unprojection for every camera model in the registry (torch).

Conventions (docs/CONVENTIONS.md): COLMAP's models and parameter orders, pixel centres at +0.5, OpenCV camera axes
(x right, y down, z forward). The distortion formulas themselves live, arithmetic-only, in `engine.camera_models`;
this module adds the camera geometry around them, Newton undistortion and validity masks.

Everything is batched over leading dimensions: `params` is (P,) or (..., P) and broadcasts against the leading
dimensions of the points / pixels (give a (B, 1, P) tensor for B cameras and (B, N, 3) points). float32 and float64
both work, and results are differentiable w.r.t. points, pixels and params.

Coordinates on the way from a camera point to a pixel:
- perspective models: pinhole plane (x, y) = (X/Z, Y/Z) -> distorted (x_d, y_d) -> u = fx x_d + cx, v = fy y_d + cy;
- fisheye models: equidistant plane (a, b) = theta (X, Y) / |(X, Y)| with theta = atan2(|(X, Y)|, Z), the angle
  from the optical axis -> distorted (a_d, b_d) -> pixels as above. Because theta comes from atan2, points at or
  behind the image plane (Z <= 0) still project, up to the model's limit angle. This is the one intentional
  difference from COLMAP, which forms X/Z first and so cannot represent Z <= 0 (it rejects such points).

`valid` masks: a point projects meaningfully when it is in front of the camera (perspective) and its undistorted
radius (pinhole radius, or theta for fisheye) lies below `radius_limit`, where the model's radial distortion stops
being increasing (beyond it the image folds back over itself and projections are ambiguous). A pixel unprojects
meaningfully when, in addition, the Newton undistortion converged (`_undistort_plane`): pixels beyond the distorted
image of a folding lens have no solution and come back with valid False, after at most NEWTON_MAX_ITERATIONS steps.

LENS_FIELD (`engine.camera_models`; the learned lens of `engine.lens_field`) is a fisheye model whose distortion is
x_d = x + D(x) on the equidistant plane, D bilinear between the nodes of an n x n grid over [-R, R]^2 (clamped to
the grid's border outside it). Its `extra` is one tensor (..., 2 + 2 n^2) = (R, n, d...) instead of a tuple of
columns, n comes from the vector's length, and cameras batched in `params` index their own grids. Points are valid
inside the grid, below 180 degrees and where the field does not fold (det(I + dD/dx) > 0); pixels unproject by
`_undistort_field` (Newton with a fixed-point fallback x <- x_d - D(x), which contracts when Lip(D) < 1).
"""
from __future__ import annotations

import functools
import math

import torch

from .camera_models import (CameraModel, distort_equidistant, distort_normalized, get_model, lens_field_grid_size,
                            radial_distortion_factor)
from .errors import CameraModelError

NEWTON_MAX_ITERATIONS = 100
_NEWTON_PATIENCE = 10
_BISECTIONS = 30  # angle resolution of Newton's radial start: 2^-30 of the field
_LIMIT_SAMPLES = 2048  # grid for radius_limit: 0.09 deg (fisheye) / 0.04 deg (perspective) between samples
_MAX_ANGLE = math.pi / 2 * _LIMIT_SAMPLES / (_LIMIT_SAMPLES + 1)  # widest perspective ray considered (tan ~ 1300)


# --- parameters ------------------------------------------------------------------------------------------------

def _check_params(model: CameraModel, params: torch.Tensor) -> None:
    if model.variable:  # LENS_FIELD: the length gives n; the n and R columns must agree
        if params.dim() == 0:
            raise CameraModelError(f"{model.name} parameters must be a vector, got a 0-d tensor")
        n = lens_field_grid_size(params.shape[-1])
        with torch.no_grad():
            bad_n, bad_r = bool((params[..., 5] != n).any()), bool((~(params[..., 4] > 0)).any())
        if bad_n:
            raise CameraModelError(f"{model.name} parameter n (grid size) must be {n} for {params.shape[-1]} "
                                   f"parameters, got {params[..., 5].flatten()[:4].tolist()}")
        if bad_r:
            raise CameraModelError(f"{model.name} parameter R (half-width of the control grid, radians) must be "
                                   f"positive, got {params[..., 4].flatten()[:4].tolist()}")
    elif params.dim() == 0 or params.shape[-1] != model.num_params:
        raise CameraModelError(f"{model.name} takes {model.num_params} parameters ({', '.join(model.params)}), "
                               f"got a tensor of shape {tuple(params.shape)}")


def _params_tensor(model_name: str, params) -> tuple[CameraModel, torch.Tensor]:
    """The model and its params as a floating tensor (float64 when given as a plain sequence)."""
    model = get_model(model_name)
    params = torch.as_tensor(params, dtype=None if torch.is_tensor(params) else torch.float64)
    if not params.is_floating_point():
        params = params.to(torch.get_default_dtype())
    _check_params(model, params)
    return model, params


def _prepare(model_name: str, params, values: torch.Tensor, last: int):
    """(model, params, values) checked, as one floating dtype (the wider of the two) on values' device."""
    model = get_model(model_name)
    if not torch.is_tensor(values) or values.shape[-1:] != (last,):
        raise CameraModelError(f"expected a tensor of shape (..., {last}), got "
                               f"{tuple(values.shape) if torch.is_tensor(values) else type(values).__name__}")
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    if not torch.is_tensor(params):
        params = torch.as_tensor(params, dtype=values.dtype, device=values.device)
    _check_params(model, params)
    dtype = torch.promote_types(params.dtype, values.dtype)
    return model, params.to(dtype), values.to(dtype)


def split_params(model_name: str, params: torch.Tensor):
    """(fx, fy, cx, cy, extra) of a parameter tensor (..., P): tensors of shape params.shape[:-1]; extra is a tuple
    of columns in COLMAP order, or for LENS_FIELD the tensor params[..., 4:] = (R, n, d...)."""
    return _split(get_model(model_name), params)


def _split(model: CameraModel, params: torch.Tensor):
    if model.variable:
        return params[..., 0], params[..., 1], params[..., 2], params[..., 3], params[..., 4:]
    cols = params.unbind(-1)
    if model.shared_focal:
        return cols[0], cols[0], cols[1], cols[2], tuple(cols[3:])
    return cols[0], cols[1], cols[2], cols[3], tuple(cols[4:])


def intrinsics_matrix(model_name: str, params) -> torch.Tensor:
    """Calibration matrix K (..., 3, 3) = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (distortion not included)."""
    model, params = _params_tensor(model_name, params)
    fx, fy, cx, cy, _ = _split(model, params)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], -1).reshape(*fx.shape, 3, 3)


# --- forward-mode derivatives for the Newton solver ------------------------------------------------------------

class _Jet:
    """A value with its partial derivatives w.r.t. the two plane coordinates (forward-mode differentiation).

    Running the arithmetic-only distortion maps on jets yields their 2x2 Jacobian without a second, hand-derived
    copy of every formula. Constants (floats, tensors) mix in freely; `__array_ufunc__ = None` makes numpy defer.
    Supports + - * / (all the distortion maps use).
    """
    __slots__ = ("v", "dx", "dy")
    __array_ufunc__ = None

    def __init__(self, v, dx, dy):
        self.v, self.dx, self.dy = v, dx, dy

    @staticmethod
    def _of(o) -> "_Jet":
        return o if isinstance(o, _Jet) else _Jet(o, 0.0, 0.0)

    def __add__(self, o):
        o = _Jet._of(o)
        return _Jet(self.v + o.v, self.dx + o.dx, self.dy + o.dy)

    __radd__ = __add__

    def __neg__(self):
        return _Jet(-self.v, -self.dx, -self.dy)

    def __sub__(self, o):
        return self + (-_Jet._of(o))

    def __rsub__(self, o):
        return _Jet._of(o) + (-self)

    def __mul__(self, o):
        o = _Jet._of(o)
        return _Jet(self.v * o.v, self.dx * o.v + self.v * o.dx, self.dy * o.v + self.v * o.dy)

    __rmul__ = __mul__

    def __truediv__(self, o):
        o = _Jet._of(o)
        q = self.v / o.v
        return _Jet(q, (self.dx - q * o.dx) / o.v, (self.dy - q * o.dy) / o.v)

    def __rtruediv__(self, o):
        return _Jet._of(o) / self


def _distort_plane(model: CameraModel, extra, x, y):
    """Distortion on the model's own plane: pinhole plane (perspective) or equidistant plane (fisheye)."""
    if model.variable:
        dx, dy, _ = _field(_field_extra(extra), x, y, jacobian=False)
        return x + dx, y + dy
    return (distort_equidistant if model.fisheye else distort_normalized)(model.name, extra, x, y)


def distortion_jacobian(model: CameraModel, extra, x: torch.Tensor, y: torch.Tensor):
    """(x_d, y_d, (j00, j01, j10, j11)) of the plane distortion at (x, y); `extra` as from `split_params`.

    Values and Jacobian are differentiable in x, y and extra (the EWA covariance of `engine.splats.project`)."""
    if model.variable:
        dx, dy, (a, b, c, d) = _field(_field_extra(extra), x, y, jacobian=True)
        return x + dx, y + dy, (1.0 + a, b, c, 1.0 + d)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    jx, jy = _distort_plane(model, extra, _Jet(x, one, zero), _Jet(y, zero, one))
    jx, jy = _Jet._of(jx), _Jet._of(jy)
    return jx.v, jy.v, (jx.dx + zero, jx.dy + zero, jy.dx + zero, jy.dy + zero)


def _newton_step(jac, rx: torch.Tensor, ry: torch.Tensor, eps: float):
    """Step s with distort(x - s) ~ target: J^-1 r, or the Cauchy step (|g|^2 / |J g|^2) g along the gradient
    g = J^T r of |r|^2 / 2 where J is singular or orientation-reversing (det J <= 0: past a fold, Newton points
    the wrong way). jac = (j00, j01, j10, j11)."""
    a, b, c, d = jac
    det = a * d - b * c
    newton = det > eps * (a * a + b * b + c * c + d * d)
    det = torch.where(newton, det, torch.ones_like(det))
    gx, gy = a * rx + c * ry, b * rx + d * ry
    jgx, jgy = a * gx + b * gy, c * gx + d * gy
    cauchy = (gx * gx + gy * gy) / (jgx * jgx + jgy * jgy)
    sx = torch.where(newton, (d * rx - b * ry) / det, cauchy * gx)
    sy = torch.where(newton, (a * ry - c * rx) / det, cauchy * gy)
    return sx.nan_to_num(0.0, 0.0, 0.0), sy.nan_to_num(0.0, 0.0, 0.0)  # J = 0: no step


def _radial_initial_guess(model: CameraModel, extra, limit: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor):
    """Newton's start: the target's direction at the radius r <= limit with r s(r^2) = |target|, i.e. the exact
    solution when only the radial part of the distortion is present. Found by bisection on the angle (r = tan(angle)
    for perspective models, r = angle for fisheye), valid because r s(r^2) increases up to the limit."""
    target = torch.hypot(tx, ty)
    lo = torch.zeros_like(target)
    hi = limit if model.fisheye else torch.atan(limit).clamp_max(_MAX_ANGLE)
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        r = mid if model.fisheye else torch.tan(mid)
        below = r * radial_distortion_factor(model.name, extra, r * r) < target  # False for NaN/inf: go lower
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    mid = 0.5 * (lo + hi)
    r = mid if model.fisheye else torch.tan(mid)
    scale = torch.where(target > 0, r / target, torch.ones_like(r))
    return tx * scale, ty * scale


def _undistort_plane(model: CameraModel, extra, limit: torch.Tensor, xd: torch.Tensor, yd: torch.Tensor):
    """Solve distort(x, y) = (xd, yd) for |(x, y)| <= limit on the model's plane: (x, y, converged).

    Newton on the 2x2 Jacobian from `_radial_initial_guess`, at most NEWTON_MAX_ITERATIONS iterations, safeguarded:
    a step is at most half the current radius plus 0.05 long; iterates stay within `limit` (see `radius_limit`),
    where the radial distortion is one-to-one, so Newton cannot leap across a fold to a spurious root; a step that
    does not reduce the residual is rejected and retried at half length (backtracking); past a fold (det J <= 0)
    the step follows the residual's gradient instead (`_newton_step`). An element stops when its residual is below
    2 eps (1 + |(xd, yd)|), or it stalls: a step below 4 eps (1 + |(x, y)|), or _NEWTON_PATIENCE iterations in a
    row that cut the residual by less than 10 % (Newton near a simple root cuts it far more per step). `converged`
    is False where the residual then exceeds 256 eps (1 + |(xd, yd)|): no solution (e.g. a target beyond the
    distorted image of a folding lens), or none found within the budget. Such entries hold the best iterate and
    carry no gradient.

    The loop runs without autograd; gradients come from the implicit function theorem. With J the Jacobian at the
    solution x* and r(x, extra, xd) = distort(x; extra) - xd, the result is x* - J^-1 (r - r.detach()): its value
    is x* and its first derivatives are dx/dxd = J^-1 and dx/dextra = -J^-1 dr/dextra, exactly (second derivatives
    are not).
    """
    if not extra:  # pinhole models: no distortion
        return xd, yd, torch.ones_like(xd, dtype=torch.bool)
    xd, yd, limit, *extra_b = torch.broadcast_tensors(xd, yd, limit, *extra)
    eps = torch.finfo(xd.dtype).eps
    with torch.no_grad():
        ex = tuple(e.detach() for e in extra_b)
        tx, ty = xd.detach(), yd.detach()
        done_res = 2 * eps * (1.0 + torch.hypot(tx, ty))
        x, y = _radial_initial_guess(model, ex, limit, tx, ty)
        fx, fy, jac = distortion_jacobian(model, ex, x, y)
        rx, ry = fx - tx, fy - ty
        res = torch.hypot(rx, ry)
        sx, sy = _newton_step(jac, rx, ry, eps)
        trust = torch.ones_like(x)
        slow = torch.zeros_like(x, dtype=torch.int32)  # consecutive iterations that cut the residual by < 10 %
        active = torch.isfinite(res) & (res > done_res)
        for _ in range(NEWTON_MAX_ITERATIONS):
            if not bool(active.any()):
                break
            radius = torch.hypot(x, y)
            length = trust * torch.clamp((0.5 * radius + 0.05) / torch.hypot(sx, sy), max=1.0).nan_to_num(0.0)
            nx, ny = x - sx * length, y - sy * length
            inside = torch.clamp(limit / torch.hypot(nx, ny), max=1.0).nan_to_num(1.0)
            nx, ny = nx * inside, ny * inside
            moved = torch.hypot(nx - x, ny - y)
            fx, fy, cjac = distortion_jacobian(model, ex, nx, ny)
            crx, cry = fx - tx, fy - ty
            cres = torch.hypot(crx, cry)
            accept = active & (cres < res)
            slow = torch.where(cres < 0.9 * res, 0, slow + 1)
            stalled = (slow >= _NEWTON_PATIENCE) | (moved <= 4 * eps * (1.0 + radius))
            csx, csy = _newton_step(cjac, crx, cry, eps)

            def pick(new, old):
                return torch.where(accept, new, old)
            x, y, res, sx, sy = map(pick, (nx, ny, cres, csx, csy), (x, y, res, sx, sy))
            jac = tuple(map(pick, cjac, jac))
            trust = torch.where(accept, torch.clamp(2 * trust, max=1.0), 0.5 * trust)
            active &= (res > done_res) & ~stalled
        converged = res <= 128 * done_res
        a, b, c, d = jac
        det = a * d - b * c
        implicit = converged & (det.abs() > eps)
        det = torch.where(implicit, det, torch.ones_like(det))
    gx, gy = _distort_plane(model, tuple(extra_b), x, y)
    zero = torch.zeros_like(xd)
    rx = torch.where(implicit, gx - xd - (gx - xd).detach(), zero)
    ry = torch.where(implicit, gy - yd - (gy - yd).detach(), zero)
    return x - (d * rx - b * ry) / det, y - (a * ry - c * rx) / det, converged


# --- LENS_FIELD: bilinear displacement field on the equidistant plane ---------------------------------------------

def _field_extra(extra) -> torch.Tensor:
    """LENS_FIELD's extra (R, n, d...) as one tensor (..., 2 + 2 n^2), also when given as a sequence of columns."""
    if torch.is_tensor(extra):
        return extra
    return torch.stack(torch.broadcast_tensors(*[torch.as_tensor(e) for e in extra]), -1)


def _field(extra: torch.Tensor, x: torch.Tensor, y: torch.Tensor, jacobian: bool):
    """(D_x, D_y, J) at plane points (x, y): D bilinear between the grid nodes, J = (dDx/dx, dDx/dy, dDy/dx, dDy/dy)
    (None unless `jacobian`). Outside [-R, R]^2 the point is clamped to the grid's border (D continues constant).

    Node (row j, column i) sits at (-R + i h, -R + j h), h = 2 R / (n - 1). Each camera of a batched `extra`
    (..., 2 + 2 n^2) reads its own grid: the nodes of all cameras are one flat table indexed by camera * n^2 + node,
    so gathering (and its backward) costs memory per point, not per point and node.
    """
    n = lens_field_grid_size(extra.shape[-1] + 4)
    radius = extra[..., 0]
    nodes = extra[..., 2:].reshape(-1, 2)  # (cameras * n^2, 2), row-major per camera
    h = 2.0 * radius / (n - 1)
    tx_raw, ty_raw = (x + radius) / h, (y + radius) / h  # grid coordinates, broadcast over cameras and points
    tx, ty = tx_raw.clamp(0.0, n - 1.0), ty_raw.clamp(0.0, n - 1.0)
    with torch.no_grad():
        i0 = torch.nan_to_num(torch.floor(tx), nan=0.0).clamp(0, n - 2)
        j0 = torch.nan_to_num(torch.floor(ty), nan=0.0).clamp(0, n - 2)
        k = (j0 * n + i0).long()
        cameras = radius.numel()
        if cameras > 1:
            k = k + torch.broadcast_to(torch.arange(cameras, device=k.device).reshape(radius.shape), k.shape) * n * n
    wx, wy = tx - i0, ty - j0
    g00, g01, g10, g11 = nodes[k], nodes[k + 1], nodes[k + n], nodes[k + n + 1]
    wx2, wy2 = wx[..., None], wy[..., None]
    top, bottom = g00 + wx2 * (g01 - g00), g10 + wx2 * (g11 - g10)
    disp = top + wy2 * (bottom - top)
    if not jacobian:
        return disp[..., 0], disp[..., 1], None
    with torch.no_grad():  # d clamp / d t: 0 outside the grid
        in_x = ((tx_raw >= 0) & (tx_raw <= n - 1)).to(x.dtype)[..., None]
        in_y = ((ty_raw >= 0) & (ty_raw <= n - 1)).to(x.dtype)[..., None]
    h2 = h[..., None]
    d_dx = (g01 - g00 + wy2 * (g11 - g10 - g01 + g00)) * in_x / h2
    d_dy = (bottom - top) * in_y / h2
    return disp[..., 0], disp[..., 1], (d_dx[..., 0], d_dy[..., 0], d_dx[..., 1], d_dy[..., 1])


def _field_domain(extra: torch.Tensor, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Where LENS_FIELD projects meaningfully: inside the grid, theta below 180 degrees, no fold."""
    with torch.no_grad():
        radius = extra[..., 0]
        _, _, (a, b, c, d) = _field(extra, x, y, jacobian=True)
        det = (1.0 + a) * (1.0 + d) - b * c
        return (x.abs() <= radius) & (y.abs() <= radius) & (theta < math.pi) & (det > 0)


def _undistort_field(extra: torch.Tensor, xd: torch.Tensor, yd: torch.Tensor):
    """Solve x + D(x) = x_d on the equidistant plane: (x, y, converged).

    Each iteration takes the better of a Newton step (quadratic convergence within a cell) and the fixed-point step
    x <- x_d - D(x), whose residual shrinks by the factor Lip(D) (< 1 for the network-built fields: Banach), so the
    solve cannot stall where the field is invertible. Starts at x_d; stops like `_undistort_plane` (residual below
    2 eps (1 + |x_d|), _NEWTON_PATIENCE slow iterations, or NEWTON_MAX_ITERATIONS), `converged` where the residual
    is below 128 times that. Gradients by the implicit function theorem, as in `_undistort_plane`.
    """
    xd, yd, _ = torch.broadcast_tensors(xd, yd, extra[..., 0])
    eps = torch.finfo(xd.dtype).eps
    with torch.no_grad():
        ex, tx, ty = extra.detach(), xd.detach(), yd.detach()
        done_res = 2 * eps * (1.0 + torch.hypot(tx, ty))

        def evaluate(x, y):
            dx, dy, jac = _field(ex, x, y, jacobian=True)
            return dx, dy, tuple(j + (1.0 if i in (0, 3) else 0.0) for i, j in enumerate(jac)), \
                torch.hypot(x + dx - tx, y + dy - ty)

        x, y = tx.clone(), ty.clone()
        dx, dy, jac, res = evaluate(x, y)
        slow = torch.zeros_like(x, dtype=torch.int32)
        active = torch.isfinite(res) & (res > done_res)
        for _ in range(NEWTON_MAX_ITERATIONS):
            if not bool(active.any()):
                break
            sx, sy = _newton_step(jac, x + dx - tx, y + dy - ty, eps)
            nx, ny = x - sx, y - sy
            fx, fy = tx - dx, ty - dy
            newton, fixed = evaluate(nx, ny), evaluate(fx, fy)
            use_newton = newton[3] <= fixed[3]
            cand = [torch.where(use_newton, a, b) for a, b in zip((nx, ny), (fx, fy))]
            cand += [torch.where(use_newton, a, b) for a, b in zip(newton[:2], fixed[:2])]
            cjac = tuple(torch.where(use_newton, a, b) for a, b in zip(newton[2], fixed[2]))
            cres = torch.where(use_newton, newton[3], fixed[3])
            accept = active & (cres < res)
            slow = torch.where(cres < 0.9 * res, 0, slow + 1)

            def pick(new, old):
                return torch.where(accept, new, old)
            x, y, dx, dy = map(pick, cand, (x, y, dx, dy))
            jac = tuple(map(pick, cjac, jac))
            res = pick(cres, res)
            active &= (res > done_res) & (slow < _NEWTON_PATIENCE)
        converged = res <= 128 * done_res
        a, b, c, d = jac
        det = a * d - b * c
        implicit = converged & (det.abs() > eps)
        det = torch.where(implicit, det, torch.ones_like(det))
    gx, gy, _ = _field(extra, x, y, jacobian=False)
    zero = torch.zeros_like(xd)
    rx, ry = x + gx - xd, y + gy - yd
    rx = torch.where(implicit, rx - rx.detach(), zero)
    ry = torch.where(implicit, ry - ry.detach(), zero)
    return x - (d * rx - b * ry) / det, y - (a * ry - c * rx) / det, converged


# --- validity ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _limit_grid(fisheye: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Radii uniform in angle from 0: theta in [0, pi] (fisheye) or tan(angle), angle in [0, _MAX_ANGLE]."""
    angle = torch.linspace(0.0, math.pi if fisheye else _MAX_ANGLE, _LIMIT_SAMPLES + 1, dtype=dtype, device=device)
    return angle if fisheye else torch.tan(angle)


def radius_limit(model_name: str, params) -> torch.Tensor:
    """Largest undistorted radius up to which the model's radial distortion r -> r s(r^2) keeps increasing.

    r is the pinhole-plane radius tan(theta) for perspective models and the angle theta itself for fisheye models.
    Shape params.shape[:-1]; inf (perspective) or pi (fisheye) when the map never folds. Found on a grid uniform in
    angle (conservative by at most two grid steps); tangential and thin-prism terms are not considered.
    LENS_FIELD: min(R, pi), the largest disc around the axis inside its control grid (`in_domain` also admits the
    grid's corners).
    """
    model, params = _params_tensor(model_name, params)
    params = params.detach()
    cap = math.pi if model.fisheye else math.inf
    if model.variable:
        return params[..., 4].clamp(max=cap)
    if not model.extra_params:
        return torch.full(params.shape[:-1], cap, dtype=params.dtype, device=params.device)
    with torch.no_grad():
        r = _limit_grid(model.fisheye, params.dtype, params.device)
        extra = tuple(e[..., None] for e in _split(model, params)[4])
        rd = r * radial_distortion_factor(model.name, extra, r * r)
        bad = ~(rd[..., 1:] > rd[..., :-1])  # NaN (a pole of FULL_OPENCV's rational factor) counts as a fold
        first = torch.argmax(bad.to(torch.uint8), dim=-1)  # r_d rises up to r[first], its maximum is past r[first-1]
        below = r[(first - 1).clamp_min(0)]
        return torch.where(bad.any(-1), below, torch.full_like(below, cap))


def in_domain(model_name: str, params, x: torch.Tensor, y: torch.Tensor, radius: torch.Tensor | None = None):
    """Whether points (x, y) on the model's plane (pinhole plane, or equidistant plane for fisheye models) project
    meaningfully: undistorted radius (default |(x, y)|; fisheye callers pass theta from atan2, exact on the -Z axis)
    below `radius_limit`; for LENS_FIELD inside its grid, below 180 degrees, and where the field does not fold."""
    model, params = _params_tensor(model_name, params)
    with torch.no_grad():
        radius = torch.hypot(x, y) if radius is None else radius.detach()
        if model.variable:
            return _field_domain(params.detach()[..., 4:], x.detach(), y.detach(), radius)
        return radius < radius_limit(model_name, params)


# --- camera plane <-> camera rays --------------------------------------------------------------------------------

def equidistant_from_cam(points: torch.Tensor):
    """(a, b) = theta (X, Y) / |(X, Y)| with theta = atan2(|(X, Y)|, Z), differentiable everywhere off the -Z axis
    (on it the direction is undefined: finite values, which `project` marks invalid)."""
    X, Y, Z = points.unbind(-1)
    r2 = X * X + Y * Y
    near_axis = (Z > 0) & (r2 <= (1e-4 * Z) ** 2)
    r = torch.sqrt(torch.where(near_axis | (r2 == 0), torch.ones_like(r2), r2))
    z_pos = torch.where(Z > 0, Z, torch.ones_like(Z))
    # theta / r = atan(r/Z) / r = (1/Z) (1 - r^2 / (3 Z^2) + O(r^4/Z^4)) near the axis (avoids 0/0 and sqrt'(0)).
    scale = torch.where(near_axis, (1.0 - r2 / (3.0 * z_pos * z_pos)) / z_pos, torch.atan2(r, Z) / r)
    return X * scale, Y * scale


def cam_from_equidistant(a: torch.Tensor, b: torch.Tensor):
    """Unit direction (sin(theta) (a, b) / theta, cos(theta)), theta = |(a, b)|; inverse of equidistant_from_cam."""
    t2 = a * a + b * b
    small = t2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    sinc = torch.where(small, 1.0 - t2 / 6.0, torch.sin(theta) / theta)  # sin(t)/t = 1 - t^2/6 + O(t^4)
    cos = torch.where(small, 1.0 - t2 / 2.0, torch.cos(theta))
    return torch.stack([a * sinc, b * sinc, cos], -1)


def _pinhole_from_cam(points: torch.Tensor):
    """(X/Z, Y/Z, in_front); Z is replaced by 1 where Z <= eps so the values stay finite."""
    X, Y, Z = points.unbind(-1)
    in_front = Z > torch.finfo(points.dtype).eps
    z = torch.where(in_front, Z, torch.ones_like(Z))
    return X / z, Y / z, in_front


def _equidistant_from_pinhole(x: torch.Tensor, y: torch.Tensor):
    return equidistant_from_cam(torch.stack([x, y, torch.ones_like(x)], -1))


def _pinhole_from_equidistant(a: torch.Tensor, b: torch.Tensor):
    """(x, y, ok): the ray through the equidistant point scaled to z = 1; ok is False from theta = 90 deg on."""
    ray = cam_from_equidistant(a, b)
    z = ray[..., 2]
    ok = z > torch.finfo(z.dtype).eps
    z = torch.where(ok, z, torch.ones_like(z))
    return ray[..., 0] / z, ray[..., 1] / z, ok


# --- public API ----------------------------------------------------------------------------------------------------

def project(model_name: str, params, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (..., 2) and validity (...) of camera-frame points (..., 3).

    Matches COLMAP's `img_from_cam` for points in front of the camera. Fisheye models measure the angle from the
    optical axis, so points with Z <= 0 project too while that angle stays below `radius_limit`. Pixels where
    `valid` is False are finite but meaningless.
    """
    model, params, points = _prepare(model_name, params, points_cam, 3)
    fx, fy, cx, cy, extra = _split(model, params)
    if model.fisheye:
        x, y = equidistant_from_cam(points)
        with torch.no_grad():
            r = torch.atan2(torch.hypot(points[..., 0], points[..., 1]), points[..., 2])
        in_front = torch.ones_like(r, dtype=torch.bool)
    else:
        x, y, in_front = _pinhole_from_cam(points)
        r = torch.hypot(x, y).detach()
    xd, yd = _distort_plane(model, extra, x, y)
    pixels = torch.stack([fx * xd + cx, fy * yd + cy], -1)
    valid = in_front & in_domain(model.name, params, x, y, r)
    return pixels, valid


def _undistort(model: CameraModel, params: torch.Tensor, xd: torch.Tensor, yd: torch.Tensor):
    """Pinhole-plane (x, y) of distorted normalised coordinates, and validity (see `unproject`).

    For fisheye models also returns the equidistant-plane point (a, b), else None.
    """
    if model.variable:
        x, y, valid = _undistort_field(_split(model, params)[4], xd, yd)
    else:
        x, y, valid = _undistort_plane(model, _split(model, params)[4], radius_limit(model.name, params), xd, yd)
    valid = valid & in_domain(model.name, params, x, y)
    if not model.fisheye:
        return x, y, valid, None
    px, py, ok = _pinhole_from_equidistant(x, y)
    return px, py, valid & ok, (x, y, valid)


def _normalised_from_pixels(model: CameraModel, params: torch.Tensor, pixels: torch.Tensor):
    fx, fy, cx, cy, _ = _split(model, params)
    return (pixels[..., 0] - cx) / fx, (pixels[..., 1] - cy) / fy


def unproject(model_name: str, params, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised rays (x, y, 1) (..., 3) through pixels (..., 2), and validity (...).

    The point at depth Z along a pixel is Z * ray. Matches COLMAP's `cam_from_img`. `valid` is False where the
    undistortion did not converge (see `_undistort_plane`), beyond `radius_limit`, and for fisheye pixels at
    90 degrees or more from the axis, which no z = 1 ray reaches (use `unproject_directions` for those).
    """
    model, params, pixels = _prepare(model_name, params, pixels, 2)
    x, y, valid, _ = _undistort(model, params, *_normalised_from_pixels(model, params, pixels))
    return torch.stack([x, y, torch.ones_like(x)], -1), valid


def unproject_directions(model_name: str, params, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit ray directions (..., 3) through pixels (..., 2), and validity (...); covers a fisheye's whole field."""
    model, params, pixels = _prepare(model_name, params, pixels, 2)
    x, y, valid, equidistant = _undistort(model, params, *_normalised_from_pixels(model, params, pixels))
    if equidistant is not None:
        a, b, valid = equidistant
        return cam_from_equidistant(a, b), valid
    ray = torch.stack([x, y, torch.ones_like(x)], -1)
    return ray / torch.linalg.vector_norm(ray, dim=-1, keepdim=True), valid


def distort(model_name: str, params, xy: torch.Tensor) -> torch.Tensor:
    """Distorted normalised coordinates ((u - cx) / fx, (v - cy) / fy) (..., 2) of pinhole-plane points (..., 2).

    For fisheye models the pinhole point (x, y) stands for the ray (x, y, 1), so this covers angles below 90 deg.
    """
    model, params, xy = _prepare(model_name, params, xy, 2)
    extra = _split(model, params)[4]
    x, y = xy.unbind(-1)
    if model.fisheye:
        x, y = _equidistant_from_pinhole(x, y)
    return torch.stack(_distort_plane(model, extra, x, y), -1)


def undistort(model_name: str, params, xy_distorted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `distort`: pinhole-plane points (..., 2) and validity (...), with `unproject`'s validity rules."""
    model, params, xy_distorted = _prepare(model_name, params, xy_distorted, 2)
    x, y, valid, _ = _undistort(model, params, xy_distorted[..., 0], xy_distorted[..., 1])
    return torch.stack([x, y], -1), valid
