"""Track constraints for self-calibration (engine.splats.track_loss): the reprojection loss and the bundle
adjustment that runs before the splats train, on synthetic tracks of a known rig."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.bundle import Camera
from engine.errors import EngineError
from engine.pose import rotation_angle_deg
from engine.projection import project
from engine.splats.cameras import CameraRig, se3_exp
from engine.splats.track_loss import TrackLoss, bundle_adjust, register_images

TRUE = Camera(1, "RADIAL", 256, 192, [220.0, 130.0, 94.0, -0.06, 0.01])


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    rot = np.stack([x, np.cross(z, x), z])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot, -rot @ centre
    return pose


def synthetic_scene(noise_px: float, seed: int = 0):
    """12 cameras on a ring looking at a box of 400 points, and the tracks they see (pixel noise `noise_px`)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([-1.5, -1.5, -0.5], [1.5, 1.5, 1.5], (400, 3))
    poses = np.stack([_look_at(np.array([4 * math.cos(a), 4 * math.sin(a), 1.0 + 0.5 * math.sin(3 * a)]),
                               np.zeros(3)) for a in np.linspace(0, 2 * math.pi, 12, endpoint=False)])
    track, image, pixels = [], [], []
    for i, pose in enumerate(poses):
        cam_pts = points @ pose[:3, :3].T + pose[:3, 3]
        uv, ok = project(TRUE.model, TRUE.params, torch.from_numpy(cam_pts))
        uv = uv.numpy()
        ok = ok.numpy() & (uv > 0).all(1) & (uv[:, 0] < TRUE.width) & (uv[:, 1] < TRUE.height)
        idx = np.nonzero(ok)[0]
        track.append(idx)
        image.append(np.full(len(idx), i))
        pixels.append(uv[idx] + rng.normal(0, noise_px, (len(idx), 2)))
    tracks = SimpleNamespace(xyz=points + rng.normal(0, 0.03, points.shape), track=np.concatenate(track),
                             image=np.concatenate(image), pixels=np.concatenate(pixels))
    return points, poses, tracks


def perturbed_rig(poses: np.ndarray, seed: int = 1) -> CameraRig:
    """The rig starting 10 % long in focal, 4 px off in principal point, without distortion, rotations 1 deg off."""
    rng = np.random.default_rng(seed)
    start = Camera(1, "RADIAL", 256, 192, [242.0, 132.0, 97.0, 0.0, 0.0])
    wrong = []
    for pose in poses:
        axis = rng.normal(size=3)
        axis *= math.radians(1.0) / np.linalg.norm(axis)
        wrong.append(se3_exp(torch.tensor(np.r_[axis, 0, 0, 0])).numpy() @ pose)
    return CameraRig([start], [0] * len(poses), np.stack(wrong), scene_scale=4.0, dtype=torch.float64)


def test_bundle_adjustment_recovers_intrinsics_distortion_and_rotations():
    _, poses, tracks = synthetic_scene(noise_px=0.3)
    rig = perturbed_rig(poses)
    loss = TrackLoss(tracks, range(len(poses)), dtype=torch.float64)
    report = bundle_adjust(rig, loss, ("focal", "pp", "distortion", "pose"), iterations=150)
    assert report["rms_before_px"] > 5 and report["rms_after_px"] < 0.45  # noise 0.3 px per axis: 0.42 px RMS
    f, cx, cy, k1, k2 = rig.export_cameras()[0].params
    assert abs(f / 220.0 - 1) < 0.004 and math.hypot(cx - 130, cy - 94) < 1.0
    # the intrinsic map (focal, centre, distortion together) over the image
    grid = torch.stack(torch.meshgrid(torch.linspace(0.1, 0.9, 9), torch.linspace(0.1, 0.9, 9), indexing="xy"),
                       -1).reshape(-1, 2).double() * torch.tensor([256.0, 192.0], dtype=torch.float64)
    rays = torch.cat([(grid - torch.tensor([130.0, 94.0])) / 220.0, torch.ones(len(grid), 1)], 1)
    true_px, _ = project("RADIAL", TRUE.params, rays)
    est_px, _ = project("RADIAL", [f, cx, cy, k1, k2], rays)
    start_px, _ = project("RADIAL", [242.0, 132.0, 97.0, 0.0, 0.0], rays)
    rms = float((true_px - est_px).norm(dim=-1).square().mean().sqrt())
    print(f"focal {100 * (f / 220 - 1):.3f} %, pp {cx - 130:.2f} {cy - 94:.2f} px, k {k1:.4f} {k2:.4f}, intrinsic map "
          f"RMS {rms:.2f} px (start {float((true_px - start_px).norm(dim=-1).square().mean().sqrt()):.1f} px)")
    # the principal point trades against the rotations at 0.3 px noise: most of what remains is that offset
    assert rms < 1.0
    # rotations, up to the free global gauge (remove the best common rotation first)
    est = rig.export_poses()
    u, _, vt = np.linalg.svd(sum(p[:3, :3].T @ e[:3, :3] for p, e in zip(poses, est)))
    gauge = u @ vt
    errors = [rotation_angle_deg(e[:3, :3], p[:3, :3] @ gauge) for p, e in zip(poses, est)]
    # a tilt of the camera and a vertical principal point shift look alike on this compact object (0.5 px of cy is
    # 0.13 deg), so the rotations are as good as the principal point
    assert max(errors) < 0.3, errors
    assert float(np.mean(errors)) < 0.2


