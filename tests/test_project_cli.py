"""`python -m engine project` / `unproject`: round trips through a bundle camera (LENS_FIELD and OPENCV) against
engine.projection, NaN rows for invalid input, and bad input named with exit status 2 and no output."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import projection
from engine.bundle import Camera, Image, Scene, write_bundle
from engine.cli import main
from engine.lens_field import LensField

ROOT = Path(__file__).resolve().parents[1]
W, H = 80, 60


def lens_field_camera() -> Camera:
    """A 200-degree (horizontal) learned lens with a nonzero field; its grid stops short of the image corners."""
    torch.manual_seed(0)
    field = LensField(grid=9, radius=1.6).double()
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.05 * torch.randn_like(p))
        focal = W / math.radians(200)
        params = field.params(focal, focal * 1.02, W / 2 + 0.5, H / 2 - 0.3)
    return Camera(3, "LENS_FIELD", W, H, params.tolist())


CAMERAS = {"LENS_FIELD": lens_field_camera(),
           "OPENCV": Camera(3, "OPENCV", W, H, [70.0, 71.0, 41.0, 29.5, -0.2, 0.05, 0.001, -0.002])}


def bundle(tmp_path: Path, camera: Camera) -> Path:
    other = Camera(7, "PINHOLE", W, H, [60.0, 60.0, 40.0, 30.0])
    scene = Scene(cameras={camera.id: camera, other.id: other},
                  images=[Image(id=1, name="a.png", camera_id=camera.id, cam_from_world=np.eye(4))])
    return write_bundle(scene, tmp_path / "bundle")


def run_cli(capsys, *args: str) -> tuple[int, dict]:
    code = main(["--progress", "jsonl", *args])
    return code, json.loads(capsys.readouterr().out.splitlines()[-1])


def pixel_grid() -> np.ndarray:
    u, v = np.meshgrid(np.linspace(0, W, 33), np.linspace(0, H, 25))
    return np.stack([u.ravel(), v.ravel()], -1)


@pytest.mark.parametrize("model", list(CAMERAS))
def test_unproject_then_project_round_trip(tmp_path, capsys, model):
    camera = CAMERAS[model]
    path = bundle(tmp_path, camera)
    pixels = pixel_grid()
    pixels[5] = np.nan
    np.save(tmp_path / "pixels.npy", pixels.astype(np.float32))
    code, event = run_cli(capsys, "unproject", str(path), "--camera", "3", "--pixels", str(tmp_path / "pixels.npy"),
                          "--out", str(tmp_path / "rays.npy"))
    assert code == 0 and event["event"] == "result"
    rays = np.load(tmp_path / "rays.npy")
    assert rays.shape == (len(pixels), 3) and rays.dtype == np.float64
    valid = ~np.isnan(rays).any(1)
    assert event["result"]["valid"] == valid.sum() and event["result"]["invalid"] == (~valid).sum()
    assert not valid[5]
    expected, ok = projection.unproject_directions(camera.model, torch.tensor(camera.params, dtype=torch.float64),
                                                   torch.from_numpy(pixels.astype(np.float32).astype(np.float64)))
    assert np.array_equal(valid, ok.numpy() & np.isfinite(pixels).all(1))
    assert np.allclose(rays[valid], expected.numpy()[valid], atol=1e-12)
    assert np.allclose(np.linalg.norm(rays[valid], axis=1), 1.0)
    if model == "LENS_FIELD":  # the lens sees past 90 degrees; the image corners lie outside its grid
        assert (rays[valid, 2] < 0).sum() > 20 and (~valid).sum() > 5
    else:
        assert valid.sum() == len(pixels) - 1

    code, event = run_cli(capsys, "project", str(path), "--camera", "3", "--rays", str(tmp_path / "rays.npy"),
                          "--out", str(tmp_path / "back.npy"))
    back = np.load(tmp_path / "back.npy")
    inside = (back[:, 0] >= 0) & (back[:, 0] <= W) & (back[:, 1] >= 0) & (back[:, 1] <= H)
    assert code == 0 and event["result"]["valid"] == valid.sum() and event["result"]["in_image"] == inside.sum()
    assert inside.sum() > valid.sum() - 2 * (33 + 25)  # all but round-off on the border
    assert back.shape == (len(pixels), 2) and np.isnan(back[~valid]).all()
    assert np.abs(back[valid] - pixels[valid].astype(np.float32)).max() < 1e-6


def test_project_marks_what_the_lens_cannot_see(tmp_path, capsys):
    path = bundle(tmp_path, CAMERAS["OPENCV"])
    rays = np.array([[0.1, 0.2, 1.0], [0.0, 0.0, -1.0], [0.3, 0.1, 2.0], [0.0, 0.0, 0.0], [np.inf, 0, 1]])
    np.save(tmp_path / "rays.npy", rays)
    code, event = run_cli(capsys, "project", str(path), "--camera", "3", "--rays", str(tmp_path / "rays.npy"),
                          "--out", str(tmp_path / "px.npy"))
    pixels = np.load(tmp_path / "px.npy")
    assert code == 0 and event["result"]["valid"] == 2
    assert np.isnan(pixels[[1, 3, 4]]).all() and np.isfinite(pixels[[0, 2]]).all()
    assert np.allclose(pixels[0], projection.project("OPENCV", CAMERAS["OPENCV"].params,
                                                     torch.tensor(rays[0]))[0].numpy())


def test_bad_input_exit_2_and_no_output(tmp_path, capsys):
    path = bundle(tmp_path, CAMERAS["LENS_FIELD"])
    out = tmp_path / "out.npy"
    np.save(tmp_path / "three.npy", np.zeros((4, 3)))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    np.savez(tmp_path / "archive.npz", pixels=np.zeros((4, 2)))
    cases = [
        (["unproject", str(path), "--camera", "9", "--pixels", str(tmp_path / "three.npy")],
         "no camera with id 9; its cameras are 3, 7"),
        (["unproject", str(path), "--camera", "3", "--pixels", str(tmp_path / "three.npy")],
         "expected an (N, 2) array, got shape (4, 3)"),
        (["unproject", str(path), "--camera", "3", "--pixels", str(tmp_path / "text.npy")],
         "expected numbers (float or integer), got dtype <U1"),
        (["unproject", str(path), "--camera", "3", "--pixels", str(tmp_path / "archive.npz")],
         "an .npz archive, expected a single .npy array"),
        (["unproject", str(path), "--camera", "3", "--pixels", str(tmp_path / "missing.npy")],
         "missing.npy: not found"),
        (["project", str(path), "--camera", "3", "--rays", str(tmp_path / "archive.npz")],
         "an .npz archive"),
        (["project", str(tmp_path / "nowhere"), "--camera", "3", "--rays", str(tmp_path / "three.npy")],
         "nowhere/scene.json: not found"),
    ]
    for args, message in cases:
        code, event = run_cli(capsys, *args, "--out", str(out))
        assert code == 2 and event["event"] == "error" and message in event["message"], (args, event)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "archive.npz", "bundle", "text.npy", "three.npy"]


def test_command_line_entry_point(tmp_path):
    """The real `python -m engine` process (the --progress jsonl protocol and the exit status)."""
    path = bundle(tmp_path, CAMERAS["OPENCV"])
    np.save(tmp_path / "px.npy", np.array([[40.0, 30.0], [1.0, 2.0]]))
    proc = subprocess.run([sys.executable, "-m", "engine", "--progress", "jsonl", "unproject", str(path), "--camera",
                           "3", "--pixels", str(tmp_path / "px.npy"), "--out", str(tmp_path / "r.npy")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["result"]["valid"] == 2
    assert np.load(tmp_path / "r.npy").shape == (2, 3)
