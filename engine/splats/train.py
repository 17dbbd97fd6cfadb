"""Self-calibrating Gaussian splat training: splats, focal, principal point, lens distortion and poses together.

One step renders a batch of training views (projection `project`, compositor `raster_torch` or, on CUDA,
`raster_gsplat`), takes the L1 + D-SSIM loss against the photos and updates the Gaussians (one Adam per attribute,
3DGS learning rates) and the calibrated camera quantities (`cameras.CameraRig`, one Adam with warm-up schedules).
Density control is `densify`. When calibrating, feature tracks (`engine.tracks`) first bundle-adjust the cameras
and then stay in the loss with a fading weight (`track_loss`: photometric gradients alone are biased while the
splats are poor); each track also gets a small Gaussian centred on its point (`track_gaussians`), rendered with the
splats and kept small by a scale loss on the same fading schedule. Lenses one perspective view cannot cover render
through a cubemap (`cubemap`), and fisheye images are scored only where the lens sees. Every `test_every`-th image
is held out: with tracks, its pose is registered on the adjusted track points once the adjustment is done, and
evaluation first refines it against the frozen splats (so a view whose starting pose is off is not scored for
that), then reports PSNR and SSIM. Checkpoints (atomic, `torch.save`) hold
everything needed to resume; a non-finite loss stops training with `TrainingDiverged` before anything is
overwritten, and a cancel (KeyboardInterrupt / CancelledError) saves a checkpoint of the (healthy) current state
and re-raises.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..atomic import atomic_file
from ..bundle import Camera, Scene
from ..camera_models import get_model
from ..errors import BundleError, CancelledError, EngineError
from ..progress import Progress
from . import metrics
from .cameras import (CALIBRATABLE, LEARNABLE_DISTORTION, CameraRig, GroupAdam, Schedule, convert_camera,
                      lens_model)
from .densify import DensifyConfig, Densifier, GsplatDensifier
from .lpips import MIN_SIZE as MIN_LPIPS_SIZE, load_lpips
from .ply import Splats
from .project import project_gaussians
from .sh import C0, num_coefficients, sh_colors
from .track_gaussians import TrackGaussians
from .track_loss import TrackLoss, bundle_adjust, register_images

CHECKPOINT_VERSION = 4  # 4: lens fields' geometry (LensField.geometry: the track adjustment may change it)
TRACK_SCALE_PX = 1.0  # Cauchy scale of the track loss, in the photos' full-size pixels (SIFT: a few tenths of a px)
TRACK_TRUST_PX = 2.0  # a track bundle adjustment ending within this RMS (full-size px) is trusted: see
# TrainConfig.lr_intrinsics_after_tracks
MIN_TRACK_OBSERVATIONS = 10  # per training view on average, or tracks are not used (too weak to constrain); per
# view, for the adjustment's orientation of it to be kept (TrainConfig.lr_rotations_after_tracks)
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


class TrainingDiverged(EngineError):
    """The loss became NaN or infinite; nothing was written over earlier results."""


@dataclass
class TrainConfig:
    iterations: int = 7000
    calibrate: tuple[str, ...] = CALIBRATABLE  # any of focal, pp, pose, distortion
    lens: str = "keep"  # keep | pinhole | radial | opencv | fisheye | field | auto (cameras.lens_model)
    cubemap: str = "auto"  # auto (lenses cubemap.needs_cubemap says one face cannot cover) | always | never
    shared_intrinsics: bool = False
    device: str = "cpu"
    rasterizer: str = "auto"  # auto (gsplat on CUDA when installed, else torch) | torch | gsplat
    sh_degree: int = 3
    sh_every: int = 1000  # one more SH degree becomes active every this many steps
    batch_size: int = 1  # views per step
    test_every: int = 8  # every n-th image is held out for evaluation (0: none)
    eval_every: int = 1000  # evaluate every n steps (and at the end); 0: only at the end
    eval_pose_steps: int = 100  # pose refinement steps per held-out view before scoring it
    eval_pose_lr: float = 2e-3
    random_init: int = 20000  # splats placed in the cameras' frusta when the bundle has no points
    init_opacity: float = 0.5  # 3DGS starts at 0.1; 0.5 covers the image from the first step (short runs)
    ssim_weight: float = 0.2
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    downscale: int = 0  # train on photos this many times smaller (0: auto, `training_downscale`); tracks use full size
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10  # training-curve sampling
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    # Gaussian learning rates (3DGS); means in units of the scene scale, decaying exponentially to x0.01
    lr_means: float = 1.6e-4
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    # camera learning rates: focal as log-scale, pp in image widths, distortion in its own units, pose as a twist
    # (radians, scene-scale units); each starts at calib_start, ramps up over calib_ramp steps, then decays
    lr_focal: float = 5e-3
    lr_pp: float = 5e-4
    lr_distortion: float = 2e-3
    lr_pose: float = 2e-3
    camera_every: int = 0  # camera steps accumulate gradients over this many steps (0: one pass over the views)
    calib_start: int = 700  # calibration waits until the splats render the photos roughly (early renders are
    calib_ramp: int = 350  # biased: e.g. too-large initial splats favour a longer focal)
    calib_final: float = 0.1
    # feature tracks (`track_loss`): auto = when calibrating (cameras are first bundle-adjusted on the tracks, then
    # the track loss stays in the training loss with a weight fading linearly to track_final over track_fade steps)
    tracks: str = "auto"  # auto | on | off
    track_ba_iterations: int = 300
    track_weight: float = 0.1  # per px^2 of Cauchy loss, against the photometric loss (bench_splats: 1e-3 and 1e-2
    # let the photometric loss pull focal further from the bundle adjustment's result)
    track_fade: int = 0  # 0: the whole run
    track_final: float = 0.1
    lr_tracks: float = 1e-3  # track points, in units of the scene scale
    # factor on the focal, pp and distortion learning rates once the track bundle adjustment has fitted (RMS within
    # TRACK_TRUST_PX); 0: the adjustment's intrinsics are kept. Tracks measured on the full-size photos pin the
    # intrinsics better than photometric gradients at the training size, which are biased
    # while the splats are poor: started AT the true lens, they move a 180 deg fisheye 1 deg within 100 steps of the
    # calibration start (0.15 deg when calibration starts at half the run); bench_splats: full rates take focal from
    # the adjustment's 0.3 % error to 0.9 %; bench_lens: 0.1x triples the lens error the adjustment left
    lr_intrinsics_after_tracks: float = 0.0
    # the same for the orientations (the rotation part of the pose twists) of the views the adjustment fitted on
    # MIN_TRACK_OBSERVATIONS or more observations; camera centres, which it keeps fixed, learn at the full pose
    # rate. bench_splats: rotations 0.07-0.09 deg after the adjustment, 0.14 deg after 1000 photometric steps at
    # full rate, 0.12 at 0.1; held-out PSNR unchanged at 0 (from focal +20 % / rotations 2 deg the adjustment ends
    # at 0.19 deg, which full rate takes to 0.13: photometric training at 128x96 holds ~0.135 deg)
    lr_rotations_after_tracks: float = 0.0
    # track Gaussians (`track_gaussians`, only with tracks): one splat per track centred on its point, never
    # densified or pruned, kept within SCALE_BOUND_PX (2) pixel footprints by a scale loss weighted scale_weight per
    # pixel of excess, fading like the track loss (0: no scale loss)
    track_gaussians: bool = True
    scale_weight: float = 0.1


@dataclass
class Rendered:
    image: torch.Tensor  # (H, W, 3)
    alpha: torch.Tensor  # (H, W, 1)
    valid: torch.Tensor | None  # (H, W) pixels the lens sees (None: all)
    views: list  # (Projected, (height, width)) of each rasterised view: the image, or each cubemap face


@dataclass
class TrainResult:
    splats: Splats
    cameras: dict[int, Camera]  # bundle camera id -> trained camera (possibly in a converted model)
    poses: dict[int, np.ndarray]  # image id -> cam_from_world
    lens_fields: dict[int, Any]  # bundle camera id -> trained LensField network (LENS_FIELD cameras)
    curves: dict[str, list[dict[str, float]]]  # "train" and "eval" rows
    metrics: dict[str, Any]  # final evaluation and run facts
    notes: list[str]  # camera conversions and other decisions worth reporting


# --- inputs --------------------------------------------------------------------------------------------------------

def load_photos(scene: Scene) -> list[np.ndarray]:
    """The photos of all images as (H, W, 3) uint8, each checked against its camera's size."""
    from ..calibrate.image_io import load_image

    if not scene.images:
        raise BundleError("the bundle has no images: nothing to train on")
    photos = []
    for image in scene.images:
        if image.path is None:
            raise BundleError(f"image {image.name!r} has no photo (path is null); splat training needs every photo")
        if not Path(image.path).is_file():
            raise BundleError(f"image {image.name!r}: photo {image.path} not found")
        rgb = load_image(image.path).rgb
        cam = scene.camera_of(image)
        if rgb.shape[:2] != (cam.height, cam.width):
            raise BundleError(f"image {image.name!r}: photo {image.path} is {rgb.shape[1]}x{rgb.shape[0]} but its "
                              f"camera {cam.id} is {cam.width}x{cam.height}")
        photos.append(rgb)
    return photos


