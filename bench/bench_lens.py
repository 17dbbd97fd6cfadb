# SPDX-License-Identifier: GPL-3.0-or-later
"""Wide lenses (`python -m bench lens`): learned-lens accuracy from feature tracks, and training-step cost.

Accuracy: a 190 deg lens with strong theta^9 / theta^11 terms and a decentring term (a LENS_FIELD grid built by
`scenegen.lenses.radial_field_lens`), eight cameras on a small ring looking every way at 1500 points 3-6 units away,
observations with 0.1 px noise (`wide_lens_tracks`). Each lens model starts from an equidistant guess reaching 95
deg at the image's side and is bundle-adjusted on the tracks (`engine.splats.track_loss.bundle_adjust`: focal,
principal point, distortion, orientations). Reported: the angle between the true lens's rays and the estimate's over
the image, after the best common rotation (`lens_angular_error_deg`). Issue target: median < 0.05 deg, 99th
percentile < 0.2 deg.

Cost: one training step (forward + backward + updates, CPU, one thread) on a generated 96x96 190 deg fisheye
scene, with the learned lens against OPENCV_FISHEYE (target <= 1.15x), and through the cubemap against a direct
fisheye render.

Training (`_training`, issue #7's accuracy protocol): generated rooms (`scenegen.generate`, exact fisheye ground
truth, fine texture on every surface: GRAIN) seen through two lenses: 180 deg equidistant, and the 190 deg
`mild_radial` lens of the accuracy section (strong high-order terms; the scenegen "polynomial" lens, a 13th-degree
wave, is beyond what the trainer's field reaches). The photos are rendered PHOTO_SCALE times larger than the
training size (1536x1536 for 96x96): feature tracks come from the full-size photos, as they would from real ones,
and every run trains on them shrunk PHOTO_SCALE times (`TrainConfig.downscale`), so a step costs what it does at
96x96. Four runs per lens, two single-threaded at a time: the true lens without calibration (reference); LENS_FIELD
and OPENCV_FISHEYE (`--lens field` / `fisheye`, calibrating everything, feature tracks when found) from an
equidistant guess with focal +5 % and the true poses; and what COLMAP + plain 3DGS users do: the photos undistorted
to a perspective crop through the true lens (`engine.undistort`, at the full size), PINHOLE trained without
calibration (same downscale), its splats then rendered through the true fisheye lens and scored on the held-out
fisheye photos, so the periphery the crop lost counts. Reported: the lens's angular error (`lens_angular_error_deg`:
the trained camera at the photos' full size against the true one, at the centre of every training pixel), held-out
PSNR / SSIM at the training size over the whole image, the centre the crop holds and the periphery outside it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import ROOT, Report, Row

CACHE = ROOT / "out" / "bench_lens"
TRAIN_SIZE = 96  # training section: square training images,
PHOTO_SCALE = 16  # from photos this many times larger (1536x1536; feature tracks come from them),
TRAIN_VIEWS = 10  # views of the generated room,
TRAIN_TEST_EVERY = 5  # every 5th held out,
TRAIN_ITERATIONS = 600  # steps per run (8 runs: ~50 min on 2 cores; rendering the 1536 px rooms: 11 min each)
# Fine texture on the rooms' surfaces (`scenegen.materials.add_grain`). The plain two-colour patterns gave SIFT
# nothing to match at grazing angles: the tracks reached 65 deg off-axis, and the lens beyond (a quarter of the
# image) was extrapolated. With grain 0.3 they reach 83 deg, with 27 % of the observations beyond 60 deg.
GRAIN = 0.3
FOCAL_ERROR = 1.05  # the calibrated runs start from an equidistant guess with this focal factor
TRAIN_RUNS = ("true", "field", "fisheye", "undistort")  # see `_training_run`


def mild_radial(theta):
    """theta -> theta_d of the benchmark lens: equidistant with strong high-order terms."""
    t = theta / 1.66
    return theta * (1 - 0.08 * t ** 8 + 0.05 * t ** 10)


def wide_lens_tracks(true, seed: int = 3, noise_px: float = 0.1, within_deg: float = 180.0):
    """(poses (8, 4, 4), tracks) of the synthetic ring of cameras seeing points all around through `true`, each
    observed only within `within_deg` of the optical axis."""
    import torch

    from engine.projection import project
    from engine.splats.cameras import se3_exp

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(1500, 3))
    points = direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.uniform(3, 6, (1500, 1))
    poses = []
    for k in range(8):  # a small ring of cameras looking every way: parallax, and every angle of the lens seen
        axis = rng.normal(size=3)
        pose = se3_exp(torch.tensor(np.r_[axis / np.linalg.norm(axis) * rng.uniform(0, math.pi), 0, 0, 0])).numpy()
        centre = 0.4 * np.array([math.cos(k), math.sin(k), 0.3 * math.sin(2 * k)])
        pose[:3, 3] = -pose[:3, :3] @ centre
        poses.append(pose)
    poses = np.stack(poses)
    track, image, pixels = [], [], []
    for i, pose in enumerate(poses):
        local = points @ pose[:3, :3].T + pose[:3, 3]
        uv, ok = project(true.model, torch.tensor(true.params, dtype=torch.float64), torch.from_numpy(local))
        uv = uv.numpy()
        ok = ok.numpy() & (local[:, 2] > np.linalg.norm(local, axis=1) * math.cos(math.radians(within_deg)))
        idx = np.nonzero(ok & (uv > 0).all(1) & (uv[:, 0] < true.width) & (uv[:, 1] < true.height))[0]
        track.append(idx)
        image.append(np.full(len(idx), i))
        pixels.append(uv[idx] + rng.normal(0, noise_px, (len(idx), 2)))
    return poses, SimpleNamespace(xyz=points, track=np.concatenate(track), image=np.concatenate(image),
                                  pixels=np.concatenate(pixels))


def lens_angular_error_deg(true, model: str, params, n: int = 24) -> np.ndarray:
    """Angles between the true lens's rays and the estimate's over an n x n pixel grid, after the best common
    rotation (a rotation of the whole lens is a camera orientation, not a lens error). Pixels outside the true
    lens's valid region are left out; inf where the true lens sees but the estimate has no ray."""
    import torch

    from engine.projection import unproject_directions

    pixels = torch.stack(torch.meshgrid((torch.arange(n) + 0.5) * true.width / n,
                                        (torch.arange(n) + 0.5) * true.height / n, indexing="xy"), -1)
    pixels = pixels.reshape(-1, 2).double()
    truth, ok = unproject_directions(true.model, torch.tensor(true.params, dtype=torch.float64), pixels)
    est, valid = unproject_directions(model, torch.as_tensor(params, dtype=torch.float64).detach(), pixels)
    both = (ok & valid).numpy()
    a, b = truth.numpy()[both], est.numpy()[both]
    u, _, vt = np.linalg.svd(b.T @ a)
    rot = (u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt).T
    err = np.full(int(ok.sum()), np.inf)
    err[both[ok.numpy()]] = np.degrees(np.arccos(np.clip((a * (b @ rot.T)).sum(-1), -1, 1)))
    return err


