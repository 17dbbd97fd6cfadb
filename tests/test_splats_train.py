"""Splat training on a generated scene: camera recovery, the `train` command end to end, bad input, NaN loss,
cancel and resume."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from engine.bundle import read_bundle
from engine.pose import rotation_angle_deg
from engine.splats.densify import DensifyConfig
from bench.bench_splats import generate_scene, perturb


@pytest.fixture(scope="module")
def room(tmp_path_factory, addon):
    """A 64x48 room bundle with 10 views and ~8k points from the depth maps."""
    return generate_scene(tmp_path_factory.mktemp("splats") / "room")


@pytest.fixture
def one_thread():
    """Tests run beside other work on 2 cores: one torch thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(**kw):
    from engine.splats.train import TrainConfig

    base = dict(iterations=300, sh_degree=1, sh_every=100, test_every=5, eval_every=0, eval_pose_steps=20,
                calib_start=30, calib_ramp=20, densify=DensifyConfig(stop=0), log_every=10, tracks="off")
    base.update(kw)
    return TrainConfig(**base)


def camera_errors(result, truth):
    cam = next(iter(result.cameras.values()))
    focal = cam.params[0] / truth.cameras[cam.id].params[0] - 1
    rot = [rotation_angle_deg(result.poses[im.id][:3, :3], im.cam_from_world[:3, :3]) for im in truth.images]
    return abs(focal), float(np.mean(rot))


def test_training_recovers_perturbed_focal_and_poses(room, one_thread):
    """Photometric calibration alone (64x48 gives too few feature tracks): clearly towards the truth."""
    from engine.splats.train import train

    truth = read_bundle(room)
    start = perturb(truth, focal=1.08, rotation_deg=1.5)
    calibrated = train(start, small_config(calibrate=("focal", "pose")))
    fixed = train(start, small_config(calibrate=()))
    focal_err, rot_err = camera_errors(calibrated, truth)
    print(f"focal error {100 * focal_err:.2f} %, mean rotation error {rot_err:.3f} deg, "
          f"train PSNR {calibrated.metrics['train_psnr']:.2f} vs {fixed.metrics['train_psnr']:.2f} dB uncalibrated")
    # partial at 64x48 in 300 steps without tracks (see bench_splats), but clearly towards the truth
    assert focal_err < 0.06 and rot_err < 1.0  # from 8 % and 1.5 deg
    assert calibrated.metrics["train_psnr"] > fixed.metrics["train_psnr"] + 2.0
    assert camera_errors(fixed, truth) == pytest.approx((0.08, 1.5), rel=1e-4)  # nothing moves uncalibrated


@pytest.fixture(scope="module")
def room_128(tmp_path_factory, addon):
    """A 128x96 room with 16 views: enough texture and overlap for feature tracks."""
    return generate_scene(tmp_path_factory.mktemp("splats128") / "room", views=16, size=(128, 96), point_step=8)


