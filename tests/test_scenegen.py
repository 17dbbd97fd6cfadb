"""The scene generator's ground truth against Blender itself: cameras (world_to_camera_view), photos (ray casts
and pixel colours), depth maps and point cloud."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT


@pytest.fixture(autouse=True)
def _fresh_file_afterwards():
    """Leave Blender with an empty file for the tests that follow."""
    yield
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)


def _pycolmap_camera(camera):
    import pycolmap

    return pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height, params=camera.params)


def _generate(tmp_path, addon, kind, camera_args):
    import scenegen

    camera = scenegen.intrinsics(*camera_args[:3], **camera_args[3])
    out = scenegen.generate(tmp_path / "bundle", kind=kind, n_views=3, camera=camera, samples=8, n_points=12000,
                            save_depth=True, seed=3)
    return addon.engine.bundle.read_bundle(out)


def _camera_centre(image):
    return -image.cam_from_world[:3, :3].T @ image.cam_from_world[:3, 3]


def _unoccluded(points, centre):
    """For each world point, True when nothing in the Blender scene lies between it and `centre`."""
    import bpy

    depsgraph = bpy.context.evaluated_depsgraph_get()
    scene = bpy.context.scene
    out = np.zeros(len(points), dtype=bool)
    for i, p in enumerate(points):
        d = p - centre
        dist = float(np.linalg.norm(d))
        hit, *_ = scene.ray_cast(depsgraph, centre, d / dist, distance=dist * (1 - 1e-3) - 1e-4)
        out[i] = not hit
    return out


def _photo(path):
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


CASES = {
    # kind, (model, width, height, intrinsics options)
    "pinhole_shift_fx_ne_fy": ("room", ("PINHOLE", 96, 72, {"hfov_deg": 60, "aspect": 1.1,
                                                           "principal_offset": (5.5, -3.0)})),
    "fisheye": ("object", ("OPENCV_FISHEYE", 96, 72, {"hfov_deg": 150})),
    "opencv_distortion": ("object", ("OPENCV", 96, 72, {"hfov_deg": 70, "principal_offset": (2.0, 1.5),
                                                       "extra": (-0.12, 0.02, 0.001, -0.0015)})),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ground_truth_matches_blender(addon, tmp_path, case):
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    kind, camera_args = CASES[case]
    scene = _generate(tmp_path, addon, kind, camera_args)
    if camera_args[0] != "OPENCV_FISHEYE":  # world_to_camera_view knows perspective cameras only
        _check_projection(addon, scene, kind)
    _check_points(case, scene)
    _check_depth(case, scene)


def _check_projection(addon, scene, kind):
    """Scene vertices projected with the bundle camera (pycolmap) land where Blender's camera puts them
    (Blender's camera has no lens distortion: compare with the bundle camera's pinhole part)."""
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    verts = np.concatenate([np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
                            for obj in bpy.data.collections[f"scenegen_{kind}"].objects if obj.type == "MESH"])
    for image in scene.images:
        camera = scene.camera_of(image)
        fx, fy, cx, cy, _ = camera.split()
        pinhole = addon.engine.bundle.Camera(1, "PINHOLE", camera.width, camera.height, [fx, fy, cx, cy])
        cam_obj = bpy.data.objects[Path(image.name).stem]  # scenegen names camera objects after the views
        addon.bridge.camera.apply_camera(bpy.context.scene, cam_obj, camera)  # this view's render settings
        cam_pts = verts @ image.cam_from_world[:3, :3].T + image.cam_from_world[:3, 3]
        front = cam_pts[:, 2] > 0.2
        expected = _pycolmap_camera(pinhole).img_from_cam(cam_pts[front])
        ndc = np.array([world_to_camera_view(bpy.context.scene, cam_obj, Vector(p))[:2] for p in verts[front]])
        blender = np.stack([ndc[:, 0] * camera.width, (1 - ndc[:, 1]) * camera.height], axis=1)
        assert front.sum() > 20
        assert np.abs(blender - expected).max() < 0.05, image.name


def _check_points(case, scene):
    """Every point lies on a surface some view sees unoccluded, and where a view sees it, the photo's pixel
    at its projection has its colour."""
    points = scene.points
    assert len(points) > 1500, f"{case}: only {len(points)} points"
    pick = np.random.default_rng(0).choice(len(points), 600, replace=False)
    xyz, rgb = points.xyz[pick].astype(np.float64), points.rgb[pick].astype(int)
    seen_any = np.zeros(len(pick), dtype=bool)
    matches, compared = 0, 0
    for image in scene.images:
        camera = scene.camera_of(image)
        cam = xyz @ image.cam_from_world[:3, :3].T + image.cam_from_world[:3, 3]
        uv = _pycolmap_camera(camera).img_from_cam(cam)
        inside = (np.isfinite(uv).all(axis=1) & (cam[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0)
                  & (uv[:, 0] < camera.width) & (uv[:, 1] < camera.height))
        visible = inside & _unoccluded(xyz, _camera_centre(image))
        seen_any |= visible
        col, row = np.floor(uv[visible]).astype(int).T
        diff = np.abs(_photo(image.path)[row, col].astype(int) - rgb[visible]).max(axis=1)
        matches += int((diff <= 24).sum())
        compared += int(visible.sum())
    assert seen_any.mean() > 0.97, f"{case}: points no view sees: {1 - seen_any.mean():.1%}"
    assert compared > 300
    assert matches / compared > 0.85, f"{case}: colour agrees for only {matches / compared:.1%} of sightings"


def _check_depth(case, scene):
    """Depth map values are the camera z of the first surface along each pixel's ray (Blender ray casts)."""
    import bpy

    depsgraph = bpy.context.evaluated_depsgraph_get()
    for image in scene.images:
        camera = scene.camera_of(image)
        depth = np.load(image.path.parent.parent / image.extras["depth"])
        assert depth.shape == (camera.height, camera.width) and depth.dtype == np.float32
        v, u = np.mgrid[2:camera.height - 2:5, 2:camera.width - 2:5].reshape(2, -1) + 0.5
        rays = _pycolmap_camera(camera).cam_from_img(np.stack([u, v], axis=1))
        ok = np.isfinite(rays).all(axis=1)
        rotation, centre = image.cam_from_world[:3, :3], _camera_centre(image)
        errors, wrong_hit = [], 0
        for (x, y), col, row in zip(rays[ok], u[ok].astype(int), v[ok].astype(int)):
            direction = rotation.T @ np.array([x, y, 1.0])
            hit, location, *_ = bpy.context.scene.ray_cast(depsgraph, centre, direction / np.linalg.norm(direction))
            if not hit:
                wrong_hit += depth[row, col] != 0
                continue
            z = float((rotation @ (np.array(location) - centre))[2])
            errors.append(abs(depth[row, col] - z) / z)
        assert len(errors) > 100
        errors = np.array(errors)
        # Exact at pixel centres for rendered views; distorted views are resampled (nearest pixel across edges),
        # so a little slack on slopes and silhouettes.
        median, q90 = (1e-3, 5e-3) if case == "opencv_distortion" else (1e-4, 5e-4)
        assert np.median(errors) < median and np.quantile(errors, 0.9) < q90, \
            f"{case} {image.name}: median {np.median(errors):.2e}, 90% {np.quantile(errors, 0.9):.2e}"
        assert wrong_hit <= 0.02 * ok.sum(), f"{case} {image.name}: {wrong_hit} pixels with depth but no surface"