def test_calibrating_nothing_moves_only_the_track_points():
    _, poses, tracks = synthetic_scene(noise_px=0.0)
    rig = perturbed_rig(poses)
    before = [p.detach().clone() for p in rig.parameters()]
    loss = TrackLoss(tracks, range(len(poses)), dtype=torch.float64)
    xyz0 = loss.xyz.detach().clone()
    bundle_adjust(rig, loss, (), iterations=20)
    assert all(torch.equal(a, b) for a, b in zip(before, rig.parameters()))
    assert not torch.equal(xyz0, loss.xyz.detach())


def test_held_out_images_and_lonely_observations_are_dropped():
    _, poses, tracks = synthetic_scene(noise_px=0.0)
    loss = TrackLoss(tracks, [0, 1, 2], dtype=torch.float64)
    assert set(loss.images.tolist()) <= {0, 1, 2}
    counts = torch.bincount(loss.track)
    assert int(counts.min()) >= 3  # every kept track is seen by three training images
    rig = perturbed_rig(poses)
    residuals, valid = loss.residuals(rig)
    assert residuals.shape == (loss.observations, 2) and bool(valid.all())
    with pytest.raises(EngineError, match="3 or more training images"):
        TrackLoss(tracks, [4, 5], dtype=torch.float64)


def test_held_out_views_register_on_the_adjusted_points():
    """Two views kept out of the adjustment get their rotations from its points; nothing else moves."""
    _, poses, tracks = synthetic_scene(noise_px=0.0)
    held_out, rng = [3, 7], np.random.default_rng(2)
    wrong = []
    for pose in poses:
        axis = rng.normal(size=3)
        wrong.append(se3_exp(torch.tensor(np.r_[axis * math.radians(2.0) / np.linalg.norm(axis), 0, 0, 0])).numpy()
                     @ pose)
    rig = CameraRig([TRUE], [0] * len(poses), np.stack(wrong), scene_scale=4.0, dtype=torch.float64)
    loss = TrackLoss(tracks, [i for i in range(len(poses)) if i not in held_out], dtype=torch.float64)
    bundle_adjust(rig, loss, ("pose",), iterations=50)
    trained = rig.pose.detach().clone()
    assert register_images(rig, loss, tracks, held_out, min_observations=10 ** 6) == {"images": 0,
                                                                                       "observations": 0}
    assert torch.equal(rig.pose, trained)  # too few observations: poses kept
    report = register_images(rig, loss, tracks, held_out)
    assert report["images"] == 2 and report["rms_before_px"] > 3 and report["rms_after_px"] < 1e-3
    est = rig.export_poses()
    errors = [rotation_angle_deg(est[i][:3, :3], poses[i][:3, :3]) for i in range(len(poses))]
    assert max(errors) < 1e-3, errors  # the adjustment's rotations, then the registered views'
    others = [i for i in range(len(poses)) if i not in held_out]
    # (central differences perturb every pose at once and restore them to round-off)
    assert torch.allclose(rig.pose[others], trained[others], rtol=0, atol=1e-12)
    assert torch.allclose(rig.pose[held_out, 3:], trained[held_out, 3:], rtol=0, atol=1e-12)


def test_loss_gradient_reaches_every_calibrated_quantity():
    _, poses, tracks = synthetic_scene(noise_px=0.0)
    rig = perturbed_rig(poses)
    loss = TrackLoss(tracks, range(len(poses)), dtype=torch.float64)
    loss(rig).backward()
    for name, params in rig.parameter_groups().items():
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params), name
    assert float(loss.xyz.grad.abs().sum()) > 0


