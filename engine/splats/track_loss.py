"""Feature-track constraints for self-calibration: a reprojection loss over tracks and a track bundle adjustment.

Photometric gradients on cameras are biased while the splats are still poor (oversized early splats favour a
longer focal), and once the splats have fitted wrong cameras that state is a local minimum. Feature tracks give the
cameras an unbiased signal from the first step (the idea of the track-constrained 3DGS without intrinsics or
extrinsics): every track has a learnable world point, and its observations are reprojected through the learnable
rig (`cameras.CameraRig`: focal, principal point, distortion, pose - any camera model, through
`engine.projection.project`). The residuals enter a Cauchy (Lorentzian) loss, rho(r) = s^2 log(1 + |r|^2 / s^2),
s = `scale_px`, so mismatched tracks that survived verification lose their pull.

`bundle_adjust` minimises that loss over the cameras and the track points before the splats start (Levenberg-Marquardt
with the points eliminated, mismatches filtered between two adjustments; see there), so the splats fit corrected
cameras from step 1; `TrackLoss` then stays in the training loss with a weight that fades out
(`TrainConfig.track_weight`, `track_fade`). Only observations in training images are used, so held-out views stay
unseen. The similarity gauge (7 dof) is left free: the loss is invariant along it, so its gradient has no component
there, and the splats pin the frame during training; `bundle_adjust` keeps the camera centres (see there).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import EngineError
from ..projection import project
from .cameras import CameraRig


OUTLIER_SCALES = 4.0  # observations this many Cauchy scales off after the bundle adjustment are mismatches


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
        self.scale_px, self.min_views = float(scale_px), min_views
        self.xyz = torch.nn.Parameter(torch.tensor(xyz[used], dtype=dtype))
        self.register_buffer("ids", torch.from_numpy(used))  # (T,) index of each point's track in `tracks`
        image = np.asarray(tracks.image, dtype=np.int64)[keep]
        self.register_buffer("track", torch.from_numpy(remap[track[keep]]))
        self.register_buffer("image", torch.from_numpy(image))
        self.register_buffer("pixels", torch.tensor(np.asarray(tracks.pixels)[keep], dtype=dtype))
        self.images = np.unique(image)

    @property
    def observations(self) -> int:
        return len(self.track)

    def observation_state(self) -> dict[str, torch.Tensor]:
        """The observations and points (for checkpoints; `restore_observations` takes them back)."""
        return {"xyz": self.xyz.detach().cpu(), "ids": self.ids.cpu(), "track": self.track.cpu(),
                "image": self.image.cpu(), "pixels": self.pixels.cpu()}

    @torch.no_grad()
    def restore_observations(self, state: dict[str, torch.Tensor]) -> None:
        """Take the observations and points of `observation_state` (of any size; the points keep their
        Parameter)."""
        self.xyz.data = state["xyz"].to(self.xyz)
        for name in ("ids", "track", "image", "pixels"):
            setattr(self, name, state[name].to(getattr(self, name)))
        self.images = np.unique(self.image.cpu().numpy())

    @torch.no_grad()
    def drop_outliers(self, rig: CameraRig, limit_px: float) -> int:
        """Drop the observations reprojecting more than `limit_px` off (or not at all) through `rig`, and the tracks
        left with fewer than `min_views`; returns how many observations went. Matches that survived verification
        against poor starting cameras show up once the cameras are adjusted (COLMAP filters the same way between
        its bundle adjustments). The track points keep their Parameter (resized in place)."""
        res, ok = self.residuals(rig)
        keep = ok & (res.norm(dim=-1) <= limit_px)
        counts = torch.bincount(self.track[keep], minlength=len(self.xyz))
        keep &= counts[self.track] >= self.min_views
        dropped = int((~keep).sum())
        if dropped == 0:
            return 0
        used = torch.unique(self.track[keep])
        if len(used) == 0:
            raise EngineError(f"every feature track has observations more than {limit_px:.2g} px off: the tracks "
                              f"cannot constrain these cameras")
        remap = torch.full((len(self.xyz),), -1, dtype=torch.long, device=self.track.device)
        remap[used] = torch.arange(len(used), device=self.track.device)
        self.xyz.data, self.ids = self.xyz.data[used], self.ids[used]
        self.track, self.image, self.pixels = remap[self.track[keep]], self.image[keep], self.pixels[keep]
        self.images = np.unique(self.image.cpu().numpy())
        return dropped

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
    """Minimise the track loss over the rig's calibrated quantities and the track points (float64 for the
    duration), starting from the points triangulated through the current rig. Returns the RMS reprojection error
    before and after.

    Parametric cameras: Levenberg-Marquardt with the points eliminated by the Schur complement (`_schur_lm`), then
    the observations more than OUTLIER_SCALES Cauchy scales off are dropped (`TrackLoss.drop_outliers`) and the
    adjustment runs again. Lens fields, whose networks have far too many parameters for a dense reduced camera
    system: L-BFGS on the cameras alone with the points re-triangulated at every evaluation
    (`_variable_projection`); then the outliers are dropped in the same way, a field whose lens widened beyond its
    grid is refitted over a wider one (`_respan_fields_losing_rays`; the report's `fields_respanned`), each field's
    radial profile is held linear beyond the farthest ray its tracks observe through the adjusted lens
    (`_hold_fields_to_tracks`; the report's `field_reach_deg`; measured through the starting lens instead, 5-40 %
    narrower, the hold cut into the observed profile), and the adjustment runs again.

    Unless `move_centres`, poses turn about their camera centres only (the twist's translation part stays fixed):
    with free centres an orbit of cameras trades focal against distance and rotation against sideways motion,
    and fixed centres also fix the similarity gauge. The photometric training that follows refines whole poses."""
    groups = rig.parameter_groups()
    every = [p for params in groups.values() for p in params]
    dtype = rig.base.dtype
    rig.double()
    tracks.double()
    with torch.no_grad():
        tracks.xyz.copy_(tracks.triangulate(rig))
    before = tracks.rms(rig)
    saved = [p.requires_grad for p in every]
    dropped = 0
    reach, respanned = {}, []
    try:
        if "distortion" in calibrate and len(rig.fields):
            seen = _field_pixels_seen(rig)
            _variable_projection(rig, tracks, calibrate, iterations, move_centres)
            dropped = tracks.drop_outliers(rig, OUTLIER_SCALES * tracks.scale_px)
            respanned = _respan_fields_losing_rays(rig, seen)
            reach = _hold_fields_to_tracks(rig, tracks)  # where the adjusted lens puts the outermost rays
            _variable_projection(rig, tracks, calibrate, iterations, move_centres)
        else:
            _schur_lm(rig, tracks, calibrate, iterations, move_centres)
            dropped = tracks.drop_outliers(rig, OUTLIER_SCALES * tracks.scale_px)
            if dropped:
                _schur_lm(rig, tracks, calibrate, iterations, move_centres)
    finally:
        for p, flag in zip(every, saved):
            p.requires_grad_(flag)
    after = tracks.rms(rig)
    rig.to(dtype)
    tracks.to(dtype)
    return {"rms_before_px": before, "rms_after_px": after, "observations": tracks.observations,
            "tracks": len(tracks.xyz), "outliers_dropped": dropped,
            **({"field_reach_deg": reach} if reach else {}),
            **({"fields_respanned": respanned} if respanned else {})}


_RAY_SAMPLES = 33  # pixels per image axis checked for a ray (`_field_pixels_seen`)


@torch.no_grad()
def _field_pixels_seen(rig: CameraRig) -> dict[int, torch.Tensor]:
    """Per LENS_FIELD camera index: which of a _RAY_SAMPLES^2 grid of its image's pixels have a ray."""
    from ..projection import unproject_directions

    seen = {}
    for index, cam in enumerate(rig.cameras):
        if cam.model == "LENS_FIELD":
            u = torch.linspace(0.5, cam.width - 0.5, _RAY_SAMPLES, dtype=rig.base.dtype)
            v = torch.linspace(0.5, cam.height - 0.5, _RAY_SAMPLES, dtype=rig.base.dtype)
            pixels = torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2).to(rig.base.device)
            seen[index] = unproject_directions(cam.model, rig.camera_params(index), pixels)[1]
    return seen


def _respan_fields_losing_rays(rig: CameraRig, before: dict[int, torch.Tensor]) -> list[str]:
    """Refit (`CameraRig.respan_field`, CALIBRATION_MARGIN) the field of every camera whose adjusted lens lost rays
    at pixels that had one at the start: the lens widened beyond its grid (a start focal more than ~7 % long; the
    field reaches the rays beyond its grid by extrapolating its network). Returns those cameras' ids."""
    from ..lens_field import CALIBRATION_MARGIN

    after = _field_pixels_seen(rig)
    out, done = [], set()
    for index, seen in before.items():
        group = rig.group_of_camera[index]
        if group not in done and bool((seen & ~after[index]).any()):
            rig.respan_field(index, CALIBRATION_MARGIN)  # the group's one field
            done.add(group)
            out += [str(cam.id) for cam, g in zip(rig.cameras, rig.group_of_camera) if g == group]
    return out


@torch.no_grad()
def _hold_fields_to_tracks(rig: CameraRig, tracks: TrackLoss) -> dict[str, float]:
    """Hold each lens field's radial profile linear beyond the farthest ray (angle from the optical axis, through
    the current rig) of its cameras' track observations (`LensField.hold_radial_beyond`): SIFT tracks rarely reach
    a fisheye's periphery, where the profile must extrapolate. Returns that angle in degrees by camera id (cameras
    sharing intrinsics share a field, and its reach)."""
    from ..projection import unproject_directions

    theta: dict[str, float] = {}
    for index, cam, sel in tracks._per_camera(rig):
        group = str(rig.group_of_camera[index])
        if group not in rig.fields:
            continue
        rays, ok = unproject_directions(cam.model, rig.camera_params(index), tracks.pixels[sel])
        if bool(ok.any()):
            far = float(torch.arccos(rays[ok][:, 2].clamp(-1.0, 1.0)).max())
            theta[group] = max(theta.get(group, 0.0), far)
    for group, angle in theta.items():
        field = rig.fields[group]
        field.hold_radial_beyond((angle / field.radius) ** 2)
    return {str(cam.id): math.degrees(theta[str(group)]) for cam, group in zip(rig.cameras, rig.group_of_camera)
            if str(group) in theta}


def register_images(rig: CameraRig, tracks: TrackLoss, observed: Any, images: Sequence[int],
                    iterations: int = 100, min_observations: int = 8) -> dict:
    """Fit the poses of `images` (views kept out of `tracks`, e.g. held-out ones) to the adjusted track points:
    resection of each image's observations in `observed` (a `engine.tracks.Tracks` indexed like the tracks
    `tracks` was built from; observations of tracks it dropped are ignored), Levenberg-Marquardt on the rotations
    about the camera centres with the points and intrinsics fixed (`_schur_lm`, fixed_points), float64 for the
    duration. Images with fewer than `min_observations` usable observations keep their poses. Returns the
    registered images and the RMS reprojection error (px) of their observations before and after."""
    point_of = torch.full((len(np.asarray(observed.xyz)),), -1, dtype=torch.long)
    point_of[tracks.ids.cpu()] = torch.arange(len(tracks.ids))
    index = point_of[torch.as_tensor(np.asarray(observed.track))].numpy()
    obs_image = np.asarray(observed.image)
    use = (index >= 0) & np.isin(obs_image, np.asarray(list(images), dtype=np.int64))
    counts = np.bincount(obs_image[use], minlength=len(rig.poses0))
    use &= counts[obs_image] >= min_observations
    report = {"images": int((counts >= min_observations).sum()), "observations": int(use.sum())}
    if not use.any():
        return report
    xyz = tracks.xyz.detach().double().cpu().numpy()[index[use]]
    # one "track" per observation: every point is fixed, so none needs more than its own observation
    held = TrackLoss(SimpleNamespace(xyz=xyz, track=np.arange(len(xyz)), image=obs_image[use],
                                     pixels=np.asarray(observed.pixels)[use]), images, tracks.scale_px,
                     torch.float64, min_views=1).to(tracks.xyz.device)
    dtype = rig.base.dtype
    rig.double()
    try:
        report["rms_before_px"] = held.rms(rig)
        _schur_lm(rig, held, ["pose"], iterations, move_centres=False, fixed_points=True)
        report["rms_after_px"] = held.rms(rig)
    finally:
        rig.to(dtype)
    return report


def _variable_projection(rig: CameraRig, tracks: TrackLoss, calibrate: Sequence[str], iterations: int,
                         move_centres: bool) -> None:
    """L-BFGS with strong-Wolfe line search on the calibrated quantities, the track points eliminated: each
    evaluation re-triangulates them from the current cameras (`TrackLoss.triangulate`, variable projection), so
    the optimiser sees only the cameras (jointly optimising thousands of point coordinates with first-order steps
    crawls along valleys where the points compensate). The points end at the final triangulation."""
    groups = rig.parameter_groups()
    every = [p for params in groups.values() for p in params]
    params = [p for name, ps in groups.items() if name in calibrate for p in ps]
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
    with torch.no_grad():
        tracks.xyz.copy_(tracks.triangulate(rig))


def _schur_lm(rig: CameraRig, tracks: TrackLoss, calibrate: Sequence[str], iterations: int,
              move_centres: bool, fixed_points: bool = False) -> None:
    """Levenberg-Marquardt on the rig's parametric camera quantities and the track points together, the points
    eliminated from every step by the Schur complement (Triggs et al., Bundle Adjustment - A Modern Synthesis,
    sec. 6.1): the reduced camera system is small and dense, so a step costs little more than one Gauss-Newton
    solve in the cameras. The Cauchy loss enters as iteratively reweighted least squares (weights
    1 / (1 + |r|^2 / s^2), sec. 3.3); a step is kept only when it lowers the Cauchy cost. The Cauchy loss is not
    convex: residuals far beyond s barely pull, so from a poor start the cameras would settle where the
    observations they fit first keep them. Hence graduated non-convexity: s starts at the largest starting
    residual (where the loss is nearly quadratic for every observation) and halves down to `tracks.scale_px`, each
    stage starting from the last one's solution.

    The Jacobian comes from central differences in float64 (errors ~1e-9 of the entries), computed by colouring:
    an observation depends on the shared intrinsics, its own image's pose and its own point, so perturbing one
    twist component of every pose at once (or one coordinate of every point) gives that column block in two
    residual evaluations; each intrinsic scalar takes two more. With `fixed_points` the points stay where they are
    (resection: only the cameras move)."""
    scale = rig.scene_scale
    scalars = [(p, i) for name, p in (("focal", rig.log_focal), ("pp", rig.pp), ("distortion", rig.distortion))
               if name in calibrate for i in range(p.numel())]
    pose_dims = (list(range(6)) if move_centres else [0, 1, 2]) if "pose" in calibrate else []
    xyz = tracks.xyz.detach().clone()
    device = xyz.device  # the rig's and the tracks' (CPU or CUDA)
    views = torch.as_tensor(np.asarray(tracks.images), device=device)
    slot = torch.full((len(rig.poses0),), -1, dtype=torch.long, device=device)
    slot[views] = torch.arange(len(views), device=device)
    obs_slot = slot[tracks.image]
    n_glob = len(scalars)
    n_cam, m, n_pts = n_glob + len(views) * len(pose_dims), tracks.observations, len(tracks.xyz)
    variables = (rig.log_focal, rig.pp, rig.distortion, rig.pose)
    rows = torch.arange(m, device=device)
    dims = torch.tensor(pose_dims, dtype=torch.long, device=device)

    def cost(res: torch.Tensor, ok: torch.Tensor, s2: float) -> float:
        # an observation that does not project (behind the camera) costs as much as one 10 s off, so a step cannot
        # gain by pushing points out of view
        z = torch.where(ok, res.square().sum(-1), torch.full_like(res[:, 0], 100 * s2))
        return float(s2 * torch.log1p(z / s2).sum())

    def central(perturb, h: float) -> torch.Tensor:
        perturb(h)
        plus, _ = tracks.residuals(rig, xyz)
        perturb(-2 * h)
        minus, _ = tracks.residuals(rig, xyz)
        perturb(h)
        return (plus - minus) / (2 * h)

    def perturbations():
        for p, i in scalars:
            yield lambda d, p=p, i=i: p.view(-1)[i].add_(d)

    def jacobians() -> tuple[torch.Tensor, torch.Tensor]:
        """(m, 2, n_cam) camera and (m, 2, 3) point Jacobians of the residuals."""
        jc = torch.zeros(m, 2, n_cam, dtype=xyz.dtype, device=device)
        for k, perturb in enumerate(perturbations()):
            jc[:, :, k] = central(perturb, 1e-6)
        for k, dim in enumerate(pose_dims):
            jc[rows, :, n_glob + obs_slot * len(pose_dims) + k] = central(
                lambda d, dim=dim: rig.pose[:, dim].add_(d), 1e-6)
        jp = torch.stack([central(lambda d, dim=dim: xyz[:, dim].add_(d * scale), 1e-6) / scale
                          for dim in range(3)], -1)
        return jc, jp

    def step(res, ok, damping: float, s2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The damped Gauss-Newton step (cameras, points) with the points eliminated."""
        w = torch.where(ok, 1 / (1 + res.square().sum(-1) / s2), torch.zeros_like(res[:, 0]))[:, None, None]
        jc, jp = jacobians()
        jc, jp, r = jc * ok[:, None, None], jp * ok[:, None, None], (res * ok[:, None])[:, :, None]
        jct, jpt = jc.transpose(1, 2), jp.transpose(1, 2)
        u = torch.einsum("mai,maj->ij", jc * w, jc)
        g_c = torch.einsum("mai,mab->i", jc * w, r)
        def per_point(values: torch.Tensor) -> torch.Tensor:  # sums over each track's observations
            return torch.zeros(n_pts, *values.shape[1:], dtype=r.dtype, device=device).index_add_(
                0, tracks.track, values)

        v, cross, g_p = per_point(w * jpt @ jp), per_point(w * jct @ jp), per_point((w * jpt @ r)[..., 0])
        active = (torch.diagonal(u) > 0).nonzero().flatten()  # unused intrinsic scalars, unobserved images
        u = u + torch.diag(damping * torch.diagonal(u))
        v_inv = torch.linalg.inv(v + damping * torch.diag_embed(torch.diagonal(v, dim1=1, dim2=2))
                                 + 1e-12 * torch.eye(3, dtype=v.dtype, device=device))
        if fixed_points:  # resection: no point block to eliminate
            schur, rhs = u, -g_c
        else:
            y = cross @ v_inv
            schur = u - torch.einsum("tpa,tqa->pq", y, cross)
            rhs = -g_c + torch.einsum("tpa,ta->p", y, g_p)
        step_c = torch.zeros(n_cam, dtype=r.dtype, device=device)
        step_c[active] = torch.linalg.solve(schur[active][:, active], rhs[active])
        if fixed_points:
            return step_c, torch.zeros_like(g_p)
        step_p = (v_inv @ (-g_p - torch.einsum("tpa,p->ta", cross, step_c))[:, :, None])[..., 0]
        return step_c, step_p

    def apply(step_c: torch.Tensor, step_p: torch.Tensor) -> None:
        for k, (p, i) in enumerate(scalars):
            p.view(-1)[i] += step_c[k]
        if pose_dims:
            rig.pose[views[:, None], dims] += step_c[n_glob:].reshape(len(views), -1)
        xyz.add_(step_p)

    with torch.no_grad():
        res, ok = tracks.residuals(rig, xyz)
        s_start = float(res[ok].norm(dim=-1).max()) if bool(ok.any()) else tracks.scale_px
        stages = max(1, math.ceil(math.log2(max(s_start / tracks.scale_px, 1.0))) + 1)
        for stage in range(stages):
            s2 = (tracks.scale_px * 2.0 ** (stages - 1 - stage)) ** 2
            current, damping = cost(res, ok, s2), 1e-3
            for _ in range(iterations):
                step_c, step_p = step(res, ok, damping, s2)
                saved = [p.clone() for p in variables], xyz.clone()
                apply(step_c, step_p)
                trial_res, trial_ok = tracks.residuals(rig, xyz)
                trial = cost(trial_res, trial_ok, s2)
                if math.isfinite(trial) and trial < current:
                    done = current - trial <= 1e-10 * current
                    res, ok, current, damping = trial_res, trial_ok, trial, max(damping / 3, 1e-9)
                    if done:
                        break
                    continue
                for p, before in zip(variables, saved[0]):
                    p.copy_(before)
                xyz.copy_(saved[1])
                damping *= 4
                if damping > 1e8:
                    break
        tracks.xyz.copy_(xyz)