def calibrate_wide_lens(true, model: str, iterations: int = 300, reach_deg: float = 95.0,
                        within_deg: float = 180.0) -> np.ndarray:
    """Bundle-adjust `model` (LENS_FIELD or a parametric fisheye) on `true`'s tracks (observed within `within_deg`
    of the axis) from an equidistant guess reaching `reach_deg` at the image's side; the angular errors of the
    result (`lens_angular_error_deg`)."""
    import torch

    from engine.bundle import Camera
    from engine.lens_field import CALIBRATION_MARGIN, field_camera
    from engine.splats.cameras import CameraRig, convert_camera
    from engine.splats.track_loss import TrackLoss, bundle_adjust

    poses, tracks = wide_lens_tracks(true, within_deg=within_deg)
    f = true.width / 2 / math.radians(reach_deg)
    guess = Camera(1, "OPENCV_FISHEYE", true.width, true.height,
                   [f, f, true.width / 2, true.height / 2, 0.0, 0.0, 0.0, 0.0])
    fields = {}
    if model == "LENS_FIELD":
        start, fields[0], _ = field_camera(guess, margin=CALIBRATION_MARGIN)
    else:
        start, _ = convert_camera(guess, model)
    rig = CameraRig([start], [0] * len(poses), poses, dtype=torch.float64, fields=fields)
    loss = TrackLoss(tracks, range(len(poses)), dtype=torch.float64)
    bundle_adjust(rig, loss, ("focal", "pp", "distortion", "pose"), iterations=iterations)
    return lens_angular_error_deg(true, model, rig.camera_params(0))


