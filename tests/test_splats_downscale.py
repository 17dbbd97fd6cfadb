"""Training on shrunk photos (`TrainConfig.downscale`): exact camera scaling, pixel alignment of the shrunk photos,
full-size feature tracks brought to the training size, and cameras returned at the bundle's size."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.bundle import Camera, Image, Scene, read_bundle
from engine.errors import EngineError
from engine.projection import project
from engine.splats.train import (Trainer, TrainConfig, downscale_scene, scaled_camera, train,
                                 training_downscale)
from bench.bench_splats import generate_scene


def _scene(width: int, height: int, model: str = "RADIAL", params=(100.0, 50.5, 40.25, -0.05, 0.01)) -> Scene:
    cam = Camera(1, model, width, height, list(params))
    return Scene(cameras={1: cam}, images=[Image(1, "a.png", 1, np.eye(4))])


def test_scaled_camera_projects_to_scaled_pixels():
    """In COLMAP's pixel convention a camera for an image f times smaller sees every point at pixel / f."""
    cam = _scene(201, 101).cameras[1]
    small = scaled_camera(cam, 1 / 2, 100, 50)
    points = torch.tensor([[0.3, -0.2, 2.0], [-0.5, 0.4, 1.5], [0.0, 0.0, 3.0]], dtype=torch.float64)
    big_px, _ = project(cam.model, cam.params, points)
    small_px, _ = project(small.model, small.params, points)
    assert torch.allclose(small_px, big_px / 2, atol=1e-9)
    assert (small.width, small.height) == (100, 50) and small.params[3:] == cam.params[3:]
    back = scaled_camera(small, 2, 201, 101)
    assert back.params == pytest.approx(cam.params, abs=1e-12) and (back.width, back.height) == (201, 101)
    field = Camera(2, "LENS_FIELD", 64, 64, [30.0, 30.0, 32.0, 32.0, 1.7, 2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert scaled_camera(field, 0.5, 32, 32).params == [15.0, 15.0, 16.0, 16.0, *field.params[4:]]


def test_shrunk_photos_keep_pixel_alignment():
    """A bright 2x2 block of the full-size photo lands on exactly one pixel of the half-size photo; the odd last
    row and column are cropped (which leaves the intrinsics alone)."""
    scene = _scene(9, 7)
    photo = np.zeros((7, 9, 3), np.uint8)
    photo[4:6, 2:4] = 200
    small, (shrunk,) = downscale_scene(scene, [photo], 2)
    assert shrunk.shape == (3, 4, 3) and small.cameras[1].width == 4 and small.cameras[1].height == 3
    assert np.argwhere(shrunk[..., 0] > 0).tolist() == [[2, 1]] and shrunk[2, 1, 0] == 200
    assert scene.cameras[1].width == 9  # the input scene is untouched
    with pytest.raises(EngineError, match="cannot be shrunk 16 times"):
        downscale_scene(scene, [photo], 16)


def test_automatic_downscale_follows_the_widest_camera():
    assert training_downscale(_scene(1600, 1200), 0) == 1
    assert training_downscale(_scene(4000, 3000), 0) == 3
    assert training_downscale(_scene(4000, 3000), 1) == 1
    with pytest.raises(EngineError, match="downscale must be a positive integer"):
        training_downscale(_scene(100, 100), -2)


@pytest.fixture(scope="module")
def room(tmp_path_factory, addon):
    """A 128x96 room bundle with 12 views (RADIAL camera)."""
    return generate_scene(tmp_path_factory.mktemp("downscale") / "room", views=12, size=(128, 96), model="RADIAL",
                          extra=(-0.05, 0.01), point_step=16)


def test_training_at_half_size_returns_full_size_cameras(room, tmp_path):
    torch.set_num_threads(1)
    truth = read_bundle(room)
    config = TrainConfig(iterations=20, downscale=2, calibrate=(), tracks="off", sh_degree=0, test_every=5,
                         eval_every=0, eval_pose_steps=0)
    trainer = Trainer(truth, config, checkpoint=tmp_path / "run.pt")
    assert trainer.targets[0].shape == (48, 64, 3) and trainer.rig.cameras[0].width == 64
    assert any("2x smaller" in note for note in trainer.notes)
    result = trainer.result()
    cam, true = result.cameras[1], truth.cameras[1]
    assert (cam.width, cam.height) == (true.width, true.height)
    assert cam.params == pytest.approx(true.params, abs=1e-4)
    trainer.save_checkpoint()
    other = Trainer(truth, dataclasses.replace(config, downscale=1), checkpoint=tmp_path / "run.pt")
    with pytest.raises(EngineError, match="2x smaller; this run shrinks them 1x"):
        other.load_checkpoint()


def test_full_size_tracks_fit_the_training_size_cameras(room):
    """Tracks found on the 128x96 photos, scaled to the 64x48 training photos, fit the true cameras there to a
    fraction of a training pixel (a wrong scale or half-pixel shift would show as pixels), and calibration from a
    10 % focal error comes back at full size close to the truth."""
    from bench.bench_splats import perturb

    torch.set_num_threads(1)
    truth = read_bundle(room)
    config = TrainConfig(iterations=1, downscale=2, lens="radial", tracks="on", sh_degree=0, test_every=5,
                         eval_every=0, eval_pose_steps=0, calib_start=0, calib_ramp=1)
    trainer = Trainer(truth, dataclasses.replace(config, calibrate=("focal",)))
    report = trainer.calibrate_from_tracks()
    assert report["rms_before_px"] < 0.35, report
    start = perturb(truth, focal=1.1)
    result = train(start, dataclasses.replace(config, calibrate=("focal", "pp", "distortion")))
    fx = result.cameras[1].params[0]
    assert abs(fx / truth.cameras[1].params[0] - 1) < 0.01 and result.cameras[1].width == 128
