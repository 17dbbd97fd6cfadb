"""Perspective undistortion of a bundle (engine.undistort): the resampling maps against engine.projection, photos
of an analytic scene (a colour pattern fixed to ray directions) against the same pattern seen through the pinhole,
depth maps, the default field of view, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.bundle import Camera, Image, Scene, read_bundle, write_bundle
from engine.errors import EngineError
from engine.ply import Points
from engine.projection import project, unproject_directions
from engine.undistort import pinhole_camera, undistort_maps, undistort_scene

SIZE = 64
PLANE = np.array([0.2, -0.1, 1.0]) / np.linalg.norm([0.2, -0.1, 1.0])  # depth maps: the plane PLANE . X = 2


def _equidistant(fov_deg: float = 180.0, extra=(0.0, 0.0, 0.0, 0.0)) -> Camera:
    """A centred square OPENCV_FISHEYE camera whose corner ray is fov / 2 from the axis (k = 0)."""
    f = math.hypot(SIZE / 2, SIZE / 2) / math.radians(fov_deg / 2)
    return Camera(1, "OPENCV_FISHEYE", SIZE, SIZE, [f, f, SIZE / 2 + 0.7, SIZE / 2 - 0.4, *extra])


def _lens_field() -> Camera:
    """A LENS_FIELD camera: 170 deg equidistant plus a smooth displacement field (radians) on a 5 x 5 grid."""
    n, radius = 5, 1.6
    a, b = np.meshgrid(np.linspace(-radius, radius, n), np.linspace(-radius, radius, n))
    field = np.stack([0.03 * a * b - 0.02 * a ** 3, 0.02 * a * a - 0.03 * b], -1)
    f = math.hypot(SIZE / 2, SIZE / 2) / math.radians(85)
    return Camera(1, "LENS_FIELD", SIZE, SIZE, [f, f * 1.02, SIZE / 2, SIZE / 2, radius, n, *field.ravel()])


def _opencv() -> Camera:
    """A perspective camera with barrel distortion, 90 deg across the width before distortion."""
    f = SIZE / 2
    return Camera(1, "OPENCV", SIZE, SIZE * 3 // 4, [f, f, SIZE / 2, SIZE * 3 / 8, -0.12, 0.02, 0.001, -0.002])


def _pattern(rays: np.ndarray) -> np.ndarray:
    """Colour in [0.2, 0.8] of unit ray directions (..., 3): smooth, a period of ~0.3 rad (~10 px here)."""
    x, y, z = np.moveaxis(rays, -1, 0)
    return 0.5 + 0.3 * np.stack([np.sin(21 * x + 3), np.sin(17 * y + 1), np.sin(13 * (x + y) + 2 * z)], -1)


def _pixel_rays(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:camera.height, 0:camera.width] + 0.5
    rays, valid = unproject_directions(camera.model, torch.tensor(camera.params, dtype=torch.float64),
                                       torch.from_numpy(np.stack([u, v], -1)))
    return rays.numpy(), valid.numpy()


def _plane_depth(rays: np.ndarray) -> np.ndarray:
    """Camera z of the plane PLANE . X = 2 along unit rays; 0 where the ray misses it or is 90 deg or more off."""
    along = rays @ PLANE
    z = np.where(along > 1e-6, 2.0 / np.where(along > 1e-6, along, 1.0), 0.0) * rays[..., 2]
    return np.where(rays[..., 2] > 0, z, 0.0).astype(np.float32)


def _write_scene(folder, camera: Camera, n_images: int = 2, depth: bool = True):
    """A bundle of `n_images` photos of the pattern through `camera` (rotated views: the pattern is fixed to the
    camera frame, poses only have to be carried over), with depth maps of the plane and a few points."""
    import cv2

    rays, valid = _pixel_rays(camera)
    rgb = np.where(valid[..., None], _pattern(rays), 0.0)
    (folder / "photos").mkdir(parents=True)
    (folder.parent / f"{folder.name}_depth").mkdir()
    images, files = [], {}
    for i in range(n_images):
        path = folder / "photos" / f"view_{i}.jpg.png"
        cv2.imwrite(str(path), np.rint(rgb[..., ::-1] * 255).astype(np.uint8))
        pose = np.eye(4)
        c, s = math.cos(0.3 * i), math.sin(0.3 * i)
        pose[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        pose[:3, 3] = [0.1 * i, 0.0, 0.5]
        extras = {}
        if depth:
            extras["depth"] = f"depth/view_{i}.npy"
            files[extras["depth"]] = folder.parent / f"{folder.name}_depth" / f"view_{i}.npy"
            np.save(files[extras["depth"]], _plane_depth(rays))
        images.append(Image(i + 1, f"view_{i}.jpg", 1, pose, path, extras))
    points = Points(np.random.default_rng(0).normal(size=(20, 3)), np.full((20, 3), 200, np.uint8))
    return write_bundle(Scene({1: camera}, images, points, "meters", {"tool": "test"}), folder, extra_files=files)


@pytest.mark.parametrize("make", [_equidistant, _lens_field, _opencv], ids=["equidistant", "field", "opencv"])
def test_maps_round_trip(make):
    """Each pinhole pixel's position in the source image holds that pixel's ray: unprojecting the position through
    the source lens (engine.projection, torch) and projecting the ray through the pinhole gives the pixel back."""
    source = make()
    target = pinhole_camera(source)
    pixels, seen = undistort_maps(source, target)
    assert seen.mean() > 0.98  # the default field stays inside what the lens sees (corners of a barrel lens aside)
    rays, valid = unproject_directions(source.model, torch.tensor(source.params, dtype=torch.float64),
                                       torch.from_numpy(pixels[seen]))
    assert bool(valid.all())
    back, ok = project("PINHOLE", torch.tensor(target.params, dtype=torch.float64), rays)
    v, u = np.mgrid[0:target.height, 0:target.width] + 0.5
    err = np.linalg.norm(back.numpy() - np.stack([u, v], -1)[seen], axis=-1)
    assert bool(ok.all()) and err.max() < 0.05


def test_default_field_of_view():
    """180 deg equidistant: 120 deg (the cap) at the lens's own focal; a narrower lens: what it sees along its
    horizontal axis; a given size: the focal fits the field into it."""
    fisheye = _equidistant()
    target = pinhole_camera(fisheye)
    fx, fy, cx, cy = target.params
    assert target.model == "PINHOLE" and fx == pytest.approx(fisheye.params[0], rel=1e-6) and fy == pytest.approx(fx)
    assert (cx, cy) == (target.width / 2, target.height / 2)
    assert 2 * math.degrees(math.atan(target.width / 2 / fx)) == pytest.approx(120.0, abs=0.5)
    assert target.width == math.floor(2 * fx * math.tan(math.radians(60)))

    barrel = _opencv()  # its field along the centre row / column, from unprojected edge midpoints
    _, _, bcx, bcy, _ = barrel.split()
    edges = torch.tensor([[0.0, bcy], [barrel.width, bcy], [bcx, 0.0], [bcx, barrel.height]], dtype=torch.float64)
    rays, _ = unproject_directions(barrel.model, torch.tensor(barrel.params, dtype=torch.float64), edges)
    angles = np.degrees(np.arccos(rays.numpy()[:, 2]))
    target = pinhole_camera(barrel)
    fx, fy, _, _ = target.params
    for size, f, angle in ((target.width, fx, angles[:2].min()), (target.height, fy, angles[2:].min())):
        exact = 2 * f * math.tan(math.radians(angle))  # pixels that field needs; the size is a whole number below
        assert exact - 1.1 < size <= exact

    sized = pinhole_camera(fisheye, hfov_deg=90.0, size=(40, 30))
    assert (sized.width, sized.height) == (40, 30) and sized.params[0] == pytest.approx(20.0)


def test_undistort_scene_photos_and_depth(tmp_path):
    """The undistorted photos show the pattern each pinhole pixel's ray sees (bilinear resampling of 8-bit photos:
    far below the error of a 1 px misregistration), depth maps hold the plane's camera z, and cameras, poses,
    points and names carry over."""
    source = _write_scene(tmp_path / "fisheye", _lens_field())
    out = undistort_scene(source, tmp_path / "pinhole")
    scene, original = read_bundle(out), read_bundle(source)
    target = scene.cameras[1]
    assert target.model == "PINHOLE" and target.params == pytest.approx(pinhole_camera(original.cameras[1]).params)
    assert [im.name for im in scene.images] == [im.name for im in original.images]
    for im, orig in zip(scene.images, original.images):
        assert np.array_equal(im.cam_from_world, orig.cam_from_world)
        assert im.path.parent == out / "images" and im.path.suffix == ".png"
    assert np.allclose(scene.points.xyz, original.points.xyz)
    rays, _ = _pixel_rays(target)
    expected = _pattern(rays)
    shifted = np.roll(expected, 1, axis=1)
    import cv2

    for im, orig in zip(scene.images, original.images):
        photo = cv2.imread(str(im.path))[..., ::-1] / 255.0
        err = np.abs(photo - expected)[1:-1, 1:-1]  # border pixels read the frame's edge
        assert err.mean() < 0.006 and err.max() < 0.05
        assert np.abs(shifted - expected)[1:-1, 1:-1].mean() > 5 * err.mean()
        depth = np.load(out / im.extras["depth"])
        assert depth.shape == (target.height, target.width)
        source_depth = np.load(source / orig.extras["depth"])
        pixels, seen = undistort_maps(original.cameras[1], target)
        col, row = np.minimum(np.floor(pixels[..., 0]), SIZE - 1), np.minimum(np.floor(pixels[..., 1]), SIZE - 1)
        assert seen.all() and np.array_equal(depth, source_depth[row.astype(int), col.astype(int)])  # nearest pixel
        rel = np.abs(depth - _plane_depth(rays)) / _plane_depth(rays)  # camera z: no conversion between lenses
        assert np.median(rel) < 0.01


def test_maps_of_their_own_camera_are_copied(tmp_path):
    """Depth maps with a `depth_camera` (engine align) do not follow the photo's lens: copied unchanged."""
    source = _write_scene(tmp_path / "aligned", _equidistant(), n_images=1)
    scene = read_bundle(source)
    scene.images[0].extras["depth_camera"] = {"model": "SIMPLE_PINHOLE", "width": SIZE, "height": SIZE,
                                              "params": [40.0, SIZE / 2, SIZE / 2]}
    files = {"depth/view_0.npy": tmp_path / "aligned_depth" / "view_0.npy"}
    source = write_bundle(scene, tmp_path / "aligned", extra_files=files)
    out = read_bundle(undistort_scene(source, tmp_path / "out"))
    extras = out.images[0].extras
    assert extras["depth_camera"] == scene.images[0].extras["depth_camera"]
    assert np.array_equal(np.load(tmp_path / "out" / extras["depth"]), np.load(files["depth/view_0.npy"]))