def test_bundle_adjustment_converges_from_far_and_drops_mismatches():
    """From focal +20 % and rotations 2 deg off, with 4 % of the observations replaced by mismatches 3-15 px off:
    graduated Cauchy scales and the outlier filter between two adjustments find the truth (noise-free inliers), and
    exactly the mismatches go."""
    _, poses, tracks = synthetic_scene(noise_px=0.0, seed=2)
    rng = np.random.default_rng(5)
    bad = rng.choice(len(tracks.pixels), len(tracks.pixels) // 25, replace=False)
    angle = rng.uniform(0, 2 * math.pi, len(bad))
    tracks.pixels[bad] += rng.uniform(3, 15, (len(bad), 1)) * np.stack([np.cos(angle), np.sin(angle)], 1)
    rng = np.random.default_rng(1)
    wrong = []
    for pose in poses:
        axis = rng.normal(size=3)
        wrong.append(se3_exp(torch.tensor(np.r_[axis * math.radians(2.0) / np.linalg.norm(axis), 0, 0, 0])).numpy()
                     @ pose)
    start = Camera(1, "RADIAL", 256, 192, [264.0, 126.0, 98.0, 0.0, 0.0])
    rig = CameraRig([start], [0] * len(poses), np.stack(wrong), scene_scale=4.0, dtype=torch.float64)
    loss = TrackLoss(tracks, range(len(poses)), dtype=torch.float64, scale_px=0.5)
    report = bundle_adjust(rig, loss, ("focal", "pp", "distortion", "pose"), iterations=100)
    f, cx, cy, k1, k2 = rig.export_cameras()[0].params
    assert abs(f / 220 - 1) < 1e-4 and math.hypot(cx - 130, cy - 94) < 0.02, (f, cx, cy)
    assert abs(k1 + 0.06) < 1e-3 and abs(k2 - 0.01) < 2e-3 and report["rms_after_px"] < 1e-3
    errors = [rotation_angle_deg(e[:3, :3], p[:3, :3]) for p, e in zip(poses, rig.export_poses())]
    assert max(errors) < 1e-3, errors
    # every mismatch went, with at most the rest of tracks it left under three views
    assert report["outliers_dropped"] >= len(bad) and loss.observations >= len(tracks.pixels) - 2 * len(bad)


def test_tracks_calibrate_a_wide_lens_beyond_opencv_fisheye(addon):
    """A 190 deg lens with strong theta^9 / theta^11 terms and decentring, started from an equidistant guess: the
    learned lens (LENS_FIELD) recovers it from feature tracks to the issue's accuracy (median < 0.05 deg, 99th
    percentile < 0.2 deg over the image); OPENCV_FISHEYE (k1..k4) cannot express it."""
    from bench.bench_lens import calibrate_wide_lens, mild_radial
    from scenegen import lenses

    lens = lenses.radial_field_lens(96, 96, 190.0, mild_radial, decentre=(0.002, -0.001))
    true = Camera(1, lens.model, lens.width, lens.height, list(lens.params))
    field = calibrate_wide_lens(true, "LENS_FIELD")
    fisheye = calibrate_wide_lens(true, "OPENCV_FISHEYE")
    print(f"LENS_FIELD median {np.median(field):.4f} p99 {np.percentile(field, 99):.4f} deg; OPENCV_FISHEYE "
          f"median {np.median(fisheye):.4f} p99 {np.percentile(fisheye, 99):.4f} deg")
    assert np.median(field) < 0.05 and np.percentile(field, 99) < 0.2
    assert np.percentile(fisheye, 99) > 3 * np.percentile(field, 99)


def test_a_field_started_narrower_than_the_lens_keeps_its_outermost_rays(addon):
    """Started from an equidistant guess with its focal 6 % long (reaching 60 deg at the image's side where the
    lens, 180 deg corner to corner, reaches 63.6), the adjusted LENS_FIELD has a ray at every pixel of the true lens
    and they agree to a tenth of a degree: the field to be calibrated spans rays beyond its starting camera's
    (CALIBRATION_MARGIN; with FIT_MARGIN the outermost rays end squeezed onto the grid's border, p99 1.2 deg)."""
    from bench.bench_lens import calibrate_wide_lens
    from scenegen import lenses

    lens = lenses.equidistant(96, 96, 180.0)
    err = calibrate_wide_lens(Camera(1, lens.model, lens.width, lens.height, list(lens.params)), "LENS_FIELD",
                              reach_deg=60.0)
    assert np.isfinite(err).all(), f"{int(np.isinf(err).sum())} of {len(err)} pixels lost their ray"
    assert np.percentile(err, 99) < 0.15, np.percentile(err, 99)


def test_a_field_is_held_linear_beyond_the_tracks_reach(addon):
    """Tracks seen only within 45 deg of the axis of a 180 deg equidistant lens (SIFT rarely matches a fisheye's
    periphery): the adjustment reports that reach, measured through the adjusted lens, holds the field's radial
    profile linear beyond it, and the lens it extrapolates there stays within 0.5 deg at the 99th percentile of
    the image (with the degree-13 polynomial free out there: 0.8 deg)."""
    from bench.bench_lens import lens_angular_error_deg, wide_lens_tracks
    from engine.lens_field import CALIBRATION_MARGIN, field_camera
    from scenegen import lenses

    lens = lenses.equidistant(96, 96, 180.0)
    true = Camera(1, lens.model, lens.width, lens.height, list(lens.params))
    poses, tracks = wide_lens_tracks(true, within_deg=45.0)
    f = 48 / math.radians(90 / math.sqrt(2) / 1.05)  # the side's ray 5 % short of the truth's 63.6 deg
    guess = Camera(1, "OPENCV_FISHEYE", 96, 96, [f, f, 48.0, 48.0, 0.0, 0.0, 0.0, 0.0])
    start, field, _ = field_camera(guess, margin=CALIBRATION_MARGIN)
    rig = CameraRig([start], [0] * len(poses), poses, dtype=torch.float64, fields={0: field})
    report = bundle_adjust(rig, TrackLoss(tracks, range(len(poses)), dtype=torch.float64),
                           ("focal", "pp", "distortion", "pose"), iterations=300)
    assert report["field_reach_deg"]["1"] == pytest.approx(45.0, abs=0.5)
    assert field.radial_extent == pytest.approx((math.radians(report["field_reach_deg"]["1"]) / field.radius) ** 2)
    err = lens_angular_error_deg(true, "LENS_FIELD", rig.camera_params(0))
    print(f"median {np.median(err):.4f} p99 {np.percentile(err, 99):.4f} deg")
    assert np.isfinite(err).all() and np.percentile(err, 99) < 0.5


def test_a_field_started_20_percent_long_is_respanned_and_keeps_every_ray(addon):
    """From an equidistant guess with its focal 20 % long (rays 17 % short: beyond what CALIBRATION_MARGIN's grid
    leaves room for), the adjusted lens widens past its grid and the corner pixels lose their rays; the adjustment
    refits the field over a grid spanning the widened lens (`CameraRig.respan_field`), reports it, and ends with a
    ray at every pixel of the true lens, within the issue's accuracy."""
    from bench.bench_lens import lens_angular_error_deg, wide_lens_tracks
    from engine.lens_field import CALIBRATION_MARGIN, field_camera
    from scenegen import lenses

    lens = lenses.equidistant(96, 96, 180.0)
    true = Camera(1, lens.model, lens.width, lens.height, list(lens.params))
    poses, tracks = wide_lens_tracks(true, within_deg=75.0)
    f = 1.2 * 48 / math.radians(90 / math.sqrt(2))
    guess = Camera(1, "OPENCV_FISHEYE", 96, 96, [f, f, 48.0, 48.0, 0.0, 0.0, 0.0, 0.0])
    start, field, _ = field_camera(guess, margin=CALIBRATION_MARGIN)
    radius = field.radius
    rig = CameraRig([start], [0] * len(poses), poses, dtype=torch.float64, fields={0: field})
    report = bundle_adjust(rig, TrackLoss(tracks, range(len(poses)), dtype=torch.float64),
                           ("focal", "pp", "distortion", "pose"), iterations=300)
    assert report["fields_respanned"] == ["1"] and field.radius > 1.1 * radius
    assert rig.fields["0"] is field  # refitted in place: optimisers holding its tensors keep working
    err = lens_angular_error_deg(true, "LENS_FIELD", rig.camera_params(0))
    print(f"median {np.median(err):.4f} p99 {np.percentile(err, 99):.4f} deg")
    assert np.isfinite(err).all(), f"{int(np.isinf(err).sum())} of {len(err)} pixels without a ray"
    assert np.median(err) < 0.05 and np.percentile(err, 99) < 0.2
