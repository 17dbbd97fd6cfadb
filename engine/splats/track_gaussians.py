"""Track Gaussians: one small splat per feature track, centred on the track's point.

The track-constrained Gaussians of Shi et al. 2025 (arXiv 2502.19800, "No Parameters, No Problem: 3D Gaussian
Splatting without Camera Intrinsics and Extrinsics", later "TrackGS"): the mean of track Gaussian t IS the track
point `TrackLoss.xyz[t]`, so the photometric loss (which renders them with the ordinary splats) and the reprojection
loss move the same point, and the photometric loss sees the track geometry. The other attributes (log scales,
quaternion, opacity logit, SH; colour starts as the mean photo colour at the track's observations) are parameters
here with one Adam each (3DGS rates, set by the trainer). They stay outside the density control: never cloned,
split, pruned or opacity-reset, so row t is track t for the whole run. The reprojection loss reaches the points
through `anchored_points`, so their features, not the photometric loss, decide where they sit.

Size: a Gaussian much larger than a pixel can fit the photos with its centre off the surface (the photometric loss
sees the blob, not its centre); one of about a pixel must sit where its feature is. The pixel footprint of track t
is the mean over its observations of |p| / fx (p the point in that camera's frame: the width of one pixel at the
point, exact at the image centre of a perspective camera). They start one footprint wide, and the scale loss
    L_scale = mean_t relu(max_k exp(s_tk) / footprint_t - SCALE_BOUND_PX)
(pixels) penalises only growth beyond SCALE_BOUND_PX footprints. This hinge is our own form: the paper rescales its
track Gaussians to an infinitesimal size; a bound of a couple of pixels keeps them drawable (well below a pixel the
rasterizer's 0.3 px^2 low-pass dominates and the splat's colour stops depending on its scale).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .cameras import CameraRig
from .sh import C0, num_coefficients
from .track_loss import TrackLoss

NAMES = ("scales", "quats", "opacities", "sh0", "shN")  # learnable here; the means are the track points
SCALE_BOUND_PX = 2.0  # the scale loss allows track Gaussians up to this many pixel footprints


@torch.no_grad()
def pixel_footprints(tracks: TrackLoss, rig: CameraRig) -> torch.Tensor:
    """(T,) world size of one pixel at each track point, averaged over the views observing it (module docstring)."""
    poses = rig.all_cam_from_world()[tracks.image]
    points = torch.einsum("mij,mj->mi", poses[:, :3, :3], tracks.xyz[tracks.track]) + poses[:, :3, 3]
    focal = torch.stack([rig.camera_params(i)[0] for i in range(len(rig.cameras))])
    which = torch.as_tensor(rig.image_cameras, device=focal.device)[tracks.image]
    size = points.norm(dim=-1) / focal[which]
    n = len(tracks.xyz)
    total = torch.zeros(n, dtype=size.dtype, device=size.device).index_add(0, tracks.track, size)
    return total / torch.bincount(tracks.track, minlength=n).clamp_min(1)


@torch.no_grad()
def observed_colours(tracks: TrackLoss, photos: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T, 3) mean colour of the photo pixels at each track's observations (photos (H, W, 3) in [0, 1])."""
    colours = torch.zeros(len(tracks.pixels), 3, dtype=photos[0].dtype, device=photos[0].device)
    for image in torch.unique(tracks.image).tolist():
        sel = torch.nonzero(tracks.image == image).flatten()
        photo = photos[image]
        h, w = photo.shape[:2]
        px = tracks.pixels[sel].floor().long()  # the pixel whose area holds the point (centres at +0.5)
        colours[sel] = photo[px[:, 1].clamp(0, h - 1), px[:, 0].clamp(0, w - 1)]
    n = len(tracks.xyz)
    total = torch.zeros(n, 3, dtype=colours.dtype, device=colours.device).index_add(0, tracks.track, colours)
    return total / torch.bincount(tracks.track, minlength=n).clamp_min(1)[:, None]


class TrackGaussians:
    """The track Gaussians of a `TrackLoss` (module docstring): parameters `params` (NAMES) and their Adams
    `optimizers`, and each track's pixel footprint (the unit of the scale bound)."""

    def __init__(self, tracks: TrackLoss, rig: CameraRig, photos: Sequence[torch.Tensor], sh_degree: int,
                 opacity: float) -> None:
        self.tracks = tracks
        n, device = len(tracks.xyz), tracks.xyz.device
        k = num_coefficients(sh_degree) - 1
        values = {"scales": torch.zeros(n, 3),  # set by `resize`
                  "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
                  "opacities": torch.full((n,), math.log(opacity / (1 - opacity))),
                  "sh0": (observed_colours(tracks, photos).float().cpu() - 0.5) / C0, "shN": torch.zeros(n, k, 3)}
        self.params = {name: torch.nn.Parameter(values[name].to(device, torch.float32)) for name in NAMES}
        self.optimizers = {name: torch.optim.Adam([p], lr=0.0, eps=1e-15) for name, p in self.params.items()}
        self.resize(rig)

    def __len__(self) -> int:
        return len(self.tracks.xyz)

    @torch.no_grad()
    def resize(self, rig: CameraRig) -> None:
        """Footprints from the current track points and cameras, and every track Gaussian one footprint wide (at
        the start, and again once the bundle adjustment has moved cameras and points)."""
        self.footprint: torch.Tensor = pixel_footprints(self.tracks, rig).float()  # (T,)
        self.params["scales"].copy_(torch.log(self.footprint)[:, None].expand(-1, 3))

    def attributes(self) -> dict[str, torch.Tensor]:
        """means (the track points) and NAMES, in the trainer's layout."""
        return {"means": self.tracks.xyz, **self.params}

    def anchored_points(self) -> torch.Tensor:
        """The track points for the reprojection loss, equal in value, their gradient multiplied by the number of
        observations M. The loss is a mean over all M observations (so its pull on the cameras is weighted against
        the photometric loss), which leaves each point 1/M of its own observations' pull, far below the photometric
        pull on its Gaussian: that drags the points off their features (on a 64x48 room with 0.3 px track noise,
        track RMS 0.45 -> 0.9 px in 300 steps). Scaled, each point answers to the sum of its own residuals and
        stays on its rays (0.43 px), while the cameras see the same loss as without track Gaussians."""
        xyz = self.tracks.xyz
        return xyz.detach() + self.tracks.observations * (xyz - xyz.detach())

    def size_px(self) -> torch.Tensor:
        """(T,) largest scale of each track Gaussian in pixel footprints (differentiable)."""
        return torch.exp(self.params["scales"]).max(-1).values / self.footprint

    def scale_loss(self) -> torch.Tensor:
        """L_scale (module docstring), in pixels."""
        return torch.relu(self.size_px() - SCALE_BOUND_PX).mean()

    def state_dict(self) -> dict[str, Any]:
        return {"params": {k: v.detach().cpu() for k, v in self.params.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "footprint": self.footprint.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.tracks.xyz.device
        self.params = {k: torch.nn.Parameter(state["params"][k].to(device)) for k in NAMES}
        self.optimizers = {k: torch.optim.Adam([p], lr=0.0, eps=1e-15) for k, p in self.params.items()}
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self.footprint = state["footprint"].to(device)
