"""CUDA checks (skipped without a GPU and gsplat): the gsplat compositor against the torch one, colours and
gradients w.r.t. focal, principal point, distortion and pose; and a training step on the GPU path."""
from __future__ import annotations

import pytest
import torch

from engine.splats import raster_gsplat

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not raster_gsplat.available(), reason="needs a CUDA device and gsplat")]


def test_gsplat_and_torch_compositors_agree():
    from engine.bundle import Camera
    from engine.splats.cameras import CameraRig
    from engine.splats.project import project_gaussians
    from engine.splats.raster_torch import rasterize
    import numpy as np

    torch.manual_seed(0)
    n, width, height = 4000, 96, 72
    means = torch.randn(n, 3, device="cuda") * 0.6 + torch.tensor([0.0, 0.0, 3.0], device="cuda")
    quats = torch.randn(n, 4, device="cuda")
    log_scales = torch.log(torch.rand(n, 3, device="cuda") * 0.05 + 0.01)
    opacities = torch.rand(n, device="cuda") * 0.8 + 0.1
    colors = torch.rand(n, 3, device="cuda")
    cam = Camera(1, "OPENCV", width, height, [70.0, 71.0, 48.5, 35.5, -0.1, 0.02, 0.001, -0.001])
    results = {}
    for name, raster in (("torch", rasterize), ("gsplat", raster_gsplat.rasterize)):
        rig = CameraRig([cam], [0], np.eye(4)[None]).cuda()
        proj = project_gaussians(means, quats, log_scales, opacities, cam.model, rig.camera_params(0),
                                 rig.cam_from_world(0), width, height)
        image, alpha = raster(proj, colors, opacities, width, height, torch.full((3,), 0.2, device="cuda"))
        (image * torch.linspace(0, 1, width, device="cuda")[None, :, None]).sum().backward()
        results[name] = (image.detach(), alpha.detach(),
                         torch.cat([rig.log_focal.grad, rig.pp.grad.flatten(), rig.distortion.grad.flatten(),
                                    rig.pose.grad.flatten()]))
    (ti, ta, tg), (gi, ga, gg) = results["torch"], results["gsplat"]
    assert (ti - gi).abs().max() < 1e-4 and (ta - ga).abs().max() < 1e-4
    assert torch.allclose(tg, gg, rtol=1e-3, atol=1e-3 * tg.abs().max())


def test_gpu_training_steps_with_gsplat_densifier(tmp_path):
    import numpy as np

    from engine.bundle import Camera, Image, Scene
    from engine.ply import Points
    from engine.splats.densify import DensifyConfig
    from engine.splats.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    cams = {1: Camera(1, "PINHOLE", 64, 48, [50.0, 50.0, 32.0, 24.0])}
    images = [Image(i + 1, f"v{i}.png", 1, np.eye(4)) for i in range(3)]
    scene = Scene(cams, images, Points(rng.normal(size=(500, 3)) + [0, 0, 4], rng.integers(0, 255, (500, 3))))
    photos = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in images]
    trainer = Trainer(scene, TrainConfig(iterations=20, device="cuda", test_every=0,
                                         densify=DensifyConfig(start=5, every=5, reset_every=10)), photos=photos)
    assert trainer.rasterize is raster_gsplat.rasterize
    for _ in range(20):
        row = trainer.train_step()
    assert np.isfinite(row["loss"]) and trainer.gaussian_count() != 500  # densified


def test_track_bundle_adjustment_on_cuda_matches_cpu():
    """The Levenberg-Marquardt track adjustment runs on the rig's device and lands where the CPU run lands."""
    from engine.splats.track_loss import TrackLoss, bundle_adjust
    from test_splats_track_loss import perturbed_rig, synthetic_scene

    _, poses, tracks = synthetic_scene(noise_px=0.3)
    results = []
    for device in ("cpu", "cuda"):
        rig = perturbed_rig(poses).to(device)
        loss = TrackLoss(tracks, range(len(poses)), dtype=torch.float64).to(device)
        report = bundle_adjust(rig, loss, ("focal", "pp", "distortion", "pose"), iterations=50)
        results.append((report["rms_after_px"], rig.export_cameras()[0].params))
    (cpu_rms, cpu_params), (gpu_rms, gpu_params) = results
    assert abs(cpu_rms - gpu_rms) < 1e-6 and max(abs(a - b) for a, b in zip(cpu_params, gpu_params)) < 1e-6