MAX_TRAINING_WIDTH = 1600  # auto downscale: 3DGS's rule (its loader shrinks wider photos to 1.6K)


def training_downscale(scene: Scene, downscale: int) -> int:
    """The integer factor photos are shrunk by for training: `downscale` when given, else (0) the smallest that
    brings the widest camera to MAX_TRAINING_WIDTH or less."""
    if downscale < 0:
        raise EngineError(f"downscale must be a positive integer factor (or 0 for automatic), got {downscale}")
    if downscale:
        return int(downscale)
    return max(1, math.ceil(max(cam.width for cam in scene.cameras.values()) / MAX_TRAINING_WIDTH))


def scaled_camera(cam: Camera, factor: float, width: int, height: int) -> Camera:
    """`cam` for images `factor` times larger (smaller for factor < 1), of size `width` x `height`: focal length and
    principal point scale, distortion (in normalised coordinates) does not. Exact in COLMAP's pixel convention
    (pixel centres at +0.5), where image coordinates scale with the image."""
    if cam.model == "LENS_FIELD":  # fx, fy, cx, cy, then the grid (radius, size, displacements: normalised)
        params = [float(v) * factor for v in cam.params[:4]] + [float(v) for v in cam.params[4:]]
    else:  # COLMAP order: SIMPLE_* models have one focal
        fx, fy, cx, cy, extra = cam.split()
        params = get_model(cam.model).join(fx * factor, fy * factor, cx * factor, cy * factor, extra)
    return dataclasses.replace(cam, width=width, height=height, params=params)


