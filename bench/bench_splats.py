# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-calibrating splat training (`python -m bench splats`): camera accuracy on a generated scene, and speed.

Accuracy (CPU-feasible size): a scenegen room rendered at 2x and area-downsampled to photos PHOTO_DOWNSCALE times
SIZE, trained at SIZE (`TrainConfig.downscale`; feature tracks come from the full-size photos, as they would from
real ones), views on an orbit, with a RADIAL camera (k1, k2 = DISTORTION); the bundle's points come from the
rendered depth maps. The start follows the issue's protocol: focal +10 %, principal point 2 % of the width off,
every rotation 1 deg off about a random axis, and the radial distortion ignored (SIMPLE_PINHOLE). Runs of
ITERATIONS steps: the true cameras without calibration (the reference); the perturbed start calibrating focal, pp,
pose and distortion (`--lens radial`) with tracks and track Gaussians (the default), without track Gaussians, with
the intrinsics or the orientations learning at full rate after the track adjustment, and photometric only; the
perturbed start without calibration; and from focal +20 % / rotations 2 deg, with tracks and photometric only.
Reported: focal error, principal point error, rotation error (mean / max, raw and after removing the best global
rotation, a gauge the splats can share), the RMS pixel difference of the whole intrinsic map (learned vs true camera
over the image, in the photos' and the training images' pixels), and held-out PSNR / SSIM after test-view pose
refinement. Speed (CUDA + gsplat only): iterations/s and peak memory at ~1 MP with 1M Gaussians, this engine's
differentiable-camera pipeline (torch projection + gsplat compositing, camera gradients) against plain
`gsplat.rasterization()` (no camera gradients), forward + backward, same Gaussians.

The helpers `generate_scene`, `depth_points` and `perturb` also serve tests/test_splats_train.py.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np

from . import ROOT, Report, Row

CACHE = ROOT / "out" / "bench_splats"
SIZE = (128, 96)  # training size
PHOTO_DOWNSCALE = 8  # the bundle's photos are this much larger: feature tracks come from them (as from real photos)
VIEWS = 16
DISTORTION = (-0.06, 0.01)
ITERATIONS = 1000
GPU_SIZE = (1152, 864)
GPU_GAUSSIANS = 1_000_000


def depth_points(scene, step: int):
    """Points unprojected from each image's depth map (every `step`-th pixel), coloured from its photo."""
    import cv2
    import torch

    from engine.ply import Points
    from engine.projection import unproject

    xyz, rgb = [], []
    for image in scene.images:
        cam = scene.camera_of(image)
        depth = np.load(Path(image.path).parent.parent / image.extras["depth"])
        photo = cv2.imread(str(image.path))[..., ::-1]
        v, u = np.mgrid[0:cam.height:step, 0:cam.width:step]
        z = depth[v, u]
        ok = z > 0
        pixels = torch.from_numpy(np.stack([u[ok] + 0.5, v[ok] + 0.5], -1).astype(np.float64))
        rays, _ = unproject(cam.model, torch.tensor(cam.params, dtype=torch.float64), pixels)
        rot, t = image.cam_from_world[:3, :3], image.cam_from_world[:3, 3]
        xyz.append((rays.numpy() * z[ok][:, None] - t) @ rot)
        rgb.append(photo[v[ok], u[ok]])
    return Points(np.concatenate(xyz), np.concatenate(rgb))


def generate_scene(out: Path, *, kind: str = "room", views: int = 10, size: tuple[int, int] = (64, 48),
                   factor: int = 2, model: str = "PINHOLE", extra=(), point_step: int = 4, seed: int = 1) -> Path:
    """A self-contained training bundle at `size` from a scenegen render at `factor` x `size` (area-downsampled, so
    the photos are anti-aliased like real ones), its points from the depth maps every `point_step` render pixels.
    Needs bpy."""
    import bpy
    import cv2

    import scenegen
    from engine.bundle import read_bundle, write_bundle
    from engine.camera_models import get_model

    width, height = size
    bpy.ops.wm.read_homefile(use_empty=True)  # an empty scene: not Blender's default cube, light and camera
    camera = scenegen.intrinsics(model, width * factor, height * factor, hfov_deg=60.0, extra=list(extra))
    raw = scenegen.generate(out.parent / f"{out.name}_raw", kind=kind, n_views=views, camera=camera, samples=8,
                            n_points=1000, save_depth=True, seed=seed)
    scene = read_bundle(raw)
    scene.points = depth_points(scene, point_step)
    photos = out / "images"  # inside the bundle: write_bundle carries them over
    photos.mkdir(parents=True, exist_ok=True)
    for image in scene.images:
        path = photos / image.name
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(image.path)), (width, height), interpolation=cv2.INTER_AREA))
        image.path, image.extras = path, {}
    for cam in scene.cameras.values():
        fx, fy, cx, cy, dist = cam.split()  # pixel centres at +0.5: a pure scale maps the big image to the small
        cam.params = get_model(cam.model).join(fx / factor, fy / factor, cx / factor, cy / factor, dist)
        cam.width, cam.height = width, height
    return write_bundle(scene, out)


