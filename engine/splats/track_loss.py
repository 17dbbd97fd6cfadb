"""Feature-track constraints for self-calibration: a reprojection loss over tracks and a track bundle adjustment.

Photometric gradients on cameras are biased while the splats are still poor (oversized early splats favour a
longer focal), and once the splats have fitted wrong cameras that state is a local minimum. Feature tracks give the
cameras an unbiased signal from the first step (the idea of the track-constrained 3DGS without intrinsics or
extrinsics): every track has a learnable world point, and its observations are reprojected through the learnable
rig (`cameras.CameraRig`: focal, principal point, distortion, pose - any camera model, through
`engine.projection.project`). The residuals enter a Cauchy (Lorentzian) loss, rho(r) = s^2 log(1 + |r|^2 / s^2),
s = `scale_px`, so mismatched tracks that survived verification lose their pull.

`bundle_adjust` minimises that loss over the cameras alone (L-BFGS, track points re-triangulated at every
evaluation) before the splats start, so they fit corrected cameras from step 1; `TrackLoss` then stays in the training loss with a weight that fades out
(`TrainConfig.track_weight`, `track_fade`). Only observations in training images are used, so held-out views stay
unseen. The similarity gauge (7 dof) is left free: the loss is invariant along it, so its gradient has no component
there, and the splats pin the frame during training; `bundle_adjust` keeps the camera centres (see there).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import EngineError
from ..projection import project
from .cameras import CameraRig


class TrackLoss(torch.nn.Module):
    """Reprojection of feature tracks through a `CameraRig`.

    `tracks` holds `xyz` (T, 3) starting world points, `track` (M,), `image` (M,) (index into the rig's images)
    and `pixels` (M, 2); observations in images outside `images` and points that are not finite are dropped, and
    tracks left with fewer than `min_views` observations go with them (a two-view track fits any cameras but for
    one epipolar constraint)."""

    def __init__(self, tracks: Any, images: Sequence[int], scale_px: float = 1.0,
                 dtype: torch.dtype = torch.float32, min_views: int = 3) -> None:
        super().__init__()
        keep_image = np.isin(np.asarray(tracks.image), np.asarray(list(images), dtype=np.int64))
        xyz = np.asarray(tracks.xyz, dtype=np.float64)
        track = np.asarray(tracks.track, dtype=np.int64)
        keep = keep_image & np.isfinite(xyz[track]).all(1) & np.isfinite(np.asarray(tracks.pixels)).all(1)
        counts = np.bincount(track[keep], minlength=len(xyz))
        keep &= counts[track] >= min_views
        used = np.unique(track[keep])
        if len(used) == 0:
            raise EngineError(f"no feature track is seen by {min_views} or more training images: nothing to "
                              f"constrain the cameras with (try more overlapping photos, or train without tracks)")
        remap = np.full(len(xyz), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        self.scale_px = float(scale_px)
        self.xyz = torch.nn.Parameter(torch.tensor(xyz[used], dtype=dtype))
        image = np.asarray(tracks.image, dtype=np.int64)[keep]
        self.register_buffer("track", torch.from_numpy(remap[track[keep]]))
        self.register_buffer("image", torch.from_numpy(image))
        self.register_buffer("pixels", torch.tensor(np.asarray(tracks.pixels)[keep], dtype=dtype))
        self.images = np.unique(image)

    @property
    def observations(self) -> int:
        return len(self.track)

    def _per_camera(self, rig: CameraRig):
        """(rig camera index, observation indices) of every camera that has observations."""
        which = torch.as_tensor(rig.image_cameras, device=self.image.device)[self.image]
        for index, cam in enumerate(rig.cameras):
            sel = torch.nonzero(which == index).flatten()
            if len(sel):
                yield index, cam, sel

    def triangulate(self, rig: CameraRig) -> torch.Tensor:
        """(T, 3) world points closest to their observation rays through the rig (least squares over the rays'
        perpendicular distances: sum_i (I - d_i d_i^T) (x - c_i) = 0), differentiable in the rig."""
        from ..projection import unproject_directions

        poses = rig.all_cam_from_world()
        rot = poses[:, :3, :3][self.image]
        centres = -torch.einsum("mji,mj->mi", rot, poses[:, :3, 3][self.image])
        rays = torch.zeros(len(self.pixels), 3, dtype=self.pixels.dtype, device=self.pixels.device)
        for index, cam, sel in self._per_camera(rig):
            d, _ = unproject_directions(cam.model, rig.camera_params(index), self.pixels[sel])
            rays = rays.index_copy(0, sel, d)
        d = torch.einsum("mji,mj->mi", rot, rays)  # world directions
        proj = torch.eye(3, dtype=d.dtype, device=d.device) - d[:, :, None] * d[:, None, :]
        n = len(self.xyz)
        a = torch.zeros(n, 3, 3, dtype=d.dtype, device=d.device).index_add(0, self.track, proj)
        b = torch.zeros(n, 3, dtype=d.dtype, device=d.device).index_add(
            0, self.track, (proj @ centres[:, :, None])[..., 0])
        return torch.linalg.solve(a + 1e-12 * torch.eye(3, dtype=d.dtype, device=d.device), b)

    def residuals(self, rig: CameraRig, xyz: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 2) pixel residuals (projection - observation) and (M,) validity (one projection per rig camera), of
        the track points or `xyz`."""
        xyz = self.xyz if xyz is None else xyz
        poses = rig.all_cam_from_world()[self.image]
        points = torch.einsum("mij,mj->mi", poses[:, :3, :3], xyz[self.track]) + poses[:, :3, 3]
        res = torch.zeros_like(self.pixels)
        valid = torch.zeros(len(self.pixels), dtype=torch.bool, device=self.pixels.device)
        for index, cam, sel in self._per_camera(rig):
            pixels, ok = project(cam.model, rig.camera_params(index), points[sel])
            res = res.index_copy(0, sel, pixels - self.pixels[sel])
            valid[sel] = ok & torch.isfinite(pixels).all(-1)
        return res, valid

    def forward(self, rig: CameraRig, xyz: torch.Tensor | None = None) -> torch.Tensor:
        """Mean Cauchy loss of the valid observations (px^2 units), of the track points or `xyz`."""
        res, ok = self.residuals(rig, xyz)
        s2 = self.scale_px ** 2
        r2 = torch.where(ok, res.square().sum(-1), torch.zeros_like(res[:, 0]))
        return s2 * torch.log1p(r2 / s2).sum() / ok.sum().clamp_min(1)

    @torch.no_grad()
    def rms(self, rig: CameraRig) -> float:
        """RMS reprojection error (px) of the valid observations."""
        res, ok = self.residuals(rig)
        return math.sqrt(float(res[ok].square().sum(-1).mean())) if bool(ok.any()) else float("nan")


def bundle_adjust(rig: CameraRig, tracks: TrackLoss, calibrate: Sequence[str], iterations: int = 200,
                  move_centres: bool = False) -> dict:
    """Minimise the track loss over the rig's calibrated quantities (L-BFGS with strong-Wolfe line search, float64
    for the duration), the track points being eliminated: each evaluation re-triangulates them from the current
    cameras (`TrackLoss.triangulate`, variable projection). Jointly optimising thousands of point coordinates with a
    few camera quantities is badly conditioned (focal crawls along a valley where the points compensate); without
    them the optimiser sees only the cameras. The track points end at the final triangulation. Returns the RMS
    reprojection error before and after.

    Unless `move_centres`, poses turn about their camera centres only (the twist's translation part stays zero):
    with free centres an orbit of cameras trades focal against distance and rotation against sideways motion,
    and fixed centres also fix the similarity gauge. The photometric training that follows refines whole poses."""
    groups = rig.parameter_groups()
    every = [p for params in groups.values() for p in params]
    params = [p for name, ps in groups.items() if name in calibrate for p in ps]
    dtype = rig.base.dtype
    rig.double()
    tracks.double()
    with torch.no_grad():
        tracks.xyz.copy_(tracks.triangulate(rig))
    before = tracks.rms(rig)
    saved = [p.requires_grad for p in every]
    for p in every:
        p.requires_grad_(any(p is q for q in params))
    if params:
        hook = None if move_centres or not rig.pose.requires_grad else rig.pose.register_hook(
            lambda g: torch.cat([g[:, :3], torch.zeros_like(g[:, 3:])], 1))
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, history_size=50, tolerance_grad=1e-12,
                                tolerance_change=1e-15, line_search_fn="strong_wolfe")
        snapshot = [p.detach().clone() for p in params]

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = tracks(rig, tracks.triangulate(rig))
            loss.backward()
            return loss

        try:
            opt.step(closure)
        finally:
            if hook is not None:
                hook.remove()
        if not all(torch.isfinite(p).all() for p in params):  # keep the start rather than a broken rig
            with torch.no_grad():
                for p, s in zip(params, snapshot):
                    p.copy_(s)
        for p in params:
            p.grad = None
    for p, flag in zip(every, saved):
        p.requires_grad_(flag)
    with torch.no_grad():
        tracks.xyz.copy_(tracks.triangulate(rig))
    after = tracks.rms(rig)
    rig.to(dtype)
    tracks.to(dtype)
    return {"rms_before_px": before, "rms_after_px": after, "observations": tracks.observations,
            "tracks": len(tracks.xyz)}