def test_unseen_rays_stay_black(tmp_path):
    """A 120 deg (diagonal) fisheye undistorted to 110 deg across: pixels whose ray lands outside its frame are
    black, all others hold the pattern (>= 0.2)."""
    source_cam = _equidistant(120.0, extra=(0.02, -0.01, 0.0, 0.0))
    source = _write_scene(tmp_path / "narrow", source_cam, n_images=1, depth=False)
    out = undistort_scene(source, tmp_path / "wide", hfov_deg=110.0, size=(80, 80))
    import cv2

    scene = read_bundle(out)
    photo = cv2.imread(str(scene.images[0].path))
    rays, _ = _pixel_rays(scene.cameras[1])
    pixels, valid = project(source_cam.model, torch.tensor(source_cam.params, dtype=torch.float64),
                            torch.from_numpy(rays))
    pixels = pixels.numpy()
    margin = 0.05  # px: positions this close to the frame's edge may round either way
    inside = valid.numpy() & (pixels > margin).all(-1) & (pixels < SIZE - margin).all(-1)
    outside = ~valid.numpy() | (pixels < -margin).any(-1) | (pixels > SIZE + margin).any(-1)
    assert outside.mean() > 0.3 and inside.mean() > 0.3
    assert (photo[outside] == 0).all()
    assert (photo[inside] >= 0.2 * 255 - 1).all()


