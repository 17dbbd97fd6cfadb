"""The learned lens (camera model LENS_FIELD): an invertible residual network on a grid of control points.

The lens maps the equidistant plane (a, b) = theta (X, Y) / |(X, Y)| to distorted coordinates x + D(x), pixels being
u = fx (a + D_x) + cx, v = fy (b + D_y) + cy (`engine.projection`). D is stored as displacements at the nodes of an
n x n grid over [-R, R]^2 and interpolated bilinearly (the hybrid field of Self-Calibrating Gaussian Splatting for
large field of view): evaluating the network at n^2 nodes costs the same whatever the number of points projected.

The displacements come from an invertible residual network (i-ResNet, Behrmann et al. 2019) in grid units q = x / R:
F = (I + g_K) o ... o (I + g_1) o (I + B), D(x) = R (F(q) - q), with residual branches of certified Lipschitz
bounds L_B, L_1 .. L_K:
- B(q) = q P(min(|q|^2, T)), P(t) = sum_k beta_k t^k (k = 0..RADIAL_DEGREE), the radial part (r_d = (1 + beta_0) r
  + beta_1 r^3 + ...: the fisheye polynomials' form, and a focal change), held linear beyond |q|^2 = T
  (`radial_extent`: the farthest the fitted
  image reaches), so the polynomial cannot explode where there is no data (the grid's corners). Its Jacobian is
  symmetric with eigenvalues P(t) and Q(t) = P + 2 t P'(t) (P(T) twice beyond T), so Lip(B) is max |P|, |Q| on
  [0, T]: exact, from the ends and the real roots of P' and Q'.
- g_k: MLPs 2 -> hidden -> hidden -> 2 (ELU, 1-Lipschitz) bounded by the product of their weights' exact spectral
  norms (largest singular values: power iteration would underestimate them).
  Spectral-normalised MLPs fit the strong radial part of a fisheye poorly (their certified bound is tens of times
  their true Lipschitz constant when they bend), hence B: the MLPs carry what is not radial (decentring,
  asymmetry) and corrections.
By induction on F_k - I = (F_{k-1} - I) + g_k o F_{k-1}, Lip(F - I) <= (1 + L_B) prod_k (1 + L_k) - 1
<= exp(S) - 1 with S = L_B + sum_k L_k. One cap keeps S below b = log(1 + LIPSCHITZ), so that Lip(D) <= LIPSCHITZ
(and every branch's bound is below b < 1: each block is invertible): the radial coefficients and each MLP's three
weights (as a cube root) are scaled by s(S) = b / (S^8 + b^8)^(1/8) computed from the unscaled parameters, which
makes S s(S) < b always. s is within 1 % of 1 below S = 0.7 b, and unlike min(1, b / S) smooth, which keeps L-BFGS's
line searches working when the cap is reached. One budget for all branches lets the fit spend it where the lens
needs it (a strong radial profile, or decentring).
LIPSCHITZ = 0.7 < 1/sqrt(2): within a cell the bilinear interpolant's Jacobian has columns that are averages of node
differences along x or along y, each at most Lip(D) long, so its spectral norm is below sqrt(2) Lip(D) < 1. The
interpolated field is therefore a contraction as well, and the unprojection's fixed-point step x <- x_d - D(x)
converges everywhere (Banach). The caps are reparametrisations of free parameters, so they hold after any number of
optimiser steps.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_file
from .bundle import LENS_NETWORK_FORMAT, LENS_NETWORK_VERSION, Camera, read_lens_network
from .errors import BundleError, CameraModelError
from .projection import cam_from_equidistant, equidistant_from_cam, project, unproject_directions

LIPSCHITZ = 0.7  # certified bound on Lip(D) (< 1/sqrt(2), see the module docstring)
_BUDGET = math.log1p(LIPSCHITZ)  # cap on the sum of the branches' bounds (module docstring)
RADIAL_DEGREE = 6  # beta_0..beta_6: r .. r^13
DEFAULT_GRID = 17  # the smallest grid `default_grid` gives
MAX_GRID = 65
DEFAULT_HIDDEN = 32
DEFAULT_BLOCKS = 2
FIT_STEPS = 300
FIT_MARGIN = 1.05  # R = this x the largest |a| or |b| of the image's rays: the enlarged sensor
# A field that will be calibrated must also reach rays its starting camera does not see: from a start focal 5 %
# long (rays 5 % short), FIT_MARGIN left the true lens's outermost rays on the grid's border, where the adjusted
# field lost or squeezed them (bench_lens's 180 deg room at 1536 px, tracks only: 0.8 % of the image without a
# ray, p99 error 1.7 deg; with 1.12 none lost, p99 0.7 deg in the unobserved corners). 1.12 covers a start focal up
# to 6.7 % long for 1.07x the cell size (a longer start: the track adjustment refits the field over a wider grid,
# `CameraRig.respan_field`). A wider grid spends nodes on rays no image has: on the bench's synthetic
# 190 deg lens, whose start is already 40 % too wide, 1.15 and 1.25 made the median error 10x and 4x worse (1.2
# did not; the field's adjustment is sensitive to its start).
CALIBRATION_MARGIN = 1.12
FULL_EXTENT = 2.0 / FIT_MARGIN ** 2  # default radial extent: a fit's largest possible |q|^2 (its image's corners)
_FIT_SAMPLES = 4  # fit samples per grid cell and axis (at least 48 per image axis)
_SOFT = 8  # exponent of the smooth cap s
_KEEP_FOCAL = 0.5  # keep the camera's focal while the lens needs less than this share of LIPSCHITZ


def _soft_max(value: torch.Tensor, bound: float) -> torch.Tensor:
    """(value^8 + bound^8)^(1/8): a smooth stand-in for max(value, bound) (the cap s of the module docstring)."""
    return (value.pow(_SOFT) + bound ** _SOFT).pow(1.0 / _SOFT)


def _poly_max_abs(coeffs: torch.Tensor, t_max: float) -> torch.Tensor:
    """max |sum_k coeffs[k] t^k| over t in [0, t_max], differentiable in coeffs (the arg max is found without
    gradients; at an extremum the value's derivative does not depend on where it is: envelope theorem)."""
    c = coeffs.detach().cpu().double().numpy()
    candidates = [0.0, t_max]
    derivative = np.arange(1, len(c)) * c[1:]  # d/dt: sum_k k c_k t^(k-1); numpy.roots wants the highest power first
    if np.any(derivative != 0):
        roots = np.roots(derivative[::-1])
        scale = max(1.0, float(np.abs(roots).max(initial=0.0)))
        candidates += [float(r.real) for r in roots if abs(r.imag) <= 1e-9 * scale and 0.0 < r.real < t_max]
    t = torch.tensor(candidates, dtype=coeffs.dtype, device=coeffs.device)
    powers = t[:, None] ** torch.arange(len(c), dtype=coeffs.dtype, device=coeffs.device)
    return (powers @ coeffs).abs().max()


class _RadialBlock(nn.Module):
    """B(q) = q P(min(|q|^2, extent)), P(t) = sum_k beta_k t^k, its coefficients scaled by the network's cap."""

    def __init__(self, terms: int, extent: float) -> None:
        super().__init__()
        self.extent = extent
        self.coeffs = nn.Parameter(torch.zeros(terms))

    def raw_lipschitz(self) -> torch.Tensor:
        """Lip(B) of the unscaled coefficients: max |P|, |Q| on [0, extent] (module docstring), differentiable."""
        k = torch.arange(len(self.coeffs), dtype=self.coeffs.dtype, device=self.coeffs.device)
        return torch.maximum(_poly_max_abs(self.coeffs, self.extent),
                             _poly_max_abs((2 * k + 1) * self.coeffs, self.extent))

    def forward(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        beta = self.coeffs * scale
        t = torch.clamp((q * q).sum(-1, keepdim=True), max=self.extent)
        p = torch.zeros_like(t)
        for b in beta[1:].flip(0):  # Horner: P(t) = beta_0 + t (beta_1 + t (beta_2 + ...))
            p = (p + b) * t
        return q * (p + beta[0])


class _Block(nn.Module):
    """Residual branch g(q) = W3 elu(W2 elu(W1 q + b1) + b2) + b3, its weights scaled by the cube root of the
    network's cap (so its Lipschitz bound, the product of their spectral norms, scales by the cap)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(2, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 2)])
        nn.init.zeros_(self.layers[-1].weight)  # g = 0 at initialisation: the identity lens
        nn.init.zeros_(self.layers[-1].bias)

    def raw_lipschitz(self) -> torch.Tensor:
        """Product of the unscaled weights' spectral norms (ELU is 1-Lipschitz), differentiable."""
        return torch.stack([torch.linalg.matrix_norm(layer.weight, ord=2) for layer in self.layers]).prod()

    def forward(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        s = scale ** (1.0 / len(self.layers))
        h = nn.functional.elu(nn.functional.linear(q, self.layers[0].weight * s, self.layers[0].bias))
        h = nn.functional.elu(nn.functional.linear(h, self.layers[1].weight * s, self.layers[1].bias))
        return nn.functional.linear(h, self.layers[2].weight * s, self.layers[2].bias)


class LensField(nn.Module):
    """Displacement field D on the equidistant plane, evaluated at the nodes of a `grid` x `grid` control grid over
    [-radius, radius]^2 (radians), from an i-ResNet (a radial block and `blocks` MLP blocks of width `hidden`) whose
    certified Lipschitz bound `lipschitz_bound()` never exceeds LIPSCHITZ (module docstring). Zero at creation.
    `radial_extent` is T of the radial block, in (|point| / radius)^2.

    `intrinsics` is (fx, fy, cx, cy) when the field came from `fit` (the focal it was fitted with), else None.
    """

    def __init__(self, grid: int, radius: float, hidden: int = DEFAULT_HIDDEN, blocks: int = DEFAULT_BLOCKS,
                 radial_extent: float = FULL_EXTENT) -> None:
        super().__init__()
        for name, value, low in (("grid", grid, 2), ("hidden", hidden, 1), ("blocks", blocks, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise CameraModelError(f"LensField {name} must be a whole number >= {low}, got {value!r}")
        for name, value in (("radius", radius), ("radial_extent", radial_extent)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CameraModelError(f"LensField {name} must be a positive number, got {value!r}")
        self.grid, self.radius, self.hidden, self.blocks = int(grid), float(radius), int(hidden), int(blocks)
        self.radial_extent = float(radial_extent)
        self.intrinsics: tuple[float, float, float, float] | None = None
        self.radial = _RadialBlock(RADIAL_DEGREE + 1, self.radial_extent)
        self.residual = nn.ModuleList(_Block(self.hidden) for _ in range(self.blocks))
        t = torch.linspace(-1.0, 1.0, self.grid)
        gy, gx = torch.meshgrid(t, t, indexing="ij")  # row j is y, column i is x
        self.register_buffer("nodes", torch.stack([gx, gy], -1).reshape(-1, 2), persistent=False)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Displacements D (..., 2) at equidistant-plane points (..., 2) (radians) of the smooth network field."""
        scale = self._cap()
        p = points / self.radius
        q = p + self.radial(p, scale)
        for block in self.residual:
            q = q + block(q, scale)
        return (q - p) * self.radius

    def _raw_total(self) -> torch.Tensor:
        """S: the sum of the branches' raw (unscaled) Lipschitz bounds."""
        return self.radial.raw_lipschitz() + sum(block.raw_lipschitz() for block in self.residual)

    def _cap(self) -> torch.Tensor:
        """The factor s(S) every branch's Lipschitz bound is multiplied by, S the sum of the raw bounds."""
        return _BUDGET / _soft_max(self._raw_total(), _BUDGET)

    def hold_radial_beyond(self, extent: float) -> None:
        """Lower the radial block's T to `extent` (in (|point| / radius)^2) where that is below it: the polynomial
        then shapes the profile only inside, and beyond it the profile continues linearly from its value there.
        `engine.splats.track_loss.bundle_adjust` sets it to the farthest ray the tracks observe, so that the
        degree-13 polynomial cannot bend where no observation constrains it: the profile there is predictable
        instead of arbitrary. Measured (99th percentile of the lens error over the image, free polynomial -> held):
        bench_lens's plain-textured 1536 px rooms, whose SIFT tracks reach 65-66 deg of the 180 / 190 deg lenses,
        0.88 -> 0.48 deg (equidistant) and 2.05 -> 1.44 deg (mild_radial); synthetic tracks within 45 deg of a 180
        deg equidistant lens, 0.80 -> 0.38 deg. A lens that bends beyond the reach is not followed: mild_radial
        seen within 60 deg, 0.86 -> 1.45 deg (the free polynomial happened to bend with it). Only tracks out there
        fix that (bench_lens's textured rooms reach 83 deg).
        The field inside is kept exactly: a lower T can only lower the radial block's raw bound, which raises the
        cap s(S) on every branch, so all are rescaled by the c with c s(c S') = s(S) (S' the new raw total;
        x s(x) = b x / (x^8 + b^8)^(1/8) inverts in closed form). Beyond, the field changes where the polynomial
        bent: call this before adjusting the field there."""
        if not (isinstance(extent, (int, float)) and math.isfinite(extent) and extent > 0):
            raise CameraModelError(f"LensField radial extent must be a positive number, got {extent!r}")
        with torch.no_grad():
            cap = float(self._cap())
            self.radial_extent = min(self.radial_extent, float(extent))
            self.radial.extent = self.radial_extent
            raw = float(self._raw_total())
            if raw > 0:
                kept = raw * cap  # the certified total to keep, below the budget b
                c = _BUDGET * kept / (_BUDGET ** _SOFT - kept ** _SOFT) ** (1 / _SOFT) / raw
                self.radial.coeffs.mul_(c)
                for block in self.residual:  # three weights each: their bound scales by c
                    for layer in block.layers:
                        layer.weight.mul_(c ** (1 / 3))

    def geometry(self) -> dict:
        """What `state_dict` does not hold and calibration may change (`hold_radial_beyond`,
        `CameraRig.respan_field`): radius, radial extent and fitted intrinsics; for training checkpoints."""
        return {"radius": self.radius, "radial_extent": self.radial_extent, "intrinsics": self.intrinsics}

    def set_geometry(self, geometry: dict) -> None:
        """Restore `geometry()` (the grid size and architecture must match)."""
        self.radius = float(geometry["radius"])
        self.radial_extent = self.radial.extent = float(geometry["radial_extent"])
        intrinsics = geometry["intrinsics"]
        self.intrinsics = None if intrinsics is None else tuple(float(v) for v in intrinsics)

    def displacements(self) -> torch.Tensor:
        """D at the control nodes, (grid, grid, 2), row-major over (row y, column x); zero at initialisation."""
        return self(self.nodes * self.radius).reshape(self.grid, self.grid, 2)

    def params(self, fx, fy, cx, cy) -> torch.Tensor:
        """The LENS_FIELD parameter vector of this field with intrinsics (fx, fy, cx, cy) (floats or tensors)."""
        return lens_field_params(fx, fy, cx, cy, self.radius, self.displacements())

    def block_lipschitz(self) -> list[float]:
        """Certified Lipschitz bounds of the residual branches: [Lip(B), Lip(g_1), ...]."""
        with torch.no_grad():
            scale = self._cap()
            return [float(branch.raw_lipschitz() * scale) for branch in (self.radial, *self.residual)]

    def lipschitz_bound(self) -> float:
        """Certified bound prod (1 + Lip(branch)) - 1 on Lip(D) of the network field (module docstring)."""
        return math.prod(1.0 + c for c in self.block_lipschitz()) - 1.0

    @classmethod
    def fit(cls, camera: Camera, grid: int | None = None, steps: int = FIT_STEPS, hidden: int = DEFAULT_HIDDEN,
            blocks: int = DEFAULT_BLOCKS, margin: float = FIT_MARGIN) -> tuple["LensField", float]:
        """A field reproducing `camera`'s projection (any model, LENS_FIELD included) over its image, and the RMS
        pixel error of the fit (float64 throughout; `intrinsics` set on the field).

        The rays of a dense pixel sample (`_FIT_SAMPLES` per grid cell and axis) come from the camera's
        `unproject_directions`; R covers them with `margin` (FIT_MARGIN; CALIBRATION_MARGIN for a field to be
        calibrated); the principal point is the camera's and
        the focal is the camera's, scaled by `_focal_scale` when the lens would otherwise need most of the field's
        Lipschitz budget. The radial block starts from the linear least-squares fit of its polynomial to the
        lens's displacements, then `steps` L-BFGS iterations refine everything on the squared pixel error of
        `engine.projection.project` with the field's parameter vector. `grid` defaults to `default_grid`. The network
        starts from a fixed seed (the global random state is left alone), so fits repeat exactly.
        """
        grid = default_grid(camera.width, camera.height) if grid is None else grid
        fx, fy, cx, cy, _ = camera.split()
        pixels, rays = _image_rays(camera, max(48, _FIT_SAMPLES * (grid - 1) + 1))
        a, b = equidistant_from_cam(rays)
        if not (isinstance(margin, (int, float)) and margin >= 1):
            raise CameraModelError(f"LensField margin must be a number >= 1, got {margin!r}")
        radius = margin * float(torch.maximum(a.abs(), b.abs()).max())
        scale = _focal_scale(camera, a, b)
        fx, fy = fx * scale, fy * scale
        q = torch.stack([a, b], -1) / radius
        t = (q * q).sum(-1, keepdim=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            field = cls(grid, radius, hidden, blocks, float(t.max())).double()
        field.intrinsics = (fx, fy, cx, cy)
        # radial start: q_d - q = q P(|q|^2) in grid units, linear in beta
        q_d = (pixels - torch.tensor([cx, cy], dtype=torch.float64)) / torch.tensor([fx, fy], dtype=torch.float64)
        design = q[..., None] * t[..., None] ** torch.arange(RADIAL_DEGREE + 1, dtype=torch.float64)
        beta = torch.linalg.lstsq(design.reshape(-1, RADIAL_DEGREE + 1), (q_d / radius - q).reshape(-1)).solution
        with torch.no_grad():
            field.radial.coeffs.copy_(beta)
            lip = float(field.radial.raw_lipschitz())
            if 0 < lip < _BUDGET:  # undo the cap's shrink s(lip) (module docstring): s(x) x = lip at x below
                field.radial.coeffs.mul_(_BUDGET / (_BUDGET ** _SOFT - lip ** _SOFT) ** (1 / _SOFT))
        _refine(field, rays, pixels, (fx, fy, cx, cy), steps)
        with torch.no_grad():
            fitted, valid = project("LENS_FIELD", field.params(fx, fy, cx, cy), rays)
            rms = float((fitted - pixels).square().sum(-1).mean().sqrt())
        if not bool(valid.all()):
            raise CameraModelError(f"camera {camera.id}: the fitted lens field folds over part of the image "
                                   f"({int((~valid).sum())} of {len(valid)} samples)")
        return field, rms


def _refine(field: LensField, rays: torch.Tensor, pixels: torch.Tensor, intrinsics, steps: int) -> None:
    """`steps` L-BFGS iterations on the mean squared pixel error of `rays` against `pixels`. The field is only
    piecewise smooth (bilinear cells, the maxima in the Lipschitz bounds), where a line search can stall and L-BFGS
    stops early: it restarts, with a fresh history, while that still lowers the error by more than 1e-9 relative."""
    optimiser = torch.optim.LBFGS(field.parameters(), lr=1.0, max_iter=steps, history_size=50,
                                  tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def error() -> torch.Tensor:
        return (project("LENS_FIELD", field.params(*intrinsics), rays)[0] - pixels).square().sum(-1).mean()

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = error()
        loss.backward()
        return loss

    done, best = 0, math.inf
    while done < steps:
        optimiser.state.clear()
        optimiser.param_groups[0]["max_iter"] = steps - done
        optimiser.step(closure)
        done += max(optimiser.state[optimiser._params[0]]["n_iter"], 1)
        with torch.no_grad():
            loss = float(error())
        if not loss < best * (1 - 1e-9):
            break
        best = loss


def default_grid(width: int, height: int) -> int:
    """Grid size n for an image: bilinear interpolation's error grows as focal x cell size^2, i.e. as W / (n - 1)^2
    for a given lens. Measured: the best bilinear field (linear least squares) for a strong 185-degree
    OPENCV_FISHEYE (k1..k4 = 0.03, -0.01, 0.004, -0.0006) at 128 px is 0.0097 px RMS with n = 17 (0.0046 with 25,
    0.0026 with 33), so n - 1 = 16 sqrt(W / 400) keeps it near 0.03 px at any size (e.g. n = 36 at 1920 px, 52 at
    4000 px); at least DEFAULT_GRID, at most MAX_GRID."""
    return 1 + min(MAX_GRID - 1, max(DEFAULT_GRID - 1, math.ceil(16 * math.sqrt(max(width, height) / 400))))


def lens_field_params(fx, fy, cx, cy, radius, displacements: torch.Tensor) -> torch.Tensor:
    """The LENS_FIELD vector [fx, fy, cx, cy, R, n, d...] (contract in `engine.camera_models`), differentiable in
    every input; scalars may be floats or 0-d tensors, `displacements` is (n, n, 2) (row y, column x, (dx, dy))."""
    d = displacements
    if d.dim() != 3 or d.shape[0] != d.shape[1] or d.shape[0] < 2 or d.shape[2] != 2:
        raise CameraModelError(f"LENS_FIELD displacements must have shape (n, n, 2) with n >= 2, got "
                               f"{tuple(d.shape)}")
    head = [torch.as_tensor(v, dtype=d.dtype, device=d.device).reshape(()) for v in (fx, fy, cx, cy, radius)]
    n = torch.tensor(float(d.shape[0]), dtype=d.dtype, device=d.device)
    return torch.cat([torch.stack([*head, n]), d.reshape(-1)])


def field_camera(camera: Camera, grid: int | None = None, steps: int = FIT_STEPS, hidden: int = DEFAULT_HIDDEN,
                 blocks: int = DEFAULT_BLOCKS, margin: float = FIT_MARGIN) -> tuple[Camera, LensField, float]:
    """`camera` as a LENS_FIELD camera (same id and size), its network and the fit's RMS in pixels (`LensField.fit`)."""
    field, rms = LensField.fit(camera, grid, steps, hidden, blocks, margin)
    with torch.no_grad():
        params = field.params(*field.intrinsics)
    return Camera(camera.id, "LENS_FIELD", camera.width, camera.height, params.tolist()), field, rms


def _image_rays(camera: Camera, per_axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, unit rays) (M, 2), (M, 3) of a per_axis x per_axis sample of the image, borders included, where the
    camera's unprojection is valid."""
    u = torch.linspace(0.0, camera.width, per_axis, dtype=torch.float64)
    v = torch.linspace(0.0, camera.height, per_axis, dtype=torch.float64)
    pixels = torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)
    rays, valid = unproject_directions(camera.model, torch.tensor(camera.params, dtype=torch.float64), pixels)
    if int(valid.sum()) < 16:
        raise CameraModelError(f"camera {camera.id} ({camera.model}): only {int(valid.sum())} of {len(valid)} image "
                               f"samples unproject; cannot fit a lens field to it")
    return pixels[valid], rays[valid]


def _focal_scale(camera: Camera, a: torch.Tensor, b: torch.Tensor) -> float:
    """Factor s on the camera's focal so that the field x_d / s - x the lens needs has the smallest slope.

    With M the Jacobian of the camera's normalised distorted coordinates ((u - cx) / fx, (v - cy) / fy) w.r.t. the
    equidistant point, the field needs Lip(D) >= max ||M / s - I||_2. s = 1 (the camera's own focal) while that is
    below _KEEP_FOCAL x LIPSCHITZ, else the minimiser over s in [1/4, 4] (e.g. 1.8 for a stereographic lens over
    204 degrees, whose radial slope reaches 2.5).
    """
    fx, fy, cx, cy, _ = camera.split()
    params = torch.tensor(camera.params, dtype=torch.float64)
    step = max(1, len(a) // 4096)  # a subsample is plenty for a 1-D search
    ab = torch.stack([a, b], -1)[::step].detach().requires_grad_(True)
    pixels = project(camera.model, params, cam_from_equidistant(ab[:, 0], ab[:, 1]))[0]
    normalised = (pixels - torch.tensor([cx, cy], dtype=torch.float64)) / torch.tensor([fx, fy], dtype=torch.float64)
    rows = [torch.autograd.grad(normalised[:, i].sum(), ab, retain_graph=i == 0)[0] for i in range(2)]
    jac = torch.stack(rows, -2).detach()  # (M, 2, 2): d normalised_i / d (a, b)_j
    eye = torch.eye(2, dtype=torch.float64)

    def need(s: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_norm(jac / s[:, None, None, None] - eye, ord=2).amax(-1)

    if float(need(torch.ones(1, dtype=torch.float64))) <= _KEEP_FOCAL * LIPSCHITZ:
        return 1.0
    scales = torch.logspace(-math.log10(4), math.log10(4), 241, dtype=torch.float64)
    return float(scales[torch.argmin(need(scales))])


def save_network(path: str | os.PathLike, field: LensField) -> Path:
    """Write the field's network (architecture, grid, radius and weights, float64) to an .npz file, atomically."""
    path = Path(path)
    arrays = {"format": np.array(LENS_NETWORK_FORMAT), "version": np.array(LENS_NETWORK_VERSION),
              "grid": np.array(field.grid), "radius": np.array(field.radius), "hidden": np.array(field.hidden),
              "blocks": np.array(field.blocks), "radial_extent": np.array(field.radial_extent)}
    for name, value in field.state_dict().items():
        arrays[f"param:{name}"] = value.detach().double().cpu().numpy()
    with atomic_file(path) as f:
        np.savez(f, **arrays)
    return path


def load_network(path: str | os.PathLike) -> LensField:
    """The LensField saved by `save_network` at `path` (float64; no pickled objects are read)."""
    arrays = read_lens_network(path)
    try:
        field = LensField(int(arrays["grid"]), float(arrays["radius"]), int(arrays["hidden"]), int(arrays["blocks"]),
                          float(arrays["radial_extent"])).double()
    except (KeyError, TypeError, ValueError, CameraModelError) as exc:
        raise BundleError(f"{path}: lens network header is invalid ({exc})") from None
    state = {k[len("param:"):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("param:")}
    try:
        field.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"{path}: the weights do not fit a lens network with grid {field.grid}, hidden "
                          f"{field.hidden} and {field.blocks} blocks ({first})") from None
    return field