def _accuracy(report: Report) -> None:
    from engine.bundle import Camera
    from scenegen import lenses

    lens = lenses.radial_field_lens(96, 96, 190.0, mild_radial, decentre=(0.002, -0.001))
    true = Camera(1, lens.model, lens.width, lens.height, list(lens.params))
    lines = []
    for model in ("LENS_FIELD", "OPENCV_FISHEYE"):
        t0 = time.perf_counter()
        err = calibrate_wide_lens(true, model)
        report.rows.append(Row(f"bundle adjustment on tracks, {model}", time.perf_counter() - t0))
        lines.append(f"| {model} | {np.median(err):.4f} | {np.percentile(err, 99):.4f} | {err.max():.4f} |")
    report.notes += ["Accuracy of the lens calibrated from tracks (see module docstring), degrees over a 24x24 "
                     "pixel grid of the 96x96 image, after the best common rotation:", "",
                     "| lens model | median | 99th percentile | max |", "|---|---:|---:|---:|", *lines, ""]


def _step_cost(report: Report) -> None:
    import bpy
    import torch

    from engine.bundle import read_bundle
    from engine.splats.train import Trainer, TrainConfig
    from scenegen.generate import generate_fisheye

    torch.set_num_threads(1)
    bundle = CACHE / "fisheye_96"
    if not (bundle / "scene.json").is_file():
        bpy.ops.wm.read_homefile(use_empty=True)
        generate_fisheye(bundle, "equidistant", fov_deg=190.0, size=96, n_views=4, samples=4, n_points=8000)
    scene = read_bundle(bundle)
    times = {}
    for name, lens, cubemap in (("OPENCV_FISHEYE, direct", "fisheye", "never"),
                                ("LENS_FIELD, direct", "field", "never"),
                                ("OPENCV_FISHEYE, cubemap", "fisheye", "always"),
                                ("LENS_FIELD, cubemap", "field", "always")):
        trainer = Trainer(scene, TrainConfig(iterations=100, lens=lens, cubemap=cubemap, tracks="off",
                                             test_every=0, sh_degree=1, calib_start=0, calib_ramp=1))
        for _ in range(3):
            trainer.train_step()
        steps = []
        for _ in range(10):
            t0 = time.process_time()
            trainer.train_step()
            steps.append(time.process_time() - t0)
        times[name] = float(np.median(steps))
        report.rows.append(Row(f"training step, {name} ({trainer.gaussian_count()} splats)", times[name]))
    ratio = times["LENS_FIELD, direct"] / times["OPENCV_FISHEYE, direct"]
    cube = times["OPENCV_FISHEYE, cubemap"] / times["OPENCV_FISHEYE, direct"]
    report.notes += [f"Step cost (CPU seconds, one thread, median of 10 after 3 warm-up steps; 96x96 190 deg "
                     f"equidistant scene, calibrating everything): learned lens / OPENCV_FISHEYE = {ratio:.2f} "
                     f"(target <= 1.15); cubemap / direct render = {cube:.2f}."]


