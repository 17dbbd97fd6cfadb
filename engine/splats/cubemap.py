"""Cubemap rendering of Gaussian splats for very wide lenses (fields of view up to and beyond 180 degrees).

A single perspective render cannot cover such a lens: a pinhole image that reaches rays at angle theta from its
axis samples them radially at 1/cos^2(theta) times its centre's density (d tan(theta) / d theta), 4x at 60 deg,
33x at 80 deg, and nothing at 90 deg or beyond. A cube of six 90-degree pinhole faces covers every direction and
never up-samples more than 3x (a face's corners, atan(sqrt 2) = 54.7 deg off its axis). So, as in
Self-Calibrating Gaussian Splatting for Large Field of View Reconstruction (Deng et al. 2025):

1. every lens pixel's ray comes from `engine.projection.unproject_directions` (any camera model of the registry);
   the pixel belongs to the cube face its ray points into (largest signed component in the camera frame);
2. only the faces some valid pixel belongs to are rendered, each as a PINHOLE camera sharing the lens camera's
   centre (`project_gaussians` + the given compositor, so the torch and gsplat paths both work), slightly wider
   than 90 degrees: FACE_MARGIN pixels of overlap on every side, so the bilinear lookup of a pixel at its face's
   border still finds rendered data on both sides (no seam; each pixel reads only its own face). Of each face only
   the window its pixels read is rendered (a 190-degree lens reads about half of each side face);
3. each lens pixel bilinearly samples its face (`torch.nn.functional.grid_sample`) at its ray.

Colour (premultiplied: composited over black) and alpha are resampled together, and the background is added after
resampling, so the result composites exactly like a direct render. Pixels without a valid ray (beyond the lens's
image circle, past a fold of its distortion, or where unprojection did not converge) get the background, alpha 0
and False in `valid`: a training loss should be taken inside `valid` only.

Gradients reach the Gaussians through the face renders and the lens parameters through the sampling positions,
i.e. through `unproject_directions`. Its iterative inverses (Newton for the parametric models, Newton with a
fixed-point fallback for LENS_FIELD) run without autograd and are differentiated at their solution by the implicit
function theorem (`engine.projection._undistort_plane` / `_undistort_field`), so these are exact first derivatives,
not those of a truncated unrolled iteration (checked against finite differences in tests/test_cubemap.py); pixels
where the inverse did not converge are not valid and carry none. (A pixel whose ray crosses a face border as the
lens changes switches faces: the image is continuous there only up to the small difference between two faces'
renders of the same splats.)

Accuracy and cost (measured, 190-degree lens): against ray-traced Gaussians the cubemap's error is the same at the
edge of the field as at its centre, while a direct fisheye render's (one EWA linearisation of the lens per splat)
triples towards 90 degrees. At 128 x 128 px with 10k splats, one forward + backward on one CPU thread costs 2.6x a
direct fisheye render at the default face size (1.8x with faces 0.7 times as large).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import CameraModelError
from ..projection import project, unproject_directions
from .project import Projected, project_gaussians

FACE_NAMES = ("+X", "-X", "+Y", "-Y", "+Z", "-Z")  # cube faces in the camera frame (OpenCV axes), by index
FACE_MARGIN = 2  # px rendered beyond the 90-degree square on each side of a face (>= 1 for bilinear lookups)
WIDE_ANGLE_DEG = 60.0  # widest ray of the image beyond which a single perspective face is not enough (1/cos^2 = 4)

# face_from_cam rotations: rows are the face camera's right, down and forward axes (right = down x forward).
_FACE_AXES = (
    ((0, 0, -1), (0, 1, 0), (1, 0, 0)),  # +X
    ((0, 0, 1), (0, 1, 0), (-1, 0, 0)),  # -X
    ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),  # +Y
    ((1, 0, 0), (0, 0, 1), (0, -1, 0)),  # -Y
    ((1, 0, 0), (0, 1, 0), (0, 0, 1)),  # +Z
    ((-1, 0, 0), (0, 1, 0), (0, 0, -1)),  # -Z
)

Rasterize = Callable[..., tuple[torch.Tensor, torch.Tensor]]
Params = torch.Tensor | Sequence[float]


@dataclass
class FaceWindow:
    """The part of a cube face that is rendered: columns x0..x0+width, rows y0..y0+height of the full face
    (face_size + 2 FACE_MARGIN pixels square, focal face_size / 2, principal point at its centre)."""
    face: int  # index into FACE_NAMES
    x0: int
    y0: int
    width: int
    height: int


@dataclass
class CubemapRender:
    image: torch.Tensor  # (H, W, C) colour, background where not `valid`
    alpha: torch.Tensor  # (H, W, 1), 0 where not `valid`
    valid: torch.Tensor  # (H, W) bool: pixels with a valid ray (the lens's image circle)
    faces: list[int]  # indices into FACE_NAMES of the faces rendered
    face_size: int  # pixels across a face's 90 degrees (its focal length is face_size / 2)
    windows: list[FaceWindow]  # the rendered part of each face (same order as `faces`)
    projected: list[Projected]  # the splats projected into each window (means2d in window pixels)


def _face_rotations(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(_FACE_AXES, dtype=dtype, device=device)


def _as_params(params: Params) -> torch.Tensor:
    return params if torch.is_tensor(params) else torch.as_tensor(params, dtype=torch.float64)


def _pixel_centres(width: int, height: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(H * W, 2) pixel centres (u, v) = (j + 0.5, i + 0.5), row-major."""
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype, device=device) + 0.5,
                          torch.arange(width, dtype=dtype, device=device) + 0.5, indexing="ij")
    return torch.stack([u, v], -1).reshape(-1, 2)