def test_generation_is_deterministic(addon, tmp_path):
    import bpy
    import scenegen

    outs = []
    for run in range(2):
        bpy.ops.wm.read_homefile(use_empty=True)
        outs.append(scenegen.generate(tmp_path / f"run{run}", kind="object", n_views=2, width=48, height=36,
                                      samples=4, n_points=3000, seed=7))
    a, b = (addon.engine.bundle.read_bundle(out) for out in outs)
    for ia, ib in zip(a.images, b.images):
        assert np.array_equal(ia.cam_from_world, ib.cam_from_world)
        assert np.array_equal(_photo(ia.path), _photo(ib.path))  # (PNG metadata holds render times)
    assert np.array_equal(a.points.xyz, b.points.xyz) and np.array_equal(a.points.rgb, b.points.rgb)


def test_bad_requests_name_the_problem(addon):
    import bpy
    import scenegen

    bpy.ops.wm.read_homefile(use_empty=True)
    with pytest.raises(ValueError, match="unknown scene kind 'castle'"):
        scenegen.build_scene("castle")
    with pytest.raises(addon.engine.errors.CameraModelError, match="fx=.* and fy=.* differ"):
        scenegen.intrinsics("SIMPLE_PINHOLE", 64, 48, aspect=1.2)
    with pytest.raises(ValueError, match="hfov_deg 190"):
        scenegen.intrinsics("PINHOLE", 64, 48, hfov_deg=190)
    built = scenegen.build_scene("object")
    with pytest.raises(ValueError, match="unknown rig 'spiral'"):
        scenegen.make_cameras(built, 3, rig="spiral")


def test_command_line_writes_a_bundle(tmp_path):
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "scenegen", "--out", str(out), "--kind", "object", "--views", "2",
                    "--width", "48", "--height", "36", "--samples", "4", "--points", "2000"],
                   cwd=ROOT, check=True, capture_output=True)
    from engine.bundle import read_bundle

    scene = read_bundle(out)
    assert [i.name for i in scene.images] == ["view_000.png", "view_001.png"]
    assert scene.units == "meters" and len(scene.points) > 100


def test_grain_adds_fine_texture_to_every_surface(addon, tmp_path):
    """`grain`: the same scene and views, with fine texture on the surfaces (what lets feature tracks reach a
    fisheye's periphery, bench_lens): the photos gain high-frequency detail while their mean colour stays; a
    strength outside (0, 1) is refused by name."""
    import bpy
    import cv2
    import scenegen

    photos = []
    for grain in (0.0, 0.3):
        bpy.ops.wm.read_homefile(use_empty=True)
        out = scenegen.generate(tmp_path / f"grain{grain}", kind="room", n_views=1, width=240, height=180,
                                samples=4, n_points=2000, seed=2, grain=grain)
        photos.append(_photo(addon.engine.bundle.read_bundle(out).images[0].path).astype(np.float64))
    plain, grained = photos
    detail = [float(np.abs(cv2.Laplacian(p.mean(-1), cv2.CV_64F)).mean()) for p in photos]
    print(f"mean |Laplacian| {detail[0]:.2f} -> {detail[1]:.2f}")
    assert detail[1] > 1.5 * detail[0]
    assert abs(grained.mean() - plain.mean()) < 0.05 * plain.mean()
    material = next(iter(bpy.data.materials))
    with pytest.raises(ValueError, match="grain strength must be between 0 and 1, got 1.5"):
        scenegen.materials.add_grain(material, 1.5)