def _training_lenses():
    """(key, description, true camera) of the training section's two lenses (module docstring)."""
    from scenegen import lenses

    size = PHOTO_SCALE * TRAIN_SIZE  # the photos' size
    return [("equidistant_180", "180 deg equidistant (OPENCV_FISHEYE, k = 0)", lenses.equidistant(size, size, 180.0)),
            ("mild_radial_190", "190 deg mild_radial + decentring (LENS_FIELD grid)",
             lenses.radial_field_lens(size, size, 190.0, mild_radial, decentre=(0.002, -0.001)))]


def _training_scenes(key: str, camera) -> tuple[Path, Path]:
    """The generated room seen through `camera` (cached under CACHE; needs bpy), and its photos undistorted to the
    default perspective crop (`engine.undistort`)."""
    import bpy

    from engine.undistort import undistort_scene
    from scenegen.generate import generate

    bundle = CACHE / f"train_{key}_{camera.width}_{TRAIN_VIEWS}_grain{GRAIN:g}"  # named for the photos
    if not (bundle / "scene.json").is_file():
        bpy.ops.wm.read_homefile(use_empty=True)
        generate(bundle, kind="room", n_views=TRAIN_VIEWS, camera=camera, samples=8, n_points=8000, save_depth=True,
                 grain=GRAIN)
    return bundle, undistort_scene(bundle, bundle.parent / f"{bundle.name}_undistorted")


def _training_config(run: str):
    """The TrainConfig of training run `run` (TRAIN_RUNS; `_training_run` turns calibration and tracks off where
    the run needs): photos shrunk PHOTO_SCALE times. Densification refines every 100 steps from step 200 (a short
    run) until half the run (the trainer's limit)."""
    from engine.splats.densify import DensifyConfig
    from engine.splats.train import TrainConfig

    return TrainConfig(iterations=TRAIN_ITERATIONS, downscale=PHOTO_SCALE,
                       lens=run if run in ("field", "fisheye") else "keep", sh_degree=1,
                       sh_every=TRAIN_ITERATIONS // 2, test_every=TRAIN_TEST_EVERY, eval_every=0, eval_pose_steps=50,
                       checkpoint_every=0, calib_start=TRAIN_ITERATIONS // 10, calib_ramp=TRAIN_ITERATIONS // 20,
                       densify=DensifyConfig(start=100))


def _regions(true, pinhole):
    """Masks (H, W) of the fisheye image: 'all' pixels the true lens sees, the 'centre' whose rays the perspective
    crop `pinhole` holds, and the 'periphery' outside it; at the size of `true` (the training size, where the
    trainer's targets are)."""
    import torch

    from engine.projection import project, unproject_directions

    v, u = torch.meshgrid(torch.arange(true.height, dtype=torch.float64) + 0.5,
                          torch.arange(true.width, dtype=torch.float64) + 0.5, indexing="ij")
    rays, seen = unproject_directions(true.model, torch.tensor(true.params, dtype=torch.float64),
                                      torch.stack([u, v], -1))
    uv, valid = project("PINHOLE", torch.tensor(pinhole.params, dtype=torch.float64), rays)
    centre = seen & valid & (uv >= 0).all(-1) & (uv[..., 0] <= pinhole.width) & (uv[..., 1] <= pinhole.height)
    return {"all": seen, "centre": centre, "periphery": seen & ~centre}


