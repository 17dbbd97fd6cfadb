"""Training with a learned lens on a fisheye scene: `engine train --lens auto` picks LENS_FIELD and the cubemap,
writes the field (grid in scene.json, network file in the bundle), and `engine unproject` reads it back."""
from __future__ import annotations

import numpy as np
import torch

from engine.bundle import read_bundle
from test_splats_train import events, run_engine


def test_train_lens_auto_on_a_fisheye_scene_writes_the_learned_lens(addon, tmp_path):
    import bpy

    from scenegen.generate import generate_fisheye

    bpy.ops.wm.read_homefile(use_empty=True)
    source = generate_fisheye(tmp_path / "fisheye", "equidistant", size=48, n_views=4, samples=4, n_points=3000)
    out = tmp_path / "trained"
    proc = run_engine("train", source, "--out", out, "--iters", "6", "--lens", "auto", "--sh-degree", "0",
                      "--test-every", "0", "--eval-pose-steps", "0", "--tracks", "off", "--calibrate", "none",
                      "--device", "cpu",
                      "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = " ".join(e.get("message", "") for e in events(proc.stdout) if e.get("event") == "log")
    assert "converted to LENS_FIELD" in logs and "cubemap" in logs
    trained = read_bundle(out)
    cam = trained.cameras[1]
    assert cam.model == "LENS_FIELD" and cam.lens_network is not None and cam.lens_network.is_file()
    assert cam.lens_network.parent.parent == out.resolve()  # copied into the bundle

    # not calibrated here: the field fitted to the equidistant lens sees its rays to a fraction of a pixel
    truth = read_bundle(source).cameras[1]
    pixels = np.stack(np.meshgrid(np.arange(4, 44, 4) + 0.5, np.arange(4, 44, 4) + 0.5), -1).reshape(-1, 2)
    np.save(tmp_path / "pixels.npy", pixels)
    proc = run_engine("unproject", out, "--camera", "1", "--pixels", tmp_path / "pixels.npy", "--out",
                      tmp_path / "rays.npy")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rays = np.load(tmp_path / "rays.npy")
    from engine.projection import unproject_directions

    expected, ok = unproject_directions(truth.model, truth.params, torch.from_numpy(pixels))
    good = ok.numpy() & np.isfinite(rays).all(1)
    assert good.sum() > 0.6 * len(pixels)
    angle = np.degrees(np.arccos(np.clip((rays[good] * expected.numpy()[good]).sum(1), -1, 1)))
    assert np.median(angle) < 0.4 and angle.max() < 1.0  # one pixel of this 48 px, 180 deg lens is 3.75 deg


def test_a_checkpoint_keeps_the_lens_field_the_track_adjustment_changed(addon, tmp_path):
    """The track adjustment may refit a field over a wider grid and hold its radial profile (radius, extent and
    intrinsics outside the network's weights): a resumed run continues with exactly that lens."""
    import bpy

    from engine.splats.train import Trainer, TrainConfig
    from scenegen.generate import generate_fisheye

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = read_bundle(generate_fisheye(tmp_path / "fisheye", "equidistant", size=48, n_views=3, samples=2,
                                         n_points=2000))
    config = TrainConfig(iterations=4, lens="field", tracks="off", test_every=0, sh_degree=0)
    trainer = Trainer(scene, config, tmp_path / "run.ckpt")
    trainer.rig.respan_field(0, 1.3)
    trainer.rig.fields["0"].hold_radial_beyond(0.5)
    trainer.save_checkpoint()
    resumed = Trainer(scene, config, tmp_path / "run.ckpt")
    resumed.load_checkpoint()
    assert resumed.rig.fields["0"].geometry() == trainer.rig.fields["0"].geometry()
    assert torch.equal(resumed.rig.camera_params(0).detach(), trainer.rig.camera_params(0).detach())