def test_tracks_calibrate_focal_and_poses(room_128, one_thread):
    """Real SIFT tracks on a 128x96 room: the bundle adjustment before training fits them (reprojection RMS at least
    halved) and moves focal and rotations towards the truth, and the held-out views are registered on its points;
    once it fits, the intrinsics learn at lr_intrinsics_after_tracks of their rates and the orientations at
    lr_rotations_after_tracks of theirs (0: kept), while camera centres keep learning; see bench_splats for what
    full runs reach."""
    from engine.splats.train import Trainer

    truth = read_bundle(room_128)
    start = perturb(truth, focal=1.08, rotation_deg=1.5)
    config = small_config(iterations=60, calibrate=("focal", "pose"), tracks="on", test_every=6, calib_start=10,
                          calib_ramp=10, lr_intrinsics_after_tracks=0.25)
    trainer = Trainer(start, config)
    full_rates = trainer._schedules()
    ba = trainer.calibrate_from_tracks()
    assert trainer.tracks_trusted() and trainer.state()["track_report"] == ba  # checkpoints keep what it decided
    # held-out views are registered on the adjusted track points (their observations never enter the adjustment)
    held, trained = ([rotation_angle_deg(trainer.rig.cam_from_world(i).detach().double().numpy()[:3, :3],
                                         truth.images[i].cam_from_world[:3, :3]) for i in ids]
                     for ids in (trainer.test_ids, trainer.train_ids))
    print(f"held-out rotation errors after registration {np.round(held, 3)} deg; training views "
          f"{np.round(trained, 3)}; {ba['held_out']}")
    assert ba["held_out"]["images"] == len(trainer.test_ids) == 3
    assert ba["held_out"]["rms_after_px"] < ba["held_out"]["rms_before_px"] / 2
    assert max(held) < 1.0 and np.mean(held) < np.mean(trained) + 0.25  # from 1.5 deg: as close as the trained views
    rates = trainer._schedules()
    assert rates["focal"](40) == pytest.approx(0.25 * full_rates["focal"](40)) and rates["focal"](40) > 0
    assert rates["pose"](40) == full_rates["pose"](40)
    adjusted = trainer.rig.pose.detach().clone()
    loose = trainer.train_ids[0]  # a view the tracks no longer see: its orientation keeps learning photometrically
    observations = trainer.tracks.observation_state()
    seen = observations["image"] != loose
    trainer.tracks.restore_observations({k: v[seen] if k in ("track", "image", "pixels") else v
                                         for k, v in observations.items()})
    pinned = torch.nonzero(trainer.rotations_from_tracks())[:, 0].tolist()  # >= MIN_TRACK_OBSERVATIONS each
    assert set(pinned) <= set(trainer.train_ids) - {loose} and len(pinned) >= len(trainer.train_ids) - 3
    while trainer.step < config.iterations:
        trainer.train_step()
    moved = (trainer.rig.pose.detach() - adjusted).abs()
    assert torch.equal(moved[pinned, :3], torch.zeros_like(moved[pinned, :3]))  # centres only
    assert moved[pinned, 3:].min() > 0 and moved[loose, :3].min() > 0
    trainer.evaluate()
    focal_err, rot_err = camera_errors(trainer.result(), truth)
    print(f"focal error {100 * focal_err:.3f} %, mean rotation error {rot_err:.3f} deg; tracks {ba}")
    assert ba["tracks"] > 100 and ba["rms_after_px"] < ba["rms_before_px"] / 2  # SIFT threads vary the tracks
    assert focal_err < 0.075 and rot_err < 1.0  # from 8 % and 1.5 deg