def _region_scores(trainer, regions) -> dict[str, float]:
    """Mean over the held-out views (at their refined poses) of PSNR and SSIM within each region."""
    import torch

    from engine.splats import metrics

    scores = {}
    for image in trainer.test_ids:
        with torch.no_grad():
            render = trainer.render(image).image.clamp(0, 1)
        target = trainer.targets[image]
        ssim = metrics.ssim_map(render, target)
        for name, mask in regions.items():
            mask = mask.to(render.device)
            scores.setdefault(f"{name}_psnr", []).append(metrics.psnr(render[mask], target[mask]))
            scores.setdefault(f"{name}_ssim", []).append(float(ssim[mask].mean()))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _train_steps(trainer) -> None:
    trainer.calibrate_from_tracks()
    while trainer.step < trainer.config.iterations:
        trainer.train_step()


def _training_run(args):
    """One training run in a worker process (one torch thread). `args`: (run, fisheye bundle, undistorted bundle,
    true camera, TrainConfig). run 'true': the true lens, nothing calibrated; 'field' / 'fisheye': `--lens` from
    the equidistant guess with focal +5 %; 'undistort': PINHOLE on the undistorted photos, its splats scored on the
    fisheye photos through the true lens. Returns (run, results, seconds)."""
    import torch

    from engine.bundle import read_bundle
    from engine.splats.train import Trainer, downscale_scene

    from .bench_splats import perturb

    run, fisheye, undistorted, true, config = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    truth, pinhole = read_bundle(fisheye), read_bundle(undistorted)
    small = [downscale_scene(s, [], config.downscale)[0].cameras[true.id] for s in (truth, pinhole)]  # as trained
    regions = _regions(*small)
    out = {}
    if run == "undistort":
        flat = Trainer(pinhole, dataclasses.replace(config, calibrate=(), tracks="off", cubemap="never"))
        _train_steps(flat)
        out["pinhole_test_psnr"] = flat.evaluate()["test_psnr"]  # on its own (perspective) held-out photos
        trainer = Trainer(truth, dataclasses.replace(config, calibrate=(), tracks="off"))
        trainer.set_splats(flat.splats())
        trainer.step = flat.step  # the same active SH degree
    else:
        scene = truth if run == "true" else perturb(truth, focal=FOCAL_ERROR, model="OPENCV_FISHEYE")
        trainer = Trainer(scene, config if run != "true" else dataclasses.replace(config, calibrate=()))
        _train_steps(trainer)
        out["tracks"] = trainer.track_report
    row = trainer.evaluate()
    if run != "undistort":
        cam = trainer.result().cameras[true.id]  # in the photos' (full-size) pixels
        out["angles"] = lens_angular_error_deg(true, cam.model, cam.params, n=TRAIN_SIZE)
    out.update(_region_scores(trainer, regions), train_psnr=row["train_psnr"], splats=trainer.gaussian_count(),
               centre_share=float(regions["centre"].sum() / regions["all"].sum()))
    return run, out, time.perf_counter() - t0