def _lens_rays(model: str, params: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit rays (H * W, 3) of every pixel centre (differentiable w.r.t. params) and their validity (H * W,)."""
    if width < 1 or height < 1:
        raise CameraModelError(f"image size must be positive, got {width} x {height}")
    pixels = _pixel_centres(width, height, params.dtype, params.device)
    rays, valid = unproject_directions(model, params, pixels)
    return rays, valid & torch.isfinite(rays.detach()).all(-1)


def _sampled_rays(model: str, params: torch.Tensor, width: int, height: int,
                  samples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """`_lens_rays` of at most `samples` x `samples` pixel centres spread over the image, its border rows and
    columns included (enough to find the widest ray and the faces needed without unprojecting every pixel of a
    large photo)."""
    if width < 1 or height < 1:
        raise CameraModelError(f"image size must be positive, got {width} x {height}")
    u = torch.unique(torch.linspace(0, width - 1, min(width, samples)).round()) + 0.5
    v = torch.unique(torch.linspace(0, height - 1, min(height, samples)).round()) + 0.5
    vv, uu = torch.meshgrid(v.to(params), u.to(params), indexing="ij")
    rays, valid = unproject_directions(model, params, torch.stack([uu, vv], -1).reshape(-1, 2))
    return rays, valid & torch.isfinite(rays).all(-1)


def _face_of(rays: torch.Tensor) -> torch.Tensor:
    """Index into FACE_NAMES of the face each ray (..., 3) points into: its largest signed component."""
    x, y, z = rays.unbind(-1)
    return torch.argmax(torch.stack([x, -x, y, -y, z, -z], -1), -1)


def needs_cubemap(model: str, params: Params, width: int, height: int) -> bool:
    """True when the image holds a valid ray more than WIDE_ANGLE_DEG from the optical axis (module docstring: a
    single perspective render would up-sample that ray more than 1/cos^2(60 deg) = 4x, more than any cube face)."""
    rays, valid = _sampled_rays(model, _as_params(params).detach(), width, height)
    if not bool(valid.any()):
        raise CameraModelError(f"{model} camera {width} x {height} with params {_as_params(params).tolist()} has "
                               f"no pixel with a valid ray")
    widest = torch.acos(rays[valid][:, 2].clamp(-1.0, 1.0)).max()
    return bool(widest > math.radians(WIDE_ANGLE_DEG))


def cube_faces(model: str, params: Params, width: int, height: int) -> list[int]:
    """Indices into FACE_NAMES (ascending) of the faces that some valid pixel's ray points into (over a sample of
    the image; `render_cubemap` renders the faces every pixel needs)."""
    rays, valid = _sampled_rays(model, _as_params(params).detach(), width, height)
    return sorted(int(k) for k in torch.unique(_face_of(rays[valid])))


@torch.no_grad()
def default_face_size(model: str, params: Params, width: int, height: int) -> int:
    """Pixels across a face's 90 degrees so that the face's centre resolution (focal = face_size / 2 px per radian)
    matches the lens's angular resolution at the principal point (the larger of its two axes): faces then never
    sample coarser than the lens does at its centre. Falls back to the image centre when the principal point has no
    valid ray."""
    params = _as_params(params).detach()
    # the principal point is where a ray along +Z lands
    axis = torch.tensor([0.0, 0.0, 1.0], dtype=params.dtype, device=params.device)
    centre, ok = project(model, params, axis)
    if not bool(ok) or not bool(torch.isfinite(centre).all()):
        centre = torch.tensor([width / 2, height / 2], dtype=params.dtype, device=params.device)
    step = torch.tensor([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]], dtype=params.dtype,
                        device=params.device)
    ends, ends_ok = unproject_directions(model, params, centre + step)
    if not bool(ends_ok.all()):
        raise CameraModelError(f"{model} camera with params {params.tolist()}: no valid rays around the image "
                               f"centre {centre.tolist()}, so its angular resolution is undefined")
    angles = torch.stack([torch.acos((ends[0] * ends[1]).sum().clamp(-1, 1)),
                          torch.acos((ends[2] * ends[3]).sum().clamp(-1, 1))])  # radians per pixel
    px_per_radian = float((1.0 / angles.clamp_min(1e-12)).max())
    return max(2, math.ceil(2.0 * px_per_radian))


def _window(face: int, uv: torch.Tensor, size: int) -> FaceWindow:
    """Smallest window of a `size`-square face holding both pixel centres each bilinear lookup at face pixel
    coordinates uv (n, 2) reads (floor(u - 0.5) and the next)."""
    lo = torch.floor(uv.min(0).values - 0.5).clamp(0, size - 1).long()
    hi = (torch.floor(uv.max(0).values - 0.5) + 2).long().clamp(max=size)
    hi = torch.maximum(hi, lo + 1)
    return FaceWindow(face, int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1]))


def _face_camera(window: FaceWindow, face_size: int, cam_from_world: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """(PINHOLE params, cam_from_world) of the window of a cube face of the camera `cam_from_world`."""
    dtype, device = cam_from_world.dtype, cam_from_world.device
    f, c = face_size / 2.0, face_size / 2.0 + FACE_MARGIN
    params = torch.tensor([f, f, c - window.x0, c - window.y0], dtype=dtype, device=device)
    rotation = _face_rotations(dtype, device)[window.face]
    return params, torch.cat([rotation @ cam_from_world[:3], cam_from_world[3:]], 0)


def render_cubemap(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor, opacities: torch.Tensor,
                   colors: torch.Tensor, model: str, params: Params, cam_from_world: torch.Tensor, width: int,
                   height: int, rasterize: Rasterize, background: torch.Tensor | None = None,
                   face_size: int | None = None) -> CubemapRender:
    """Render N Gaussians (means (N, 3), quats (N, 4) w x y z, log_scales (N, 3), opacities (N,) in [0, 1],
    colors (N, C) already evaluated for this camera centre) into a `width` x `height` image of the lens
    (`model`, COLMAP-ordered `params` (P,), `cam_from_world` (4, 4)) through a cubemap (module docstring).

    `rasterize` is `raster_torch.rasterize` or `raster_gsplat.rasterize`. `face_size`: pixels across each face's
    90 degrees (default `default_face_size`: the lens's angular resolution at its centre)."""
    dtype, device = colors.dtype, colors.device
    params = _as_params(params).to(device)
    if face_size is None:
        face_size = default_face_size(model, params, width, height)
    if int(face_size) != face_size or face_size < 2:
        raise ValueError(f"face_size must be an integer >= 2, got {face_size!r}")
    face_size = int(face_size)
    channels = colors.shape[-1]

    rays, valid = _lens_rays(model, params, width, height)
    index = torch.nonzero(valid).flatten()
    face = _face_of(rays.detach()[index])
    rotations = _face_rotations(rays.dtype, rays.device)[face]
    p = torch.einsum("nij,nj->ni", rotations, rays[index])
    q = p[:, :2] / p[:, 2:]  # |q| <= 1: the ray's own face (its largest component is p_z >= 1/sqrt(3))
    size = face_size + 2 * FACE_MARGIN
    uv = (q * (face_size / 2.0) + size / 2.0).to(dtype)  # face pixel coordinates (COLMAP convention)

    faces = sorted(int(k) for k in torch.unique(face))
    samples, targets, windows, projected = [], [], [], []
    for k in faces:
        mine = torch.nonzero(face == k).flatten()
        window = _window(k, uv[mine].detach(), size)  # render only the part of the face that is read
        face_params, face_pose = _face_camera(window, face_size, cam_from_world.to(device, dtype))
        w, h = window.width, window.height
        proj = project_gaussians(means, quats, log_scales, opacities, "PINHOLE", face_params, face_pose, w, h)
        # order by distance from the camera centre, as the direct fisheye render does: every face then blends
        # splats in the same order, where each face's own z would order splats near a face border differently
        proj.depths = (means @ cam_from_world[:3, :3].T.to(means) + cam_from_world[:3, 3].to(means)).norm(dim=-1)
        face_image, face_alpha = rasterize(proj, colors, opacities, w, h, None)
        texture = torch.cat([face_image, face_alpha], -1).permute(2, 0, 1)[None]  # (1, C + 1, h, w)
        # grid_sample's [-1, 1] spans the window's outer pixel edges (align_corners=False)
        offset = uv.new_tensor([window.x0, window.y0])
        grid = 2.0 * (uv[mine] - offset) / uv.new_tensor([w, h]) - 1.0
        sampled = torch.nn.functional.grid_sample(texture, grid[None, None], mode="bilinear",
                                                  padding_mode="zeros", align_corners=False)
        samples.append(sampled[0, :, 0].T)  # (n, C + 1)
        targets.append(index[mine])
        windows.append(window)
        projected.append(proj)
    flat = torch.zeros(width * height, channels + 1, dtype=dtype, device=device)
    if samples:
        flat = flat.index_copy(0, torch.cat(targets), torch.cat(samples))
    color, alpha = flat[:, :channels], flat[:, channels:]
    if background is not None:
        color = color + (1 - alpha) * background.to(dtype)
    return CubemapRender(color.reshape(height, width, channels), alpha.reshape(height, width, 1),
                         valid.reshape(height, width), faces, face_size, windows, projected)