def run_engine(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "engine", "--progress", "jsonl", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_train_command_says_what_the_track_adjustment_keeps(room_128, tmp_path):
    proc = run_engine("train", room_128, "--out", tmp_path / "trained", "--iters", 2, "--calibrate", "focal,pose",
                      "--tracks", "on", "--rotations-after-tracks", "0.5", "--test-every", 6, "--eval-pose-steps", 1,
                      "--threads", 1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [e["message"] for e in events(proc.stdout) if e["event"] == "log" and "adjustment fits" in e["message"]]
    assert len(said) == 1 and "intrinsics at 0x" in said[0], said
    assert re.search(r"orientations of 1[0-3] of 13 training views at 0\.5x their learning rates", said[0]), said


def test_train_command_writes_bundle_splats_and_curves(room, tmp_path):
    from engine.splats.ply import read_splats

    source = (room / "scene.json").read_bytes()
    out = tmp_path / "trained"
    proc = run_engine("train", room, "--out", out, "--iters", 12, "--sh-degree", 2, "--test-every", 5,
                      "--eval-every", 6, "--eval-pose-steps", 2, "--threads", 1, "--lens", "radial")
    assert proc.returncode == 0, proc.stderr[-2000:]
    evs = events(proc.stdout)
    result = evs[-1]["result"]
    assert any(e["event"] == "log" and "step 6, test PSNR" in e["message"] for e in evs)
    assert any(e["event"] == "progress" and "PSNR" in (e["message"] or "") for e in evs)
    scene = read_bundle(out)
    assert scene.extras["splats"] == "splats.ply" and result["splats"] == str(out / "splats.ply")
    splats = read_splats(out / "splats.ply")
    assert splats.sh_degree == 2 and len(splats) == len(read_bundle(room).points)
    cam = next(iter(scene.cameras.values()))
    assert cam.model == "RADIAL"  # PINHOLE with fx == fy, converted for --lens radial (exactly: k = 0 at start)
    assert "converted to RADIAL (exact)" in " ".join(result["notes"])
    curves = json.loads((out / "training" / "curves.json").read_text())
    assert [row["step"] for row in curves["eval"]] == [6, 12]
    csv_lines = (out / "training" / "curves.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,") and "test_psnr" in csv_lines[0]
    assert [int(line.split(",")[0]) for line in csv_lines[1:]] == [6, 10, 12]  # evaluations and curve samples
    assert scene.extras["training"]["metrics"]["iterations"] == 12
    assert not (tmp_path / "trained.train.pt").exists()  # checkpoint removed after success
    assert (room / "scene.json").read_bytes() == source and not (room / "splats.ply").exists()  # input untouched


def test_train_in_place_keeps_other_bundle_files(room, tmp_path):
    import shutil

    bundle = tmp_path / "copy"
    shutil.copytree(room, bundle)
    (bundle / "depth").mkdir()
    (bundle / "depth" / "note.npy").write_bytes(b"kept")
    proc = run_engine("train", bundle, "--iters", 3, "--test-every", 0, "--threads", 1, "--calibrate", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (bundle / "depth" / "note.npy").read_bytes() == b"kept"
    assert (bundle / "splats.ply").is_file() and read_bundle(bundle).points is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no staging or checkpoint left behind


def test_bad_input_gives_clear_errors(room, tmp_path):
    import shutil

    from engine.bundle import write_bundle
    from engine.errors import BundleError, EngineError
    from engine.splats.train import TrainConfig, Trainer

    scene = read_bundle(room)
    empty = read_bundle(room)
    empty.images = []
    with pytest.raises(BundleError, match="no images"):
        Trainer(empty, TrainConfig(iterations=1))
    with pytest.raises(EngineError, match="intrinsics after tracks must be 0 or more, got -0.5"):
        Trainer(scene, TrainConfig(iterations=1, lr_intrinsics_after_tracks=-0.5))
    with pytest.raises(EngineError, match="rotations after tracks must be 0 or more, got nan"):
        Trainer(scene, TrainConfig(iterations=1, lr_rotations_after_tracks=float("nan")))
    proc = run_engine("train", room, "--iters", 1, "--intrinsics-after-tracks", "-1")
    assert proc.returncode == 2 and "must be 0 or more, got -1.0" in events(proc.stdout)[-1]["message"]
    # a photo missing on disk: the command names the image file
    broken = tmp_path / "broken"
    shutil.copytree(room, broken)
    gone = read_bundle(broken).images[2].path
    gone.unlink()
    proc = run_engine("train", broken, "--iters", 2)
    assert proc.returncode == 2 and gone.name in events(proc.stdout)[-1]["message"]
    # photo size disagrees with its camera
    wrong = read_bundle(room)
    next(iter(wrong.cameras.values())).width = 80
    with pytest.raises(BundleError, match="is 64x48 but its camera 1 is 80x48"):
        Trainer(wrong, TrainConfig(iterations=1))
    # a model whose distortion the trainer cannot learn: clear message, or a documented conversion
    rational = read_bundle(room)
    cam = next(iter(rational.cameras.values()))
    fx, fy, cx, cy, _ = cam.split()
    cam.model, cam.params = "FULL_OPENCV", [fx, fy, cx, cy, -0.05, 0.01, 0, 0, 0, 0.02, 0, 0]
    with pytest.raises(EngineError, match="cannot learn FULL_OPENCV distortion.*--lens opencv"):
        Trainer(rational, TrainConfig(iterations=1))
    fixed_lens = Trainer(rational, TrainConfig(iterations=1, calibrate=("focal", "pose")))
    assert fixed_lens.rig.cameras[0].model == "FULL_OPENCV"  # rendered through, not learned
    converted = Trainer(rational, TrainConfig(iterations=1, lens="opencv"))
    assert converted.rig.cameras[0].model == "OPENCV"
    assert "FULL_OPENCV converted to OPENCV (least-squares fit, RMS" in converted.notes[0]
    out = tmp_path / "unlearnable"
    write_bundle(rational, out)
    proc = run_engine("train", out, "--iters", 2)
    assert proc.returncode == 2 and "FULL_OPENCV" in events(proc.stdout)[-1]["message"]
    proc = run_engine("train", room, "--calibrate", "focal,zoom")
    assert proc.returncode == 2 and "unknown zoom" in proc.stderr


def test_random_initialisation_fills_the_frusta(room):
    from engine.projection import project
    from engine.splats.train import TrainConfig, Trainer

    scene = read_bundle(room)
    scene.points = None
    trainer = Trainer(scene, TrainConfig(iterations=1, random_init=3000))
    means = trainer.params["means"].detach().double()
    seen = torch.zeros(len(means), dtype=torch.int64)
    for image in scene.images:
        cam = scene.camera_of(image)
        pose = torch.from_numpy(image.cam_from_world)
        points = means @ pose[:3, :3].T + pose[:3, 3]
        pixels, valid = project(cam.model, cam.params, points)
        inside = valid & (points[:, 2] > 0) & (pixels >= 0).all(-1) & (pixels[:, 0] < cam.width) & (
            pixels[:, 1] < cam.height)
        seen += inside.long()
    assert len(means) == 3000 and bool((seen >= 1).all())  # every random splat lies in some view
    depths = torch.linalg.vector_norm(means - means.mean(0), dim=-1)
    assert float(depths.max()) < 2 * trainer.rig.scene_scale


def test_nan_loss_stops_and_keeps_last_good_checkpoint(room, tmp_path, one_thread):
    from engine.splats import metrics
    from engine.splats.train import TrainingDiverged, train

    calls = {"n": 0}

    def poisoned(render, target, weight):
        calls["n"] += 1
        loss = metrics.photometric_loss(render, target, weight)
        return loss * float("nan") if calls["n"] == 13 else loss

    checkpoint = tmp_path / "run.train.pt"
    with pytest.raises(TrainingDiverged, match=r"step 13 .*loss is nan.*last good checkpoint .*run\.train\.pt kept"):
        train(read_bundle(room), small_config(iterations=40, checkpoint_every=5), checkpoint=checkpoint,
              loss_fn=poisoned)
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 10 and all(torch.isfinite(v).all() for v in state["params"].values())


def test_cancel_keeps_outputs_and_resume_finishes(room, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(room, bundle)
    before = (bundle / "scene.json").read_bytes()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "engine", "--progress", "jsonl", "train", str(bundle), "--iters",
                             "100000", "--checkpoint-every", "4", "--eval-every", "0", "--threads", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["done"] >= 10:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert events(rest)[-1] == {"event": "error", "kind": "cancelled", "message": "cancelled by the user"}
    assert (bundle / "scene.json").read_bytes() == before and not (bundle / "splats.ply").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.train.pt"]
    saved = torch.load(tmp_path / "bundle.train.pt", weights_only=True)["step"]
    assert saved >= 10
    proc = run_engine("train", bundle, "--iters", saved + 3, "--resume", "--eval-every", "0", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    evs = events(proc.stdout)
    assert any(e["event"] == "log" and "resumed from" in e["message"] and f"at step {saved}" in e["message"]
               for e in evs)
    assert evs[-1]["result"]["metrics"]["iterations"] == saved + 3
    assert read_bundle(bundle).extras["splats"] == "splats.ply"


def test_density_control_stops_at_half_the_run(room, one_thread):
    """Splats split in the last steps would be scored and saved before they fit anything: refinement ends at half
    the run (3DGS: 15k of 30k steps) whatever DensifyConfig.stop says."""
    from engine.splats.train import Trainer

    config = small_config(iterations=40, densify=DensifyConfig(start=5, every=5, stop=10_000, grad_threshold=1e-6))
    trainer = Trainer(read_bundle(room), config)
    counts = [trainer.gaussian_count()]
    for _ in range(40):
        trainer.train_step()
        counts.append(trainer.gaussian_count())
    assert len(set(counts[:21])) > 1 and len(set(counts[21:])) == 1, counts