def perturb(scene, *, focal: float = 1.0, pp_fraction: float = 0.0, rotation_deg: float = 0.0,
            model: str | None = None, seed: int = 0):
    """A copy of `scene` with focal lengths scaled by `focal`, principal points moved `pp_fraction` of the width
    (random direction), poses rotated `rotation_deg` about random axes through the camera centres, and cameras
    re-expressed in `model` keeping focal and principal point (dropping the distortion)."""
    import torch

    from engine.camera_models import get_model
    from engine.splats.cameras import se3_exp

    out = copy.deepcopy(scene)
    rng = np.random.default_rng(seed)
    for cam in out.cameras.values():
        fx, fy, cx, cy, dist = cam.split()
        angle = rng.uniform(0, 2 * math.pi)
        cx, cy = cx + pp_fraction * cam.width * math.cos(angle), cy + pp_fraction * cam.width * math.sin(angle)
        cam.model = model or cam.model
        cam.params = get_model(cam.model).join(fx * focal, fy * focal, cx, cy, dist if model is None else ())
    for image in out.images:
        axis = rng.normal(size=3)
        axis *= math.radians(rotation_deg) / np.linalg.norm(axis)
        image.cam_from_world = se3_exp(torch.tensor(np.r_[axis, 0.0, 0.0, 0.0])).numpy() @ image.cam_from_world
    return out


def camera_errors(cameras: dict, poses: dict, truth) -> dict[str, float]:
    """Focal (%), principal point (px), rotation (deg; raw and gauge-aligned) and intrinsic-map RMS (px) errors."""
    import torch

    from engine.pose import rotation_angle_deg
    from engine.projection import project, unproject_directions

    cam = next(iter(cameras.values()))
    true = truth.cameras[cam.id]
    fx, _, cx, cy, _ = cam.split()
    tfx, _, tcx, tcy, _ = true.split()
    rel = [poses[im.id][:3, :3] @ im.cam_from_world[:3, :3].T for im in truth.images]
    u, _, vt = np.linalg.svd(sum(im.cam_from_world[:3, :3].T @ poses[im.id][:3, :3] for im in truth.images))
    gauge = u @ vt  # best global rotation G with R_est ~ R_true G
    raw = [rotation_angle_deg(r, np.eye(3)) for r in rel]
    aligned = [rotation_angle_deg(poses[im.id][:3, :3], im.cam_from_world[:3, :3] @ gauge) for im in truth.images]
    grid = np.stack(np.meshgrid(np.arange(16) + 0.5, np.arange(12) + 0.5), -1).reshape(-1, 2)
    pixels = torch.from_numpy(grid * [true.width / 16, true.height / 12])
    rays, ok = unproject_directions(true.model, true.params, pixels)
    back, valid = project(cam.model, cam.params, rays)
    diff = (back - pixels)[ok & valid].norm(dim=-1)
    return {"focal_pct": 100 * abs(fx / tfx - 1), "pp_px": math.hypot(cx - tcx, cy - tcy),
            "rot_mean": float(np.mean(raw)), "rot_max": float(np.max(raw)),
            "rot_aligned_mean": float(np.mean(aligned)), "rot_aligned_max": float(np.max(aligned)),
            "intrinsics_rms_px": float(diff.square().mean().sqrt())}


def _run(args):
    """One training run in a worker process (one torch thread): (name, scene, config) -> (name, result, seconds)."""
    import torch

    from engine.splats.train import train

    name, scene, config = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = train(scene, config)
    return name, result, time.perf_counter() - t0