def downscale_scene(scene: Scene, photos: list[np.ndarray], factor: int) -> tuple[Scene, list[np.ndarray]]:
    """`scene` and its photos at 1/`factor` size: each photo cropped at the right and bottom to a multiple of
    `factor` (which leaves the intrinsics unchanged) and area-averaged, each camera scaled (`scaled_camera`)."""
    import cv2

    if factor == 1:
        return scene, photos
    small = copy.copy(scene)
    small.cameras = {}
    for cam_id, cam in scene.cameras.items():
        if cam.width < factor or cam.height < factor:
            raise EngineError(f"camera {cam_id}: {cam.width}x{cam.height} photos cannot be shrunk {factor} times")
        small.cameras[cam_id] = scaled_camera(cam, 1 / factor, cam.width // factor, cam.height // factor)
    out = []
    for photo in photos:
        h, w = (photo.shape[0] // factor) * factor, (photo.shape[1] // factor) * factor
        out.append(cv2.resize(photo[:h, :w], (w // factor, h // factor), interpolation=cv2.INTER_AREA))
    return small, out


def training_cameras(scene: Scene, lens: str, calibrate: tuple[str, ...]
                     ) -> tuple[list[Camera], list[str], dict[int, Any]]:
    """The scene's cameras in their training models (`lens`), notes on each conversion, and the lens-field networks
    fitted for cameras converted to LENS_FIELD (by index into the list; over a grid enlarged by CALIBRATION_MARGIN
    when focal or distortion is calibrated, so the field reaches rays the starting camera does not)."""
    from ..lens_field import CALIBRATION_MARGIN, FIT_MARGIN, field_camera

    unknown = set(calibrate) - set(CALIBRATABLE)
    if unknown:
        raise EngineError(f"cannot calibrate {', '.join(sorted(unknown))}; choose from {', '.join(CALIBRATABLE)}")
    cameras, notes, fields = [], [], {}
    for cam in scene.cameras.values():
        target = lens_model(cam, lens)
        if target != cam.model:
            if target == "LENS_FIELD":
                margin = CALIBRATION_MARGIN if {"focal", "distortion"} & set(calibrate) else FIT_MARGIN
                cam_new, fields[len(cameras)], rms = field_camera(cam, margin=margin)
            else:
                cam_new, rms = convert_camera(cam, target)
            notes.append(f"camera {cam.id}: {cam.model} converted to {target} "
                         f"({'exact' if rms < 1e-6 else f'least-squares fit, RMS {rms:.3f} px'})")
            cam = cam_new
        if "distortion" in calibrate and cam.model not in LEARNABLE_DISTORTION:
            raise EngineError(
                f"camera {cam.id}: the trainer cannot learn {cam.model} distortion (learnable: "
                f"{', '.join(LEARNABLE_DISTORTION)}); pass --lens opencv or --lens fisheye to convert it, or leave "
                f"distortion out of --calibrate to keep it fixed")
        cameras.append(cam)
    return cameras, notes, fields


def scene_scale(poses: np.ndarray, points: np.ndarray | None) -> float:
    """3DGS's camera extent: 1.1 x the largest distance of a camera centre from their mean (or of the points
    from theirs, for a single camera position)."""
    centres = -np.einsum("nji,nj->ni", poses[:, :3, :3], poses[:, :3, 3])
    radius = float(np.linalg.norm(centres - centres.mean(0), axis=1).max())
    if radius < 1e-6 and points is not None and len(points):
        radius = float(np.linalg.norm(points - points.mean(0), axis=1).max())
    return 1.1 * radius if radius > 1e-6 else 1.0


def _nearest_neighbour_scale(xyz: np.ndarray) -> np.ndarray:
    """Per point, the RMS distance to its 3 nearest neighbours (3DGS's initial splat size)."""
    import cv2

    pts = np.ascontiguousarray(xyz, dtype=np.float32)
    if len(pts) < 4:
        return np.full(len(pts), 0.01, dtype=np.float32)
    cv2.setRNGSeed(0)  # FLANN's randomised trees: the same neighbours every run
    index = cv2.flann_Index(pts, dict(algorithm=1, trees=4))  # FLANN_INDEX_KDTREE
    _, d2 = index.knnSearch(pts, 4, params=dict(checks=64))  # squared distances; first is the point itself
    return np.sqrt(np.maximum(d2[:, 1:].mean(1), 1e-14)).astype(np.float32)


def initial_splats(scene: Scene, rig: CameraRig, config: TrainConfig, rng: np.random.Generator) -> Splats:
    """Splats at the bundle's points (colour from the points), or `random_init` grey splats at random depths in
    the cameras' frusta when there are none."""
    if scene.points is not None and len(scene.points):
        xyz = scene.points.xyz.astype(np.float32)
        rgb = scene.points.rgb.astype(np.float32) / 255.0
    else:
        from ..projection import unproject

        n = config.random_init
        which = rng.integers(0, len(scene.images), n)
        xyz = np.zeros((n, 3), np.float32)
        for i in np.unique(which):
            sel = np.nonzero(which == i)[0]
            cam, params = rig.image_camera(int(i))
            pix = rng.uniform([0, 0], [cam.width, cam.height], (len(sel), 2))
            rays, valid = unproject(cam.model, params.detach().double().cpu(), torch.from_numpy(pix))
            rays = torch.where(valid[:, None], rays, torch.tensor([0.0, 0.0, 1.0], dtype=rays.dtype)).numpy()
            depth = rng.uniform(0.05, 1.0, len(sel)) * rig.scene_scale
            pose = rig.poses0[int(i)].double().cpu().numpy()
            cam_pts = rays * depth[:, None]
            xyz[sel] = (cam_pts - pose[:3, 3]) @ pose[:3, :3]  # R^T (p - t)
        rgb = np.full((n, 3), 0.5, np.float32) + rng.normal(0, 0.05, (n, 3)).astype(np.float32)
    n = len(xyz)
    k = num_coefficients(config.sh_degree) - 1
    opacity = config.init_opacity
    return Splats(means=xyz, quats=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)),
                  log_scales=np.log(_nearest_neighbour_scale(xyz))[:, None].repeat(3, 1),
                  opacity_logits=np.full(n, math.log(opacity / (1 - opacity))),
                  sh0=(rgb - 0.5) / C0, shN=np.zeros((n, k, 3)))


# --- the trainer ---------------------------------------------------------------------------------------------------

class Trainer:
    """The state of one training run: splats, cameras, optimisers, density control, curves; `train` drives it.
    `photos` (H, W, 3) uint8 per image default to the bundle's files."""

    def __init__(self, scene: Scene, config: TrainConfig, checkpoint: Path | None = None,
                 photos: list[np.ndarray] | None = None) -> None:
        self.config = config
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("--device cuda: this torch has no CUDA device available")
        if config.iterations < 1:
            raise EngineError(f"iterations must be at least 1, got {config.iterations}")
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        full_scene, full_photos = scene, load_photos(scene) if photos is None else photos
        if config.tracks not in ("auto", "on", "off"):
            raise EngineError(f"tracks must be auto, on or off, got {config.tracks!r}")
        for what in ("intrinsics", "rotations"):
            factor = getattr(config, f"lr_{what}_after_tracks")
            if not factor >= 0:
                raise EngineError(f"the learning-rate factor for {what} after tracks must be 0 or more, got {factor}")
        self.full_scene, self.downscale = full_scene, training_downscale(full_scene, config.downscale)
        self.scene, photos = downscale_scene(full_scene, full_photos, self.downscale)
        scene = self.scene
        self.targets = [torch.tensor(p, dtype=torch.float32, device=self.device) / 255.0 for p in photos]
        if config.cubemap not in ("auto", "always", "never"):
            raise EngineError(f"cubemap must be auto, always or never, got {config.cubemap!r}")
        cameras, self.notes, fields = training_cameras(scene, config.lens, tuple(config.calibrate))
        if self.downscale > 1:
            self.notes.append(f"training on photos {self.downscale}x smaller (feature tracks use the full size)")
        index = {cam.id: i for i, cam in enumerate(cameras)}
        poses = np.stack([im.cam_from_world for im in scene.images])
        points = scene.points.xyz if scene.points is not None else None
        self.rig = CameraRig(cameras, [index[im.camera_id] for im in scene.images], poses,
                             scene_scale(poses, points), shared=config.shared_intrinsics,
                             fields=fields).to(self.device)
        self.face_sizes = self._cubemap_faces()
        self.lens_masks = self._lens_masks()
        n = len(scene.images)
        self.test_ids = [i for i in range(n) if config.test_every > 0 and n > 1 and i % config.test_every == 0]
        self.train_ids = [i for i in range(n) if i not in self.test_ids]
        if not self.train_ids:
            raise EngineError(f"test_every={config.test_every} holds out all {n} images; nothing left to train on")
        self.background = torch.tensor(config.background, dtype=torch.float32, device=self.device)
        self.lpips = load_lpips()
        if self.lpips is not None:
            self.lpips.to(self.device)
            self.notes.append(f"held-out LPIPS from {', '.join(str(p) for p in self.lpips.sources)}")
        self.rasterize = self._pick_rasterizer()
        self.set_splats(initial_splats(scene, self.rig, config, self.rng))
        self.camera_optimizer = self._camera_optimizer()
        self.tracks, self.found_tracks = self._track_loss(full_photos)
        self.track_optimizer = None if self.tracks is None else torch.optim.Adam([self.tracks.xyz], lr=0.0)
        self.track_gaussians = None if self.tracks is None or not config.track_gaussians else TrackGaussians(
            self.tracks, self.rig, self.targets, config.sh_degree, config.init_opacity)
        if self.track_gaussians is not None:
            self.notes.append(f"{len(self.track_gaussians)} track Gaussians, one on each track point")
        self.track_report: dict[str, Any] = {}
        use_gsplat = self.rasterize.__module__.endswith("raster_gsplat")
        # 3DGS refines during the first half of its run (15k of 30k steps): splats split in the last steps would be
        # evaluated and saved before they fit anything
        densify = dataclasses.replace(config.densify, stop=min(config.densify.stop, config.iterations // 2))
        self.densifier = (GsplatDensifier if use_gsplat else Densifier)(densify, self.rig.scene_scale)
        self.step = 0
        self.order: list[int] = []
        self.curves: dict[str, list[dict[str, float]]] = {"train": [], "eval": []}
        self.last_eval: dict[str, Any] = {}

    # -- setup ----------------------------------------------------------------------------------------------------
    def _pick_rasterizer(self) -> Callable:
        from . import raster_gsplat, raster_torch

        choice = self.config.rasterizer
        if choice == "gsplat" or (choice == "auto" and self.device.type == "cuda" and raster_gsplat.available()):
            if not raster_gsplat.available() or self.device.type != "cuda":
                raise EngineError("the gsplat rasterizer needs a CUDA device and gsplat installed "
                                  "(pip install -r requirements-gpu.txt)")
            return raster_gsplat.rasterize
        if choice not in ("auto", "torch", "gsplat"):
            raise EngineError(f"unknown rasterizer {choice!r}; choose auto, torch or gsplat")
        return raster_torch.rasterize

    def _cubemap_faces(self) -> list[int | None]:
        """Per rig camera: the cubemap face size when it renders through a cubemap (fixed from the starting lens so
        it never jumps during training), else None."""
        from .cubemap import default_face_size, needs_cubemap

        sizes = []
        for i, cam in enumerate(self.rig.cameras):
            params = self.rig.camera_params(i).detach().double().cpu()
            use = self.config.cubemap == "always" or (
                self.config.cubemap == "auto" and needs_cubemap(cam.model, params, cam.width, cam.height))
            sizes.append(default_face_size(cam.model, params, cam.width, cam.height) if use else None)
            if use:
                self.notes.append(f"camera {cam.id}: rendered through a cubemap ({sizes[-1]} px faces)")
        return sizes

    def set_splats(self, splats: Splats) -> None:
        """Replace the (ordinary) splats, e.g. to score splats trained elsewhere on this scene's views; their
        optimiser state starts afresh."""
        self.params = self._gaussian_params(splats)
        self.optimizers = {name: torch.optim.Adam([p], lr=0.0, eps=1e-15) for name, p in self.params.items()}

    def _gaussian_params(self, splats: Splats) -> dict[str, torch.nn.Parameter]:
        values = {"means": splats.means, "scales": splats.log_scales, "quats": splats.quats,
                  "opacities": splats.opacity_logits, "sh0": splats.sh0, "shN": splats.shN}
        return {k: torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(v)).to(self.device, torch.float32))
                for k, v in values.items()}

    def _camera_optimizer(self) -> torch.optim.Optimizer | None:
        calibrate = set(self.config.calibrate)
        groups = []
        for what, params in self.rig.parameter_groups().items():
            for param in params:
                param.requires_grad_(what in calibrate)
            if what in calibrate and params:
                groups.append({"params": params, "lr": 0.0, "name": what})
        return GroupAdam(groups, lr=0.0) if groups else None

    def _track_loss(self, photos: list[np.ndarray]) -> tuple[TrackLoss | None, Any]:
        """The loss over the feature tracks of the full-size photos in the training views (`engine.tracks`; points
        triangulated with the bundle's cameras, re-triangulated through the rig by `bundle_adjust`), and those
        tracks in every view (`Tracks`: held-out views are registered on them), pixels at the training size."""
        if self.config.tracks == "off" or self.camera_optimizer is None:  # tracks only serve calibration
            return None, None
        from ..tracks import find_tracks

        try:
            tracks = find_tracks(self.full_scene, photos)
            tracks = dataclasses.replace(tracks, pixels=tracks.pixels / self.downscale)
        except EngineError as exc:
            if self.config.tracks == "on":
                raise
            self.notes.append(f"no feature tracks ({exc}); calibrating from the photometric loss alone")
            return None, None
        try:
            loss = TrackLoss(tracks, self.train_ids, scale_px=TRACK_SCALE_PX / self.downscale).to(self.device)
            if loss.observations < MIN_TRACK_OBSERVATIONS * len(self.train_ids):
                raise EngineError(f"only {loss.observations} observations of feature tracks seen by 3 or more "
                                  f"training views ({MIN_TRACK_OBSERVATIONS} per view needed); photos too small or "
                                  f"plain?")
        except EngineError as exc:
            if self.config.tracks == "on":
                raise
            self.notes.append(f"no feature tracks ({exc}); calibrating from the photometric loss alone")
            return None, None
        self.notes.append(f"{len(loss.xyz)} feature tracks with {loss.observations} observations in the training "
                          f"views constrain the cameras")
        return loss, tracks

    def calibrate_from_tracks(self) -> dict[str, Any]:
        """Bundle-adjust the calibrated camera quantities on the feature tracks (before the splats train), then
        register the held-out views on the adjusted points (`register_images`: their rotations; the photometric
        refinement before scoring them starts there, so a poor starting pose cannot trap it)."""
        if self.tracks is None or self.config.track_ba_iterations <= 0:
            return {}
        calibrate = [g["name"] for g in self.camera_optimizer.param_groups]
        self.track_report = bundle_adjust(self.rig, self.tracks, calibrate, self.config.track_ba_iterations)
        if self.test_ids:
            self.track_report["held_out"] = register_images(self.rig, self.tracks, self.found_tracks, self.test_ids,
                                                            self.config.track_ba_iterations)
        if self.track_gaussians is not None:  # on the adjusted points, outliers dropped: one per remaining track
            self.track_gaussians = TrackGaussians(self.tracks, self.rig, self.targets, self.config.sh_degree,
                                                  self.config.init_opacity)
        return self.track_report

    def track_fade(self, step: int) -> float:
        """Factor on the track and scale losses at `step`: 1 fading linearly to track_final over track_fade."""
        c = self.config
        fade = c.track_fade if c.track_fade > 0 else c.iterations
        return 1 - (1 - c.track_final) * min(1.0, step / fade)

    def track_weight(self, step: int) -> float:
        return self.config.track_weight * self.track_fade(step)

    def _schedules(self) -> dict[str, Schedule]:
        c = self.config
        end = c.iterations
        gauss = {name: Schedule(lr, 0, 0, end, 1.0) for name, lr in
                 (("scales", c.lr_scales), ("quats", c.lr_quats), ("opacities", c.lr_opacities),
                  ("sh0", c.lr_sh0), ("shN", c.lr_shN))}
        gauss["means"] = Schedule(c.lr_means * self.rig.scene_scale, 0, 0, end, 0.01)
        damp = c.lr_intrinsics_after_tracks if self.tracks_trusted() else 1.0
        for what, lr in (("focal", c.lr_focal * damp), ("pp", c.lr_pp * damp),
                         ("distortion", c.lr_distortion * damp), ("pose", c.lr_pose)):
            gauss[what] = Schedule(lr, c.calib_start, c.calib_ramp, end, c.calib_final)
        return gauss

    def rotations_from_tracks(self) -> torch.Tensor:
        """(n_images,) bool: the views whose orientations the track bundle adjustment fitted on at least
        MIN_TRACK_OBSERVATIONS observations (the others learn theirs photometrically at the full rate)."""
        counts = torch.bincount(self.tracks.image, minlength=len(self.scene.images))
        return counts >= MIN_TRACK_OBSERVATIONS

    def tracks_trusted(self) -> bool:
        """Whether the track bundle adjustment ran and fits its tracks within TRACK_TRUST_PX RMS."""
        rms = self.track_report.get("rms_after_px", math.inf)  # training pixels
        return rms * self.downscale <= TRACK_TRUST_PX

    # -- rendering ------------------------------------------------------------------------------------------------
    def render(self, image: int, xi: torch.Tensor | None = None, sh_degree: int | None = None) -> Rendered:
        """Render image `image`, optionally with pose twist `xi` instead of the rig's; through a cubemap when its
        camera needs one (`_cubemap_faces`)."""
        from .cubemap import render_cubemap

        p = self.all_params()
        index = self.rig.image_cameras[image]
        cam, params = self.rig.image_camera(image)
        pose = self.rig.cam_from_world(image, xi)
        opacities = torch.sigmoid(p["opacities"])
        centre = -pose[:3, :3].T @ pose[:3, 3]
        degree = self.active_sh_degree() if sh_degree is None else sh_degree
        colors = sh_colors(p["sh0"], p["shN"], degree, p["means"] - centre)
        if self.face_sizes[index] is not None:
            out = render_cubemap(p["means"], p["quats"], p["scales"], opacities, colors, cam.model, params, pose,
                                 cam.width, cam.height, self.rasterize, self.background,
                                 face_size=self.face_sizes[index])
            views = [(pr, (w.height, w.width)) for pr, w in zip(out.projected, out.windows)]
            return Rendered(out.image, out.alpha, out.valid, views)
        projected = project_gaussians(p["means"], p["quats"], p["scales"], opacities, cam.model, params, pose,
                                      cam.width, cam.height)
        image_out, alpha = self.rasterize(projected, colors, opacities, cam.width, cam.height, self.background)
        return Rendered(image_out, alpha, self.lens_masks[index], [(projected, (cam.height, cam.width))])

    def _lens_masks(self) -> list[torch.Tensor | None]:
        """Per rig camera: the pixels its (starting) lens sees, for fisheye models (None: every pixel)."""
        from ..camera_models import get_model
        from ..projection import unproject_directions

        masks = []
        for i, cam in enumerate(self.rig.cameras):
            if not get_model(cam.model).fisheye:
                masks.append(None)
                continue
            v, u = torch.meshgrid(torch.arange(cam.height, dtype=torch.float64) + 0.5,
                                  torch.arange(cam.width, dtype=torch.float64) + 0.5, indexing="ij")
            params = self.rig.camera_params(i).detach().double().cpu()
            _, ok = unproject_directions(cam.model, params, torch.stack([u, v], -1))
            masks.append(None if bool(ok.all()) else ok.to(self.device))
        return masks

    def _target(self, image: int, rendered: Rendered) -> torch.Tensor:
        """The photo, with pixels outside the lens's view replaced by the render (no loss there)."""
        target = self.targets[image]
        if rendered.valid is None:
            return target
        return torch.where(rendered.valid[..., None], target, rendered.image.detach())

    @staticmethod
    def _psnr(rendered: Rendered, target: torch.Tensor) -> float:
        """PSNR over the pixels the lens sees."""
        image = rendered.image.detach()
        if rendered.valid is not None:
            return metrics.psnr(image[rendered.valid], target[rendered.valid])
        return metrics.psnr(image, target)

    def _scores(self, rendered: Rendered, target: torch.Tensor) -> dict[str, float]:
        """PSNR over the pixels the lens sees, SSIM, and LPIPS when its weights are on this machine (outside the
        lens the target is the render, `_target`) and the image is large enough for its network."""
        image = rendered.image.detach().clamp(0, 1)
        scores = {"psnr": self._psnr(rendered, target), "ssim": float(metrics.ssim(image, target))}
        if self.lpips is not None and min(image.shape[:2]) >= MIN_LPIPS_SIZE:
            scores["lpips"] = float(self.lpips(image, torch.where(rendered.valid[..., None], target, image)
                                               if rendered.valid is not None else target))
        return scores

    def camera_every(self) -> int:
        """Steps per camera update: shared intrinsics need gradients from many views to be more than noise."""
        if self.config.camera_every > 0:
            return self.config.camera_every
        return max(1, math.ceil(len(self.train_ids) / max(self.config.batch_size, 1)))

    def active_sh_degree(self) -> int:
        return min(self.config.sh_degree, self.step // max(self.config.sh_every, 1))

    def gaussian_count(self) -> int:
        """Splats rendered and written: the densified ones and the track Gaussians."""
        return len(self.params["means"]) + (len(self.track_gaussians) if self.track_gaussians is not None else 0)

    def all_params(self) -> dict[str, torch.Tensor]:
        """Every splat's attributes: `params` (densified), then the track Gaussians (means: the track points)."""
        if self.track_gaussians is None:
            return self.params
        extra = self.track_gaussians.attributes()
        return {k: torch.cat([v, extra[k]]) for k, v in self.params.items()}

    def _gaussian_optimizers(self) -> list[tuple[str, torch.optim.Optimizer]]:
        """(attribute name, Adam) of the densified splats and of the track Gaussians."""
        out = list(self.optimizers.items())
        return out + (list(self.track_gaussians.optimizers.items()) if self.track_gaussians is not None else [])

    # -- one step -------------------------------------------------------------------------------------------------
    def _next_batch(self) -> list[int]:
        batch = []
        while len(batch) < min(self.config.batch_size, len(self.train_ids)):
            if not self.order:
                self.order = [int(i) for i in self.rng.permutation(self.train_ids)]
            batch.append(self.order.pop())
        return batch

    def train_step(self, loss_fn: Callable = metrics.photometric_loss) -> dict[str, float]:
        step = self.step + 1
        schedules = self._schedules()
        for name, opt in self._gaussian_optimizers():
            opt.param_groups[0]["lr"] = schedules[name](step)
        if self.camera_optimizer is not None:
            for group in self.camera_optimizer.param_groups:
                group["lr"] = schedules[group["name"]](step)
        batch = self._next_batch()
        total, psnrs, views = 0.0, [], []
        for image in batch:
            rendered = self.render(image)
            for projected, _ in rendered.views:
                projected.means2d.retain_grad()
            target = self._target(image, rendered)
            loss = loss_fn(rendered.image, target, self.config.ssim_weight) / len(batch)
            if not torch.isfinite(loss):
                where = f"last good checkpoint {self.checkpoint} kept" if self.checkpoint is not None and \
                    self.checkpoint.is_file() else "no checkpoint was written yet"
                raise TrainingDiverged(f"training diverged at step {step} (image {self.scene.images[image].name!r}): "
                                       f"the loss is {float(loss.detach())}; {where}; nothing else was written")
            loss.backward()
            total += float(loss.detach())
            psnrs.append(self._psnr(rendered, self.targets[image]))
            views += rendered.views
        if self.tracks is not None:
            self.track_optimizer.param_groups[0]["lr"] = schedules["means"](step) / self.config.lr_means * \
                self.config.lr_tracks
            tg = self.track_gaussians
            loss = self.track_weight(step) * self.tracks(self.rig, None if tg is None else tg.anchored_points())
            if tg is not None and self.config.scale_weight > 0:
                loss = loss + self.config.scale_weight * self.track_fade(step) * tg.scale_loss()
            loss.backward()
            self.track_optimizer.step()
            self.track_optimizer.zero_grad(set_to_none=True)
        for _, opt in self._gaussian_optimizers():
            opt.step()
        if self.camera_optimizer is not None and step % self.camera_every() == 0:
            grad = self.rig.pose.grad
            if grad is not None and self.tracks_trusted():  # the twist's rotation part (cameras.se3_exp)
                grad[self.rotations_from_tracks(), :3] *= self.config.lr_rotations_after_tracks
            if any(g["lr"] > 0 for g in self.camera_optimizer.param_groups):
                self.camera_optimizer.step()
            self.camera_optimizer.zero_grad(set_to_none=True)
        self._densify(step, views)
        for _, opt in self._gaussian_optimizers():
            opt.zero_grad(set_to_none=True)
        self.step = step
        return {"step": step, "loss": total, "psnr": float(np.mean(psnrs)), "gaussians": self.gaussian_count()}

    def _densify(self, step: int, views: list) -> None:
        n = len(self.params["means"])  # the rows of `params`; the track Gaussians after them are left alone
        if isinstance(self.densifier, GsplatDensifier):
            grads = torch.stack([pr.means2d.grad[:n] for pr, _ in views])
            proxy = torch.zeros_like(grads)
            proxy.grad = grads
            height, width = views[0][1]
            info = {"means2d": proxy, "radii": torch.stack([pr.radii[:n] for pr, _ in views]), "width": width,
                    "height": height, "n_cameras": len(views), "gaussian_ids": None}
            self.densifier.step(step, self.params, self.optimizers, info)
        else:
            for pr, (height, width) in views:
                self.densifier.accumulate(n, pr.means2d.grad[:n], pr.visible[:n], width, height, len(views))
            self.densifier.step(step, self.params, self.optimizers)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def refine_test_pose(self, image: int) -> None:
        """Fit the pose of held-out image `image` to the frozen splats (photometric loss, Adam, cosine decay)."""
        steps = self.config.eval_pose_steps
        if steps <= 0:
            return
        xi = self.rig.pose[image].detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([xi], lr=self.config.eval_pose_lr)
        for k in range(steps):
            opt.param_groups[0]["lr"] = self.config.eval_pose_lr * 0.5 * (1 + math.cos(math.pi * k / steps))
            rendered = self.render(image, xi)
            loss = metrics.photometric_loss(rendered.image, self._target(image, rendered), self.config.ssim_weight)
            (xi.grad,) = torch.autograd.grad(loss, [xi])  # gradients reach nothing else
            opt.step()
        with torch.no_grad():
            if torch.isfinite(xi).all():
                self.rig.pose[image] = xi.detach()

    def evaluate(self, refine: bool = True) -> dict[str, float]:
        """PSNR / SSIM (and LPIPS, `lpips.load_lpips`) on held-out views (after pose refinement) and on training
        views."""
        row: dict[str, float] = {"step": self.step}
        for split, ids in (("test", self.test_ids), ("train", self.train_ids)):
            if not ids:
                continue
            values = []
            for image in ids:
                if split == "test" and refine:
                    self.refine_test_pose(image)
                with torch.no_grad():
                    values.append(self._scores(self.render(image), self.targets[image]))
            for name in values[0]:
                if all(name in v for v in values):
                    row[f"{split}_{name}"] = float(np.mean([v[name] for v in values]))
        row["gaussians"] = self.gaussian_count()
        cams = self.rig.export_cameras()
        row["focal"] = float(cams[0].params[0]) * self.downscale  # in the bundle's (full-size) pixels
        self.curves["eval"].append(row)
        self.last_eval = row
        return row

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, "step": self.step,
                "images": [im.name for im in self.scene.images],
                "cameras": [(c.id, c.model) for c in self.rig.cameras],
                "config": dataclasses.asdict(self.config), "downscale": self.downscale,
                "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "rig": {k: v.cpu() for k, v in self.rig.state_dict().items()},
                "fields": {group: field.geometry() for group, field in self.rig.fields.items()},
                "camera_optimizer": None if self.camera_optimizer is None else self.camera_optimizer.state_dict(),
                "densifier": self.densifier.state_dict(), "order": list(self.order),
                "tracks": None if self.tracks is None else {
                    "observations": self.tracks.observation_state(), "optimizer": self.track_optimizer.state_dict(),
                    "gaussians": None if self.track_gaussians is None else self.track_gaussians.state_dict()},
                "track_report": self.track_report,
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "curves": self.curves, "last_eval": self.last_eval}

    def save_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        if not all(torch.isfinite(v).all() for v in self.all_params().values()):
            raise TrainingDiverged(f"step {self.step}: the splats hold NaN or infinite values; the last good "
                                   f"checkpoint {self.checkpoint} is kept")
        with atomic_file(self.checkpoint) as f:
            torch.save(self.state(), f)

    def load_checkpoint(self) -> None:
        path = self.checkpoint
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)  # never run code from a file
        except Exception as exc:  # torch raises many types for a damaged file
            raise EngineError(f"{path}: not a readable training checkpoint ({exc})") from None
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            raise EngineError(f"{path}: not a training checkpoint of this engine (version {CHECKPOINT_VERSION})")
        names = [im.name for im in self.scene.images]
        if state["images"] != names:
            raise EngineError(f"{path}: the checkpoint was made for other images ({len(state['images'])} images, "
                              f"first {state['images'][:3]}); this bundle has {len(names)}, first {names[:3]}")
        if state["cameras"] != [(c.id, c.model) for c in self.rig.cameras]:
            raise EngineError(f"{path}: the checkpoint's cameras {state['cameras']} differ from this run's "
                              f"{[(c.id, c.model) for c in self.rig.cameras]} (same --lens?)")
        if state.get("downscale") != self.downscale:
            raise EngineError(f"{path}: the checkpoint trained on photos {state.get('downscale')}x smaller; this run "
                              f"shrinks them {self.downscale}x (same --downscale?)")
        self.params = {k: torch.nn.Parameter(v.to(self.device)) for k, v in state["params"].items()}
        self.optimizers = {k: torch.optim.Adam([p], lr=0.0, eps=1e-15) for k, p in self.params.items()}
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for group, geometry in state["fields"].items():  # radius and extent the track adjustment may have changed
            self.rig.fields[group].set_geometry(geometry)
        self.rig.load_state_dict(state["rig"])
        if self.camera_optimizer is not None and state["camera_optimizer"] is not None:
            self.camera_optimizer.load_state_dict(state["camera_optimizer"])
        self.densifier.load_state_dict(state["densifier"])
        if (state.get("tracks") is None) != (self.tracks is None):
            raise EngineError(f"{path}: the checkpoint was made with feature tracks "
                              f"{'off' if self.tracks is not None else 'on'} (same --tracks and photos?)")
        if self.tracks is not None and (state["tracks"].get("gaussians") is None) != (self.track_gaussians is None):
            raise EngineError(f"{path}: the checkpoint was made with track Gaussians "
                              f"{'off' if self.track_gaussians is not None else 'on'}; this run has them "
                              f"{'on' if self.track_gaussians is not None else 'off'}")
        if self.tracks is not None:  # the checkpoint's tracks, as bundle-adjusted and filtered (SIFT varies by run)
            self.tracks.restore_observations(state["tracks"]["observations"])
            self.track_optimizer.load_state_dict(state["tracks"]["optimizer"])
        if self.track_gaussians is not None:
            self.track_gaussians.load_state_dict(state["tracks"]["gaussians"])
        self.step, self.order = int(state["step"]), list(state["order"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.curves, self.last_eval = state["curves"], state["last_eval"]
        self.track_report = state["track_report"]  # what the learning rates after it depend on

    # -- results --------------------------------------------------------------------------------------------------
    def splats(self) -> Splats:
        p = {k: v.detach().cpu().numpy() for k, v in self.all_params().items()}
        return Splats(p["means"], p["quats"], p["scales"], p["opacities"], p["sh0"], p["shN"])

    def _track_gaussian_facts(self) -> dict[str, float]:
        size = self.track_gaussians.size_px().detach()
        return {"count": len(size), "median_size_px": float(size.median()), "max_size_px": float(size.max())}

    def result(self) -> TrainResult:
        cams = {cam.id: scaled_camera(cam, self.downscale, self.full_scene.cameras[cam.id].width,
                                      self.full_scene.cameras[cam.id].height) for cam in self.rig.export_cameras()}
        poses = self.rig.export_poses()
        keep_poses = "pose" not in self.config.calibrate
        out_poses = {im.id: (im.cam_from_world if keep_poses else poses[i]) for i, im in enumerate(self.scene.images)}
        facts = {"iterations": self.step, "gaussians": self.gaussian_count(),
                 **({"track_bundle_adjustment": self.track_report} if self.track_report else {}),
                 **({"track_rms_px": self.tracks.rms(self.rig)} if self.tracks is not None else {}),
                 **({"track_gaussians": self._track_gaussian_facts()} if self.track_gaussians is not None else {}),
                 "calibrated": list(self.config.calibrate), "held_out": [self.scene.images[i].name
                                                                        for i in self.test_ids],
                 **{k: v for k, v in self.last_eval.items() if k != "step"}}
        fields = {cam.id: self.rig.fields[str(self.rig.group_of_camera[i])]
                  for i, cam in enumerate(self.rig.cameras) if cam.model == "LENS_FIELD"}
        return TrainResult(self.splats(), cams, out_poses, fields, self.curves, facts, self.notes)


def train(scene: Scene, config: TrainConfig, progress: Progress | None = None, checkpoint: Path | None = None,
          resume: bool = False, photos: list[np.ndarray] | None = None,
          loss_fn: Callable = metrics.photometric_loss) -> TrainResult:
    """Train splats (and calibrate cameras) on `scene`; see the module docstring. With `checkpoint`, state is saved
    there every `checkpoint_every` steps, on cancel, and at the end; with `resume`, training continues from it."""
    progress = progress or Progress("none")
    trainer = Trainer(scene, config, checkpoint, photos)
    for note in trainer.notes:
        progress.log(note)
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        trainer.load_checkpoint()
        progress.log(f"resumed from {checkpoint} at step {trainer.step}")
    else:
        ba = trainer.calibrate_from_tracks()
        if ba:
            progress.log(f"bundle adjustment on {ba['tracks']} feature tracks: reprojection RMS "
                         f"{ba['rms_before_px']:.2f} -> {ba['rms_after_px']:.2f} px")
            for camera in ba.get("fields_respanned", []):
                progress.log(f"camera {camera}: the adjusted lens widened beyond its lens field's grid; the field was "
                             f"refitted over a wider grid")
            for camera, reach in ba.get("field_reach_deg", {}).items():
                progress.log(f"camera {camera}: the tracks reach {reach:.1f} deg off-axis; its lens field's radial "
                             f"profile continues linearly beyond")
            if trainer.tracks_trusted():
                pinned = int(trainer.rotations_from_tracks().sum())
                progress.log(f"the adjustment fits: photometric training refines its intrinsics at "
                             f"{config.lr_intrinsics_after_tracks:g}x and the orientations of {pinned} of "
                             f"{len(trainer.train_ids)} training views at {config.lr_rotations_after_tracks:g}x "
                             f"their learning rates")
            held = ba.get("held_out", {})
            if held.get("images"):
                progress.log(f"{held['images']} held-out view(s) registered on {held['observations']} track "
                             f"observations: RMS {held['rms_before_px']:.2f} -> {held['rms_after_px']:.2f} px")
    progress.log(f"{trainer.gaussian_count()} splats, {len(trainer.train_ids)} training and {len(trainer.test_ids)} "
                 f"held-out views, rasterizer {trainer.rasterize.__module__.rsplit('.', 1)[-1]}, "
                 f"calibrating {', '.join(config.calibrate) or 'nothing'}")
    progress.stage("train", total=config.iterations)
    if trainer.step:
        progress.advance(trainer.step)
    started = time.monotonic()
    try:
        while trainer.step < config.iterations:
            row = trainer.train_step(loss_fn)
            step = trainer.step
            if step % max(config.log_every, 1) == 0 or step == config.iterations:
                trainer.curves["train"].append(row)
            progress.advance(1, f"PSNR {row['psnr']:.2f} dB, {row['gaussians']} splats")
            if config.eval_every > 0 and step % config.eval_every == 0 and step < config.iterations:
                _log_eval(progress, trainer.evaluate(), trainer)
            if config.checkpoint_every > 0 and step % config.checkpoint_every == 0:
                trainer.save_checkpoint()
    except (KeyboardInterrupt, CancelledError):
        trainer.save_checkpoint()
        raise
    _log_eval(progress, trainer.evaluate(), trainer)
    trainer.save_checkpoint()
    result = trainer.result()
    result.metrics["seconds"] = time.monotonic() - started
    return result


def _log_eval(progress: Progress, row: dict[str, float], trainer: Trainer) -> None:
    parts = [f"step {int(row['step'])}"]
    for split in ("test", "train"):
        if f"{split}_psnr" in row:
            parts.append(f"{split} PSNR {row[f'{split}_psnr']:.2f} dB SSIM {row[f'{split}_ssim']:.4f}"
                         + (f" LPIPS {row[f'{split}_lpips']:.4f}" if f"{split}_lpips" in row else ""))
    parts.append(f"{int(row['gaussians'])} splats, focal {row['focal']:.2f} px")
    progress.log(", ".join(parts))
