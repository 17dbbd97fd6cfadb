"""Learnable cameras for splat training: focal, principal point, lens distortion and per-image poses.

Parameterisation (every quantity is a delta from the bundle's starting value, zero at the start):
- focal: one log-scale per intrinsics group, fx = fx0 exp(d), fy = fy0 exp(d) (the pixel aspect stays fixed);
- principal point: an offset in units of the image width, cx = cx0 + W dx, cy = cy0 + W dy;
- distortion: additive deltas of the model's distortion parameters (COLMAP order);
- pose: a twist xi = (omega, v) in se(3) per image, cam_from_world = exp(xi^) cam_from_world0, the delta acting in
  the camera frame; v is in units of the scene scale so one learning rate fits every scene.
An intrinsics group is one bundle camera, or all cameras together with `shared=True` (same model and size).

Learnable distortion models are the radial-tangential family (SIMPLE_RADIAL, RADIAL, OPENCV) and the fisheye family
(SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE, OPENCV_FISHEYE). FULL_OPENCV's rational factor has poles and
THIN_PRISM_FISHEYE's prism terms are not identifiable from photometric error, so their distortion is rendered but not
learned; `--lens opencv` / `--lens fisheye` converts them (`convert_camera`: a least-squares fit of the target
model to the original's pixel-to-ray map, whose RMS is reported).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..bundle import Camera
from ..camera_models import get_model
from ..errors import CameraModelError
from ..projection import project, unproject_directions

CALIBRATABLE = ("focal", "pp", "pose", "distortion")
LEARNABLE_DISTORTION = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV",
                        "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "OPENCV_FISHEYE", "LENS_FIELD")
LENSES = ("keep", "pinhole", "radial", "opencv", "fisheye", "field", "auto")


def lens_model(camera: Camera, lens: str) -> str:
    """The model a camera is trained with under `--lens`: `keep` leaves it; `pinhole` is SIMPLE_PINHOLE or PINHOLE
    and `radial` RADIAL or OPENCV (one focal or two, following the camera's fx == fy); `opencv` is OPENCV,
    `fisheye` OPENCV_FISHEYE and `field` the learned LENS_FIELD; `auto` is LENS_FIELD for fisheye models and lenses
    one perspective view cannot cover (`cubemap.needs_cubemap`: rays beyond 60 deg; parametric models fit those badly
    at the edges), else keep."""
    if lens not in LENSES:
        raise CameraModelError(f"unknown lens {lens!r}; choose one of {', '.join(LENSES)}")
    if lens == "auto":
        from .cubemap import needs_cubemap

        wide = get_model(camera.model).fisheye or needs_cubemap(camera.model, camera.params, camera.width,
                                                                  camera.height)
        return "LENS_FIELD" if wide else camera.model
    if lens == "field":
        return "LENS_FIELD"
    if lens == "keep" or camera.model == "LENS_FIELD":
        return camera.model
    fx, fy, *_ = camera.split()
    square = abs(fx - fy) <= 1e-9 * fx
    return {"pinhole": "SIMPLE_PINHOLE" if square else "PINHOLE", "radial": "RADIAL" if square else "OPENCV",
            "opencv": "OPENCV", "fisheye": "OPENCV_FISHEYE"}[lens]


def convert_camera(camera: Camera, model_name: str, grid: int = 24) -> tuple[Camera, float]:
    """`camera` expressed in `model_name`, and the RMS pixel error of the conversion.

    Exact (RMS 0) when the target contains the source (e.g. PINHOLE -> OPENCV: zero distortion). Otherwise all
    target parameters are fitted by Levenberg-Marquardt so that the target projects the source's pixel rays (a
    grid x grid sample of the image, rays from `unproject_directions`) back onto the same pixels.
    """
    source, target = get_model(camera.model), get_model(model_name)
    fx, fy, cx, cy, extra = camera.split()
    if model_name == camera.model:
        return Camera(camera.id, camera.model, camera.width, camera.height, list(camera.params)), 0.0
    if target.shared_focal:
        fx = fy = math.sqrt(fx * fy)
    start = torch.tensor(target.join(fx, fy, cx, cy), dtype=torch.float64)
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) * camera.width / grid
    v = (torch.arange(grid, dtype=torch.float64) + 0.5) * camera.height / grid
    pixels = torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)
    rays, ok = unproject_directions(camera.model, torch.tensor(camera.params, dtype=torch.float64), pixels)
    if source.fisheye != target.fisheye or not target.fisheye:
        ok &= rays[:, 2] > 1e-6  # perspective targets only see rays in front
    if int(ok.sum()) < 2 * target.num_params:
        raise CameraModelError(f"camera {camera.id}: cannot convert {camera.model} to {model_name}: too few of its "
                               f"pixel rays are representable in {model_name}")
    rays, pixels = rays[ok], pixels[ok]

    def residual(p: torch.Tensor) -> torch.Tensor:
        return (project(model_name, p, rays)[0] - pixels).reshape(-1)

    params, damping = start, 1e-3
    cost = float(residual(params).square().sum())
    for _ in range(100):
        jac = torch.autograd.functional.jacobian(residual, params)
        r = residual(params)
        normal = jac.T @ jac
        step = torch.linalg.solve(normal + damping * torch.diag(torch.diagonal(normal) + 1e-12), jac.T @ r)
        trial = params - step
        trial_cost = float(residual(trial).square().sum())
        if math.isfinite(trial_cost) and trial_cost < cost:
            params, damping = trial, damping / 3
            done = cost - trial_cost <= 1e-12 * (1 + cost)
            cost = trial_cost
            if done:
                break
        else:
            damping *= 4
            if damping > 1e8:
                break
    rms = math.sqrt(cost / len(pixels))
    converted = Camera(camera.id, model_name, camera.width, camera.height, [float(p) for p in params])
    get_model(model_name).split(converted.params)  # raises on a non-positive focal
    return converted, rms


# --- SE(3) ---------------------------------------------------------------------------------------------------------

def _hat(w: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(w[..., 0])
    x, y, z = w.unbind(-1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*w.shape[:-1], 3, 3)


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """exp of twists xi = (omega, v) (..., 6) as 4x4 matrices: R = exp(omega^) (Rodrigues), t = V v with
    V = I + B omega^ + C omega^2 (Barfoot, State Estimation for Robotics, eq. 7.86), A = sin(t)/t,
    B = (1 - cos t)/t^2, C = (t - sin t)/t^3; Taylor series below t^2 = 1e-6 keep the gradient exact at 0."""
    w, v = xi[..., :3], xi[..., 3:]
    t2 = (w * w).sum(-1)
    small = t2 < 1e-6
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    a = torch.where(small, 1 - t2 / 6, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(t)) / torch.where(small, torch.ones_like(t2), t2))
    c = torch.where(small, 1 / 6 - t2 / 120, (t - torch.sin(t)) / (t * torch.where(small, torch.ones_like(t2), t2)))
    k = _hat(w)
    k2 = k @ k
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(k)
    rot = eye + a[..., None, None] * k + b[..., None, None] * k2
    trans = ((eye + b[..., None, None] * k + c[..., None, None] * k2) @ v[..., None])[..., 0]
    top = torch.cat([rot, trans[..., None]], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], -2)


# --- learning-rate schedule ------------------------------------------------------------------------------------------

@dataclass
class Schedule:
    """lr(step): 0 before `start`, a linear ramp over `ramp` steps, then exponential decay to lr * final at `end`
    (held after). Warm-up keeps calibration still while the Gaussians settle, so it does not fight them early."""
    lr: float
    start: int = 0
    ramp: int = 0
    end: int = 1
    final: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        ramp = min(1.0, (step - self.start + 1) / self.ramp) if self.ramp > 0 else 1.0
        span = max(self.end - self.start, 1)
        decay = self.final ** min(1.0, max(0.0, (step - self.start) / span))
        return self.lr * ramp * decay


# --- optimiser -------------------------------------------------------------------------------------------------------

class GroupAdam(torch.optim.Optimizer):
    """Adam whose second moment is one scalar per parameter group (the mean square of the group's gradient)
    instead of one per coordinate. Per-coordinate Adam moves every coordinate by about the learning rate from the
    first step on, whatever its gradient, which sends well-placed cameras wandering while the splats are still
    poor (and the splats then follow them); with a shared normaliser a coordinate moves in proportion to its own
    gradient, as in plain gradient descent, while the group's step size stays scale-free."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-12):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim API)
        for group in self.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if not grads:
                continue
            b1, b2 = group["betas"]
            state = self.state.setdefault(group["params"][0], {"step": 0, "v": 0.0})
            state["step"] += 1
            mean_sq = float(sum(g.square().sum() for g in grads) / max(sum(g.numel() for g in grads), 1))
            state["v"] = b2 * state["v"] + (1 - b2) * mean_sq
            v_hat = state["v"] / (1 - b2 ** state["step"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.setdefault(p, {}) if p is not group["params"][0] else state
                m = st.setdefault("m", torch.zeros_like(p))
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                p.sub_(group["lr"] * m / (1 - b1 ** state["step"]) / (v_hat ** 0.5 + group["eps"]))


# --- the learnable rig ---------------------------------------------------------------------------------------------

class CameraRig(torch.nn.Module):
    """Cameras and poses of one scene as differentiable functions of learnable deltas (module docstring)."""

    def __init__(self, cameras: Sequence[Camera], image_cameras: Sequence[int], poses: np.ndarray,
                 scene_scale: float = 1.0, shared: bool = False, dtype: torch.dtype = torch.float32,
                 fields: dict[int, "LensField"] | None = None) -> None:
        """`cameras`: in their training models; `image_cameras[i]`: index into `cameras` of image i;
        `poses`: (n_images, 4, 4) cam_from_world; `fields`: networks of LENS_FIELD cameras by index into
        `cameras` (from `engine.lens_field`; a LENS_FIELD camera without one gets a network fitted to its grid,
        or loaded from its `lens_network` file)."""
        super().__init__()
        self.cameras = [Camera(c.id, c.model, c.width, c.height, list(c.params)) for c in cameras]
        if shared:
            first = self.cameras[0]
            for cam in self.cameras[1:]:
                if (cam.model, cam.width, cam.height) != (first.model, first.width, first.height):
                    raise CameraModelError(f"shared intrinsics need one model and size; camera {cam.id} is "
                                           f"{cam.model} {cam.width}x{cam.height}, camera {first.id} is "
                                           f"{first.model} {first.width}x{first.height}")
        self.shared = shared
        self.scene_scale = float(scene_scale)
        self.group_of_camera = [0 if shared else i for i in range(len(self.cameras))]
        self.image_cameras = list(image_cameras)
        n_groups = 1 if shared else len(self.cameras)
        self.fields = torch.nn.ModuleDict()  # group -> LensField (the distortion of LENS_FIELD cameras)
        n_extra = max([len(get_model(c.model).extra_params) for c in self.cameras if c.model != "LENS_FIELD"] + [0])
        base = torch.zeros(len(self.cameras), 4 + n_extra, dtype=dtype)
        for i, cam in enumerate(self.cameras):
            fx, fy, cx, cy, extra = cam.split()
            if cam.model == "LENS_FIELD":
                field = self._field(i, cam, fields or {})
                self.fields[str(self.group_of_camera[i])] = field.to(dtype)
                if field.intrinsics is not None:  # the focal the network was fitted with
                    fx, fy, cx, cy = field.intrinsics
                extra = ()
            base[i, :4] = torch.tensor([fx, fy, cx, cy], dtype=dtype)
            base[i, 4:4 + len(extra)] = torch.tensor(extra, dtype=dtype)
        self.register_buffer("base", base)
        self.register_buffer("poses0", torch.as_tensor(np.asarray(poses), dtype=dtype).reshape(-1, 4, 4).clone())
        self.log_focal = torch.nn.Parameter(torch.zeros(n_groups, dtype=dtype))
        self.pp = torch.nn.Parameter(torch.zeros(n_groups, 2, dtype=dtype))
        self.distortion = torch.nn.Parameter(torch.zeros(n_groups, n_extra, dtype=dtype))
        self.pose = torch.nn.Parameter(torch.zeros(len(self.poses0), 6, dtype=dtype))

    def _field(self, index: int, camera: Camera, fields: dict) -> "LensField":
        from ..lens_field import LensField, load_network

        group = str(self.group_of_camera[index])
        if group in self.fields:  # shared intrinsics: one field
            return self.fields[group]
        if index in fields:
            return fields[index]
        if camera.lens_network is not None:
            field = load_network(camera.lens_network)
            with torch.no_grad():
                field.intrinsics = tuple(float(v) for v in camera.params[:4])
            return field
        return LensField.fit(camera)[0]

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The learnable tensors of each calibratable quantity (CALIBRATABLE); distortion holds the parametric
        deltas (when any camera has parametric distortion) and every lens field's network."""
        parametric = [self.distortion] if self.distortion.numel() else []
        return {"focal": [self.log_focal], "pp": [self.pp], "distortion": parametric + list(self.fields.parameters()),
                "pose": [self.pose]}

    def learnable(self, what: str) -> list[str]:
        """Why `what` cannot be calibrated (empty when it can)."""
        if what == "distortion":
            return [f"camera {c.id} ({c.model})" for c in self.cameras if c.model not in LEARNABLE_DISTORTION]
        return []

    def camera_params(self, index: int) -> torch.Tensor:
        """COLMAP-ordered parameter vector (P,) of camera `index`, differentiable w.r.t. the deltas."""
        cam, g = self.cameras[index], self.group_of_camera[index]
        model = get_model(cam.model)
        base = self.base[index]
        scale = torch.exp(self.log_focal[g])
        cx = base[2] + cam.width * self.pp[g, 0]
        cy = base[3] + cam.width * self.pp[g, 1]
        if cam.model == "LENS_FIELD":
            return self.fields[str(g)].params(base[0] * scale, base[1] * scale, cx, cy)
        n = len(model.extra_params)
        extra = base[4:4 + n] + self.distortion[g, :n]
        head = [base[0] * scale, cx, cy] if model.shared_focal else [base[0] * scale, base[1] * scale, cx, cy]
        return torch.cat([torch.stack(head), extra])

    def cam_from_world(self, image: int, xi: torch.Tensor | None = None) -> torch.Tensor:
        """(4, 4) pose of image `image`: exp(delta) @ starting pose, delta = `xi` when given, else the rig's."""
        xi = self.pose[image] if xi is None else xi
        xi = torch.cat([xi[:3], xi[3:] * self.scene_scale])
        return se3_exp(xi) @ self.poses0[image]

    def all_cam_from_world(self) -> torch.Tensor:
        """(n_images, 4, 4) poses of every image (`cam_from_world` batched)."""
        xi = torch.cat([self.pose[:, :3], self.pose[:, 3:] * self.scene_scale], 1)
        return se3_exp(xi) @ self.poses0

    def image_camera(self, image: int) -> tuple[Camera, torch.Tensor]:
        index = self.image_cameras[image]
        return self.cameras[index], self.camera_params(index)

    def respan_field(self, index: int, margin: float) -> float:
        """Refit the lens field of camera `index` (shared by its group) to the camera's current lens, over a grid
        `margin` times wider than the rays its image has now (`LensField.fit`), in place: the same parameter
        tensors, so optimisers keep them. The focal and principal-point deltas are folded into the new intrinsics.
        For a lens that widened beyond its grid while calibrating. Returns the fit's RMS in pixels."""
        from ..lens_field import LensField

        group = self.group_of_camera[index]
        field, cam = self.fields[str(group)], self.cameras[index]
        with torch.no_grad():
            params = self.camera_params(index).double().tolist()
        current = Camera(cam.id, "LENS_FIELD", cam.width, cam.height, params)
        fitted, rms = LensField.fit(current, field.grid, hidden=field.hidden, blocks=field.blocks, margin=margin)
        with torch.no_grad():
            field.set_geometry(fitted.geometry())
            field.load_state_dict(fitted.state_dict())  # copies into the existing tensors (dtype kept)
            for i, g in enumerate(self.group_of_camera):
                if g == group:
                    self.base[i, :4] = torch.tensor(fitted.intrinsics, dtype=self.base.dtype)
            self.log_focal[group] = 0.0
            self.pp[group] = 0.0
        return rms

    @torch.no_grad()
    def export_cameras(self) -> list[Camera]:
        """The current cameras as engine Cameras (float64 parameters)."""
        out = []
        for i, cam in enumerate(self.cameras):
            params = [float(p) for p in self.camera_params(i).double()]
            if cam.model == "LENS_FIELD":  # exact grid radius (its network file records it in float64)
                params[4] = self.fields[str(self.group_of_camera[i])].radius
            out.append(Camera(cam.id, cam.model, cam.width, cam.height, params))
        return out

    @torch.no_grad()
    def export_poses(self) -> np.ndarray:
        """(n_images, 4, 4) float64 cam_from_world, re-orthonormalised."""
        out = np.stack([self.cam_from_world(i).double().cpu().numpy() for i in range(len(self.poses0))])
        u, _, vt = np.linalg.svd(out[:, :3, :3])
        out[:, :3, :3] = u @ vt
        return out