def _accuracy(report: Report) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from engine.bundle import read_bundle
    from engine.splats.train import TrainConfig

    photo_size = (SIZE[0] * PHOTO_DOWNSCALE, SIZE[1] * PHOTO_DOWNSCALE)
    bundle = CACHE / f"room_{photo_size[0]}x{photo_size[1]}_{VIEWS}"
    if not (bundle / "scene.json").is_file():
        generate_scene(bundle, views=VIEWS, size=photo_size, model="RADIAL", extra=DISTORTION,
                       point_step=8 * PHOTO_DOWNSCALE)
    truth = read_bundle(bundle)
    start = perturb(truth, focal=1.1, pp_fraction=0.02, rotation_deg=1.0, model="SIMPLE_PINHOLE")
    hard = perturb(truth, focal=1.2, pp_fraction=0.02, rotation_deg=2.0, model="SIMPLE_PINHOLE", seed=1)
    before = camera_errors(start.cameras, {im.id: im.cam_from_world for im in start.images}, truth)
    common = dict(iterations=ITERATIONS, downscale=PHOTO_DOWNSCALE, sh_degree=1, sh_every=300, test_every=8,
                  eval_every=0, eval_pose_steps=100, calib_start=ITERATIONS // 10, calib_ramp=ITERATIONS // 20)
    runs = [("true cameras, no calibration", truth, TrainConfig(**common, calibrate=())),
            ("perturbed, calibrating with tracks and track Gaussians (default)", start,
             TrainConfig(**common, lens="radial")),
            ("perturbed, calibrating with tracks, no track Gaussians (--no-track-gaussians)", start,
             TrainConfig(**common, lens="radial", track_gaussians=False)),
            ("perturbed, calibrating with tracks, intrinsics at full rate after the adjustment "
             "(lr_intrinsics_after_tracks=1)", start,
             TrainConfig(**common, lens="radial", lr_intrinsics_after_tracks=1.0)),
            ("perturbed, calibrating with tracks, orientations at full rate after the adjustment "
             "(lr_rotations_after_tracks=1)", start,
             TrainConfig(**common, lens="radial", lr_rotations_after_tracks=1.0)),
            ("perturbed, calibrating, photometric only (--tracks off)", start,
             TrainConfig(**common, lens="radial", tracks="off")),
            ("perturbed, no calibration", start, TrainConfig(**common, calibrate=())),
            ("focal +20 %, rotations 2 deg: with tracks", hard, TrainConfig(**common, lens="radial")),
            ("focal +20 %, rotations 2 deg: photometric only", hard,
             TrainConfig(**common, lens="radial", tracks="off"))]
    lines = []
    with ProcessPoolExecutor(2) as pool:  # two single-threaded runs at a time
        for name, result, seconds in pool.map(_run, runs):
            report.rows.append(Row(f"{ITERATIONS} CPU steps (one thread), {name}", seconds))
            err = camera_errors(result.cameras, result.poses, truth)
            m = result.metrics
            ba = m.get("track_bundle_adjustment", {})
            lines.append(f"| {name} | {err['focal_pct']:.2f} | {err['pp_px']:.2f} | {err['rot_mean']:.3f} / "
                         f"{err['rot_max']:.3f} | {err['rot_aligned_mean']:.3f} / {err['rot_aligned_max']:.3f} | "
                         f"{err['intrinsics_rms_px']:.2f} / {err['intrinsics_rms_px'] / PHOTO_DOWNSCALE:.2f} | "
                         f"{m.get('test_psnr', float('nan')):.2f} / "
                         f"{m.get('test_ssim', float('nan')):.3f} | {m.get('train_psnr', float('nan')):.2f} | "
                         + (f"{ba['tracks']} / {ba['rms_before_px']:.2f} -> {ba['rms_after_px']:.2f} |" if ba
                            else "- |"))
    report.notes += [
        f"Accuracy: scenegen room, {VIEWS} photos of {photo_size[0]}x{photo_size[1]} (rendered at 2x, "
        f"area-downsampled) trained at {SIZE[0]}x{SIZE[1]} (`downscale={PHOTO_DOWNSCALE}`), RADIAL "
        f"camera k = {DISTORTION}, {len(truth.points)} points from the depth maps; every 8th view held out; "
        f"{ITERATIONS} steps, SH degree 1, no densification (3DGS starts at step 500 and the trainer stops at half "
        f"the run). Start: focal "
        f"{before['focal_pct']:.1f} % off, principal point {before['pp_px']:.2f} px off, rotations "
        f"{before['rot_mean']:.2f} deg off, intrinsic map {before['intrinsics_rms_px']:.2f} px RMS off "
        f"(distortion ignored); the last two runs start from focal +20 % and rotations 2 deg off. Tracks: SIFT "
        f"feature tracks on the full-size photos (engine.tracks), a Levenberg-Marquardt bundle adjustment of "
        f"intrinsics, distortion, orientations and track points before "
        f"training, then a fading reprojection loss (engine.splats.track_loss); after the adjustment the intrinsics "
        f"and orientations learn at lr_intrinsics_after_tracks and lr_rotations_after_tracks of their rates (default "
        f"0: the adjustment's are kept; camera centres learn at the full pose rate). Issue "
        f"targets: focal < 0.5 %, rotation < 0.1 deg, distortion RMS < 0.3 px, held-out PSNR within 0.5 dB of the "
        f"true-camera run.", "",
        "| run | focal err % | pp err px | rot err deg mean / max | gauge-aligned rot err mean / max | "
        "intrinsic map RMS, photo / training px | held-out PSNR / SSIM | train PSNR | tracks / BA RMS, training px |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|", *lines]


def _gpu_speed(report: Report) -> None:
    import torch

    from engine.splats import raster_gsplat

    if not raster_gsplat.available():
        report.notes += ["", "No CUDA device with gsplat here: the GPU speed section was not run (run "
                             "`python -m bench splats` on a GPU machine with requirements-gpu.txt installed)."]
        return
    import gsplat

    from engine.bundle import Camera
    from engine.splats.cameras import CameraRig
    from engine.splats.project import project_gaussians

    width, height = GPU_SIZE
    n = GPU_GAUSSIANS
    g = torch.Generator(device="cuda").manual_seed(0)
    means = (torch.randn(n, 3, device="cuda", generator=g) * 1.5 + torch.tensor([0, 0, 5.0], device="cuda"))
    quats = torch.randn(n, 4, device="cuda", generator=g)
    scales = torch.log(torch.rand(n, 3, device="cuda", generator=g) * 0.02 + 0.005)
    opac = torch.rand(n, device="cuda", generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, device="cuda", generator=g)
    for t in (means, quats, scales, opac, colors):
        t.requires_grad_(True)
    focal = 0.8 * width
    cam = Camera(1, "PINHOLE", width, height, [focal, focal, width / 2, height / 2])
    rig = CameraRig([cam], [0], np.eye(4)[None]).cuda()
    target = torch.rand(height, width, 3, device="cuda", generator=g)

    def ours():
        proj = project_gaussians(means, quats, scales, opac, cam.model, rig.camera_params(0), rig.cam_from_world(0),
                                 width, height)
        image, _ = raster_gsplat.rasterize(proj, colors, opac, width, height)
        (image - target).abs().mean().backward()

    def plain():
        k = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], device="cuda")
        image, _, _ = gsplat.rasterization(means, torch.nn.functional.normalize(quats, dim=-1), torch.exp(scales),
                                           opac, colors, rig.cam_from_world(0)[None], k[None], width, height)
        (image[0] - target).abs().mean().backward()

    speeds = {}
    for name, fn in (("plain gsplat.rasterization()", plain), ("differentiable cameras (this engine)", ours)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        steps, t0 = 20, time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / steps
        speeds[name] = (1 / seconds, torch.cuda.max_memory_allocated() / 2 ** 30)
        report.rows.append(Row(f"GPU step at {width}x{height}, {n:,} Gaussians: {name}", seconds))
    ratio = speeds["differentiable cameras (this engine)"][0] / speeds["plain gsplat.rasterization()"][0]
    report.notes += ["", f"GPU ({torch.cuda.get_device_name()}), forward + backward per step: "
                     + "; ".join(f"{k}: {v[0]:.1f} it/s, peak {v[1]:.2f} GiB" for k, v in speeds.items())
                     + f". Speed ratio {ratio:.2f} (target >= 0.85)."]


def run() -> Report:
    report = Report("self-calibrating Gaussian splat training: camera accuracy (CPU) and speed (GPU)")
    _accuracy(report)
    _gpu_speed(report)
    return report
