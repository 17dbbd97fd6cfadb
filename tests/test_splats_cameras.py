"""Learnable cameras: model conversions, the SE(3) exponential, the rig's parameter vectors and export, the
camera optimiser, and density control bookkeeping."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.bundle import Camera
from engine.projection import project, unproject_directions
from engine.splats.cameras import CameraRig, GroupAdam, Schedule, convert_camera, lens_model, se3_exp
from engine.splats.densify import DensifyConfig, Densifier, reset_opacities


def test_superset_conversions_are_exact():
    cam = Camera(3, "SIMPLE_PINHOLE", 64, 48, [50.0, 31.0, 25.0])
    radial, rms = convert_camera(cam, lens_model(cam, "radial"))
    assert radial.model == "RADIAL" and radial.params == [50.0, 31.0, 25.0, 0.0, 0.0] and rms < 1e-9
    pinhole = Camera(1, "PINHOLE", 64, 48, [50.0, 52.0, 31.0, 25.0])
    assert lens_model(pinhole, "radial") == "OPENCV" and lens_model(pinhole, "pinhole") == "PINHOLE"
    opencv, rms = convert_camera(pinhole, "OPENCV")
    assert opencv.params == [50.0, 52.0, 31.0, 25.0, 0, 0, 0, 0] and rms < 1e-9


@pytest.mark.parametrize("source, target, limit", [
    (Camera(1, "FULL_OPENCV", 64, 48, [50, 50, 32, 24, -0.1, 0.02, 0.001, -0.002, 0.0, 0.03, 0.0, 0.0]), "OPENCV",
     0.05),
    (Camera(1, "OPENCV", 64, 48, [40, 40, 32, 24, 0.05, 0.0, 0.0, 0.0]), "OPENCV_FISHEYE", 0.2),
])
def test_fitted_conversions_reproduce_the_pixel_map(source, target, limit):
    converted, rms = convert_camera(source, target)
    assert converted.model == target and rms < limit
    pixels = torch.rand(500, 2, dtype=torch.float64) * torch.tensor([64.0, 48.0])
    rays, ok = unproject_directions(source.model, source.params, pixels)
    back, valid = project(target, converted.params, rays)
    error = (back - pixels)[ok & valid].norm(dim=-1)
    assert error.max() < 4 * limit and math.sqrt(float(error.square().mean())) < 2 * limit


def test_se3_exp_matches_matrix_exponential():
    torch.manual_seed(0)
    for scale in (1e-5, 0.3, 2.0):
        xi = torch.randn(6, dtype=torch.float64) * scale
        twist = torch.zeros(4, 4, dtype=torch.float64)
        w, v = xi[:3], xi[3:]
        twist[:3, :3] = torch.tensor([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
        twist[:3, 3] = v
        assert torch.allclose(se3_exp(xi), torch.linalg.matrix_exp(twist), atol=1e-12)
    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)  # exact gradient at zero
    (se3_exp(xi)[:3, :3] @ torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    # d/d omega of sum(omega x p) = p x (1, 1, 1)
    assert torch.allclose(xi.grad[:3], torch.tensor([-1.0, 2.0, -1.0], dtype=torch.float64))


def test_rig_parameters_and_export():
    cams = [Camera(7, "SIMPLE_RADIAL", 64, 48, [50.0, 32.0, 24.0, -0.1]),
            Camera(9, "OPENCV", 80, 60, [60.0, 61.0, 40.0, 30.0, 0.01, 0.0, 0.001, 0.0])]
    poses = np.stack([np.eye(4), np.eye(4)])
    poses[1, :3, 3] = [0.5, 0.0, 0.1]
    rig = CameraRig(cams, [0, 1], poses, scene_scale=2.0, dtype=torch.float64)
    exported = rig.export_cameras()
    assert [c.params for c in exported] == [c.params for c in cams]
    assert np.allclose(rig.export_poses(), poses)
    with torch.no_grad():
        rig.log_focal[1] = math.log(1.1)
        rig.pp[1] = torch.tensor([0.01, -0.02])
        rig.distortion[1, :4] = torch.tensor([0.02, 0.0, 0.0, 0.001])
        rig.pose[0] = torch.tensor([0.0, 0.0, 0.1, 0.25, 0.0, 0.0])
    fx, fy, cx, cy, extra = rig.export_cameras()[1].split()
    assert fx == pytest.approx(66.0) and fy == pytest.approx(67.1) and cx == pytest.approx(40.8)
    assert cy == pytest.approx(28.4)  # pp offsets are in image widths: 30 - 0.02 * 80
    assert extra == pytest.approx((0.03, 0.0, 0.001, 0.001))
    pose = rig.export_poses()[0]
    assert pose[:3, 3] == pytest.approx([0.5 * math.sin(0.1) / 0.1 * 1.0, 0.5 * (1 - math.cos(0.1)) / 0.1, 0.0],
                                        abs=1e-9)  # v = 0.25 x scene scale 2, through V(omega)
    with pytest.raises(Exception, match="shared intrinsics need one model and size"):
        CameraRig(cams, [0, 1], poses, shared=True)
    assert rig.learnable("distortion") == []
    assert CameraRig([Camera(1, "FULL_OPENCV", 64, 48, [50, 50, 32, 24] + [0.0] * 8)], [0], poses[:1]).learnable(
        "distortion") == ["camera 1 (FULL_OPENCV)"]


def test_schedule_and_group_adam():
    s = Schedule(1e-2, start=10, ramp=5, end=110, final=0.1)
    assert s(9) == 0 and s(10) == pytest.approx(2e-3 * 0.1 ** 0) and s(14) == pytest.approx(1e-2 * 0.1 ** 0.04)
    assert s(110) == pytest.approx(1e-3) and s(500) == pytest.approx(1e-3)
    # one normaliser per group: a coordinate with a 1000x smaller gradient moves 1000x less (Adam: as much)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = GroupAdam([p], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        (p * torch.tensor([1.0, 1e-3])).sum().backward()
        opt.step()
    p = p.detach()
    assert float(p[1] / p[0]) == pytest.approx(1e-3, rel=1e-6) and float(p[0]) < 0


def test_densifier_clones_splits_prunes_and_resets():
    torch.manual_seed(0)
    n = 6
    params = {"means": torch.zeros(n, 3), "scales": torch.log(torch.tensor([[0.001] * 3] * 3 + [[0.05] * 3] * 3)),
              "quats": torch.tensor([[1.0, 0, 0, 0]] * n), "opacities": torch.tensor([2.0] * 5 + [-9.0]),
              "sh0": torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), "shN": torch.zeros(n, 3, 3)}
    params = {k: torch.nn.Parameter(v) for k, v in params.items()}
    opts = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    sum(p.sum() for p in params.values()).backward()
    for o in opts.values():
        o.step()
    split_colour, split_scale = params["sh0"][3].detach().clone(), torch.exp(params["scales"][3]).detach()
    dens = Densifier(DensifyConfig(start=0, every=1, reset_every=1000, clone_scale=0.01), scene_scale=1.0)
    grad = torch.zeros(n, 2)
    grad[[0, 3, 5]] = 1.0  # strong image-plane gradients: small 0 cloned, large 3 split, 5 grows but is pruned
    dens.accumulate(n, grad, torch.ones(n, dtype=torch.bool), 64, 48, 1)
    out = dens.step(1, params, opts)
    assert out == {"cloned": 1, "split": 2, "pruned": 2}  # 5 was split (2 children) and both are transparent
    assert len(params["means"]) == n + 1 + 2 - 2  # +1 clone, 2 splits each replace one by two, 2 pruned
    for k, p in params.items():
        assert opts[k].param_groups[0]["params"][0] is p and opts[k].state[p]["exp_avg"].shape == p.shape
    assert torch.equal(params["sh0"][-1], split_colour)  # a child of splat 3
    assert torch.allclose(torch.exp(params["scales"][-1]), split_scale / 1.6)
    reset_opacities(params, opts, 0.01)
    assert torch.sigmoid(params["opacities"]).max() <= 0.01 + 1e-6
    assert not opts["opacities"].state[params["opacities"]]["exp_avg"].any()