def _training(report: Report) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from engine.bundle import read_bundle

    from .bench_splats import perturb

    jobs, crops, lines = [], [], {}
    for key, description, true in _training_lenses():
        fisheye, undistorted = _training_scenes(key, true)
        cam = read_bundle(undistorted).cameras[true.id]
        crops.append(f"{key}: {description}, undistorted to PINHOLE {cam.width}x{cam.height} f = {cam.params[0]:.1f} "
                     f"px ({2 * math.degrees(math.atan(cam.width / 2 / cam.params[0])):.0f} deg across; trained "
                     f"at 1/{PHOTO_SCALE})")
        guess = perturb(read_bundle(fisheye), focal=FOCAL_ERROR, model="OPENCV_FISHEYE").cameras[true.id]
        err = lens_angular_error_deg(true, guess.model, guess.params, n=TRAIN_SIZE)
        lines[key] = [f"| {key} | the guess (start) | {np.median(err):.3f} / {np.percentile(err, 99):.3f} / "
                      f"{err.max():.3f} | | | | | |"]
        jobs += [(key, (run, fisheye, undistorted, true, _training_config(run))) for run in TRAIN_RUNS]
    names = {"true": "true lens, not calibrated (reference)", "field": "LENS_FIELD from the guess",
             "fisheye": "OPENCV_FISHEYE from the guess", "undistort": "undistort with the true lens, train PINHOLE"}
    with ProcessPoolExecutor(2) as pool:  # two single-threaded runs at a time
        for (key, _), (run, out, seconds) in zip(jobs, pool.map(_training_run, [job for _, job in jobs])):
            report.rows.append(Row(f"{TRAIN_ITERATIONS} CPU steps (one thread) + scoring, {key}: {names[run]} "
                                   f"({out['splats']} splats)", seconds))
            if "angles" in out:
                err = out["angles"]
                angles = f"{np.median(err):.3f} / {np.percentile(err, 99):.3f} / {err.max():.3f}"
            else:
                angles = f"true lens on {100 * out['centre_share']:.0f} % of the image, none outside"
            name = names[run] + (f" (held-out PSNR {out['pinhole_test_psnr']:.2f} on its perspective photos)"
                                 if "pinhole_test_psnr" in out else "")
            ba = out.get("tracks") or {}
            lines[key].append(f"| {key} | {name} | {angles} | "
                              + " | ".join(f"{out[f'{r}_psnr']:.2f} / {out[f'{r}_ssim']:.3f}"
                                           for r in ("all", "centre", "periphery"))
                              + f" | {out['train_psnr']:.2f} | "
                              + (f"{ba['tracks']} / {ba['rms_before_px']:.2f} -> {ba['rms_after_px']:.2f}" if ba
                                 else "-") + " |")
    photo = PHOTO_SCALE * TRAIN_SIZE
    refine = _training_config("true").densify
    refine_steps = [k for k in range(refine.start + 1, min(refine.stop, TRAIN_ITERATIONS // 2))
                    if k % refine.every == 0]  # the trainer stops refining at half the run
    report.notes += [
        f"Training on generated fisheye rooms ({TRAIN_VIEWS} views; photos {photo}x{photo} trained at "
        f"{TRAIN_SIZE}x{TRAIN_SIZE} (`downscale={PHOTO_SCALE}`), SIFT feature tracks from the full-size photos; every "
        f"{TRAIN_TEST_EVERY}th view held out; {TRAIN_ITERATIONS} steps, SH degree 1, densifying at steps "
        f"{', '.join(map(str, refine_steps)) or 'none'}, cubemap rendering for the fisheye runs, true starting poses, "
        f"calibrating focal, pp, distortion and poses with feature tracks when found). Lenses: {'; '.join(crops)}. "
        f"The guess is equidistant OPENCV_FISHEYE with focal +{100 * (FOCAL_ERROR - 1):.0f} %. Lens error: angle "
        f"between the trained and true lens's rays (full size) at the centre of every training pixel "
        f"({TRAIN_SIZE}x{TRAIN_SIZE}), after the best common rotation, degrees (median / "
        f"99th percentile / max; inf: no ray; the reference's LENS_FIELD is the network the trainer fits to the true "
        f"grid). PSNR / SSIM on the held-out fisheye photos at the training size after test-pose refinement, over "
        f"the whole image, the centre the perspective crop holds and the periphery outside it (the undistort run's "
        f"splats rendered "
        f"through the true fisheye lens). Issue targets: median < 0.05 deg, 99th percentile < 0.2 deg, held-out PSNR "
        f"within 0.5 dB of the reference.", "",
        "| lens | run | lens error deg median / p99 / max | held-out PSNR / SSIM all | centre | periphery | "
        "train PSNR | tracks / BA RMS px |", "|---|---|---|---:|---:|---:|---:|---|",
        *[line for key in lines for line in lines[key]], ""]


def run() -> Report:
    report = Report("wide lenses: learned-lens accuracy from tracks, training-step cost, training accuracy against "
                    "undistort-then-train (CPU)")
    _accuracy(report)
    _step_cost(report)
    _training(report)
    return report