def test_bad_input(tmp_path):
    """Clear errors that name the problem, and nothing written at the output."""
    source = _write_scene(tmp_path / "src", _equidistant(), n_images=1, depth=False)
    out = tmp_path / "out"
    for hfov in (0.0, 180.0, -10.0, "wide"):
        with pytest.raises(EngineError, match="hfov_deg"):
            undistort_scene(source, out, hfov_deg=hfov)
    for size in ((0, 10), (10,), (10.5, 8)):
        with pytest.raises(EngineError, match="size"):
            undistort_scene(source, out, size=size)
    with pytest.raises(EngineError, match="hfov_deg"):  # 179 deg at the lens's focal: thousands of pixels
        undistort_scene(source, out, hfov_deg=179.0)
    empty = write_bundle(Scene({1: _equidistant()}, [], None), tmp_path / "empty")
    with pytest.raises(EngineError, match="no images"):
        undistort_scene(empty, out)
    scene = read_bundle(source)
    scene.images[0].path = None
    with pytest.raises(EngineError, match="no photo"):
        undistort_scene(write_bundle(scene, tmp_path / "nophoto"), out)
    scene = read_bundle(source)
    scene.cameras[1].width = SIZE + 2
    with pytest.raises(EngineError, match=r"view_0\.jpg.*66x64|64x64.*66x64"):
        undistort_scene(write_bundle(scene, tmp_path / "mismatch"), out)
    scene = read_bundle(source)
    scene.images[0].extras["depth"] = "depth/missing.npy"
    with pytest.raises(EngineError, match="missing.npy"):
        undistort_scene(write_bundle(scene, tmp_path / "nodepth"), out)
    (tmp_path / "src" / "photos" / "view_0.jpg.png").unlink()
    with pytest.raises(EngineError, match="view_0.jpg.png"):
        undistort_scene(source, out)
    assert not out.exists()


def test_undistort_command(tmp_path):
    """`python -m engine undistort`: the perspective bundle at the size asked, and clear errors for a bad size or
    writing over the input."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    source = _write_scene(tmp_path / "fisheye", _equidistant(160.0))

    def engine(*args):
        return subprocess.run([sys.executable, "-m", "engine", "--progress", "jsonl", "undistort", *map(str, args)],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                              timeout=120)

    proc = engine(source, "--out", tmp_path / "pinhole", "--size", "80x60", "--hfov", "100")
    assert proc.returncode == 0, proc.stderr
    result = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    cam = read_bundle(tmp_path / "pinhole").cameras[1]
    assert cam.model == "PINHOLE" and (cam.width, cam.height) == (80, 60)
    assert cam.params[0] == pytest.approx(40 / math.tan(math.radians(50)))  # 100 deg across 80 px
    assert result["result"]["images"] == len(read_bundle(source).images)
    bad = engine(source, "--out", tmp_path / "x", "--size", "80by60")
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr
    same = engine(source, "--out", source)
    assert same.returncode == 2 and "is the input bundle" in same.stdout + same.stderr
