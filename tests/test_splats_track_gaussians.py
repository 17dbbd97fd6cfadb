"""Track Gaussians (engine.splats.track_gaussians): one small splat per feature track whose mean is the track point,
kept small by the scale loss, outside the density control, kept by checkpoints and written with the splats.

On a generated 64x48 room with exact surface tracks (SIFT finds too few at that size): points from the depth maps,
observed in every view where the depth map shows them unoccluded, 0.3 px noise. The same tracks serve every run, so
runs differ only in what they test."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.bench_splats import camera_errors, generate_scene, perturb
from engine.bundle import read_bundle
from engine.splats.densify import DensifyConfig

NOISE_PX = 0.3


def surface_tracks(bundle: Path, factor: int = 2, step: int = 16, seed: int = 0):
    """Tracks of surface points sampled every `step` pixels of each raw (factor x) view's depth map, observed in each
    view that sees them (in the image, depth map within 1 %), at bundle-size pixel positions plus noise."""
    from engine.projection import project, unproject
    from engine.tracks import Tracks

    raw = read_bundle(bundle.parent / f"{bundle.name}_raw")
    depths = [np.load(Path(im.path).parent.parent / im.extras["depth"]) for im in raw.images]
    cam = next(iter(raw.cameras.values()))
    params = torch.tensor(cam.params, dtype=torch.float64)
    xyz = []
    for image, depth in zip(raw.images, depths):
        v, u = np.mgrid[step // 2:cam.height:step, step // 2:cam.width:step]
        z = depth[v, u]
        ok = z > 0
        pixels = torch.from_numpy(np.stack([u[ok] + 0.5, v[ok] + 0.5], -1).astype(np.float64))
        rays, _ = unproject(cam.model, params, pixels)
        xyz.append((rays.numpy() * z[ok][:, None] - image.cam_from_world[:3, 3]) @ image.cam_from_world[:3, :3])
    xyz = np.concatenate(xyz)
    track, which, pixels = [], [], []
    for j, (image, depth) in enumerate(zip(raw.images, depths)):
        p = xyz @ image.cam_from_world[:3, :3].T + image.cam_from_world[:3, 3]
        uv, ok = project(cam.model, params, torch.from_numpy(p))
        uv = uv.numpy()
        ok = ok.numpy() & (p[:, 2] > 0) & (uv >= 0).all(1) & (uv[:, 0] < cam.width) & (uv[:, 1] < cam.height)
        idx = np.nonzero(ok)[0]
        seen = idx[np.abs(depth[uv[idx, 1].astype(int), uv[idx, 0].astype(int)] - p[idx, 2]) < 0.01 * p[idx, 2]]
        track.append(seen)
        which.append(np.full(len(seen), j))
        pixels.append(uv[seen] / factor)  # pixel centres at +0.5: a pure scale maps the raw view to the bundle's
    pixels = np.concatenate(pixels)
    pixels += np.random.default_rng(seed).normal(0, NOISE_PX, pixels.shape)
    return Tracks(xyz, np.concatenate(track), np.concatenate(which), pixels)


@pytest.fixture(scope="module")
def room(tmp_path_factory, addon):
    """A 64x48 room bundle with 10 views and ~2k points (and its raw renders with depth maps beside it)."""
    return generate_scene(tmp_path_factory.mktemp("track_gaussians") / "room", point_step=8)


@pytest.fixture(scope="module")
def tracks(room):
    return surface_tracks(room)


@pytest.fixture
def start(room, tracks, monkeypatch):
    """The room with focal 8 % long and rotations 1.5 deg off; training finds `tracks` as its feature tracks."""
    monkeypatch.setattr("engine.tracks.find_tracks", lambda scene, photos: tracks)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tests run beside other work on 2 cores
    yield perturb(read_bundle(room), focal=1.08, rotation_deg=1.5)
    torch.set_num_threads(before)


def config(**kw):
    from engine.splats.train import TrainConfig

    base = dict(iterations=60, sh_degree=1, sh_every=100, test_every=5, eval_every=0, eval_pose_steps=0,
                calib_start=20, calib_ramp=10, densify=DensifyConfig(stop=0), tracks="on",
                calibrate=("focal", "pose"), track_ba_iterations=50)
    base.update(kw)
    return TrainConfig(**base)


def test_track_gaussians_sit_on_the_track_points_outside_density_control(start):
    from engine.splats.train import Trainer

    densify = DensifyConfig(start=4, every=4, reset_every=12, grad_threshold=1e-5, prune_opacity=0.05)
    trainer = Trainer(start, config(iterations=30, densify=densify))
    tg, xyz = trainer.track_gaussians, trainer.tracks.xyz
    assert tg.attributes()["means"] is xyz and len(tg) == len(xyz) > 100
    assert torch.allclose(tg.size_px(), torch.ones(len(tg)), rtol=1e-5)  # one pixel footprint wide at the start
    trainer.calibrate_from_tracks()
    tg = trainer.track_gaussians  # rebuilt on the adjusted tracks (outliers dropped), one footprint wide again
    assert len(tg) == len(xyz) and torch.allclose(tg.size_px(), torch.ones(len(tg)), rtol=1e-5)
    xyz0 = xyz.detach().clone()

    calls = []
    densify_step = trainer.densifier.step

    def watched(step, params, optimizers):
        before = {k: (p, p.detach().clone()) for k, p in tg.params.items()}
        out = densify_step(step, params, optimizers)
        calls.append(out)
        assert all(tg.params[k] is p and torch.equal(p, v) for k, (p, v) in before.items())  # not touched
        return out

    trainer.densifier.step = watched
    counts = set()
    for _ in range(30):
        trainer.train_step()
        counts.add(len(trainer.params["means"]))
    assert len(counts) > 1 and any(c.get("reset") for c in calls)  # splats were cloned / pruned, opacities reset
    assert len(tg) == len(xyz) and tg.attributes()["means"] is trainer.tracks.xyz
    assert bool((torch.sigmoid(tg.params["opacities"]) > 2 * densify.prune_opacity).all())  # never reset
    assert not torch.equal(xyz.detach(), xyz0)  # the points trained
    n, t = len(trainer.params["means"]), len(tg)
    rendered = trainer.render(trainer.train_ids[0])
    assert all(len(pr.means2d) == n + t for pr, _ in rendered.views)
    splats = trainer.splats()  # the output: the densified splats, then the track Gaussians
    assert len(splats) == n + t == trainer.gaussian_count()
    assert np.array_equal(splats.means[n:], xyz.detach().numpy())
    assert np.array_equal(splats.log_scales[n:], tg.params["scales"].detach().numpy())


def test_scale_loss_keeps_track_gaussians_small(start):
    """Scales learning 10x faster than 3DGS's rate make the growth quick: without the scale loss track Gaussians grow
    well past the bound, with it (the default weight) they stay at it."""
    from engine.splats.track_gaussians import SCALE_BOUND_PX
    from engine.splats.train import Trainer

    sizes = {}
    for weight in (0.0, config().scale_weight):
        trainer = Trainer(start, config(iterations=80, lr_scales=0.05, scale_weight=weight, calibrate=("focal",)))
        trainer.calibrate_from_tracks()
        while trainer.step < 80:
            trainer.train_step()
        sizes[weight] = trainer.track_gaussians.size_px().detach()
    free, bounded = sizes[0.0], sizes[config().scale_weight]
    print(f"track Gaussian size (pixel footprints): without the scale loss median {free.median():.2f}, 95th "
          f"percentile {free.quantile(0.95):.2f}, max {free.max():.2f}; with it median {bounded.median():.2f}, max "
          f"{bounded.max():.2f}")
    assert float((free > 1.5 * SCALE_BOUND_PX).float().mean()) > 0.03 and float(free.max()) > 3 * SCALE_BOUND_PX
    assert float(bounded.max()) < 1.1 * SCALE_BOUND_PX


def test_checkpoint_and_resume_keep_track_gaussians(start, tmp_path):
    """A run saved at step 5 and resumed ends where the uninterrupted run does, track Gaussians included."""
    from engine.errors import EngineError
    from engine.splats.train import Trainer, train

    checkpoint = tmp_path / "run.train.pt"
    straight = Trainer(start, config(iterations=10), checkpoint=checkpoint)
    straight.calibrate_from_tracks()
    for step in range(10):
        if step == 5:
            straight.save_checkpoint()
        straight.train_step()
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["step"] == 5
    assert saved["tracks"]["gaussians"]["params"]["scales"].shape == (len(straight.tracks.xyz), 3)
    resumed = train(start, config(iterations=10), checkpoint=checkpoint, resume=True)
    expected = straight.splats()
    assert len(resumed.splats) == len(expected) == straight.gaussian_count() == resumed.metrics["gaussians"]
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh0"):
        np.testing.assert_allclose(getattr(resumed.splats, name), getattr(expected, name), atol=1e-6, err_msg=name)
    off = Trainer(start, config(iterations=10, track_gaussians=False), checkpoint=checkpoint)
    assert off.track_gaussians is None and off.tracks is not None
    with pytest.raises(EngineError, match="track Gaussians on; this run has them off"):
        off.load_checkpoint()


def test_track_gaussians_do_not_hurt_focal_recovery(start, room):
    """The perturbed room (focal +8 %, rotations 1.5 deg) calibrated with tracks, with and without track Gaussians:
    tracks alone keep working, and track Gaussians end no further from the true focal (0.1 percentage point: the
    runs differ by the splats added; on this scene both end near 1.0 %) nor from the tracks."""
    from engine.commands.train_cmd import add_arguments, config_from_args
    from engine.splats.train import train

    truth = read_bundle(room)
    errors, rms = {}, {}
    for on in (True, False):
        result = train(start, config(iterations=120, track_gaussians=on))
        err = camera_errors(result.cameras, result.poses, truth)
        errors[on], rms[on] = err["focal_pct"], result.metrics["track_rms_px"]
        print(f"track Gaussians {'on' if on else 'off'}: focal error {err['focal_pct']:.3f} %, rotation error "
              f"{err['rot_mean']:.3f} deg, track RMS {result.metrics['track_rms_px']:.3f} px, held-out PSNR "
              f"{result.metrics['test_psnr']:.2f} dB")
        assert ("track_gaussians" in result.metrics) == on
    assert errors[False] < 3.0  # from 8 %: tracks without track Gaussians still calibrate
    assert errors[True] <= errors[False] + 0.1  # percentage points
    # the photometric pull on the track Gaussians does not drag the track points off their observations' rays
    # (without `anchored_points` their RMS reprojection error rises from 0.82 to 1.11 px here)
    assert rms[True] < rms[False] + 0.1
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([str(room), "--device", "cpu"])).track_gaussians is True
    assert config_from_args(parser.parse_args([str(room), "--device", "cpu", "--no-track-gaussians"])
                            ).track_gaussians is False
