"""Single-image calibration on rooms rendered by the scene generator (known cameras: hFoV 25-100 degrees, random
pitch and roll, some portrait), and the Match Camera operators run from a script."""
from __future__ import annotations

import importlib
import math

import bpy
import numpy as np
import pytest
from PIL import Image

from test_calibrate_exif import STORED_FROM_DISPLAYED

N_CASES = 12
SIZE = (400, 300)
SAMPLES = 8


@pytest.fixture(scope="module")
def cases(addon, tmp_path_factory):
    from bench.bench_calibrate import manhattan_cases

    return manhattan_cases(tmp_path_factory.mktemp("rooms"), N_CASES, width=SIZE[0], height=SIZE[1],
                           samples=SAMPLES, seed=11)


def _module(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


@pytest.fixture(scope="module")
def results(addon, cases):
    return [_module(addon, "engine.calibrate.vanishing").calibrate_vp(case.path) for case in cases]


def _up_error_deg(cam_from_world, case):
    return math.degrees(math.acos(np.clip(cam_from_world[:3, 2] @ case.cam_from_world[:3, 2], -1.0, 1.0)))


def test_vanishing_points_on_rendered_rooms(cases, results):
    errors = np.array([abs(r.hfov_deg - c.hfov_deg) for r, c in zip(results, cases)])
    up = np.array([_up_error_deg(r.cam_from_world, c) for r, c in zip(results, cases)])
    confident = np.array([r.confidence >= 0.5 for r in results])
    assert len(cases) >= 10 and any(c.width < c.height for c in cases)
    assert np.median(errors) < 1.5, errors
    assert np.median(up) < 2.0 and np.all(up[confident] < 2.0), (up, confident)
    assert confident.mean() >= 0.5, [r.reason for r in results]
    assert np.all(errors[confident] < 3.0), (errors, confident)  # never confidently wrong
    for r, c in zip(results, cases):  # reported for the full image, principal point at its centre
        assert (r.width, r.height) == (c.width, c.height)


@pytest.fixture
def operators(addon):
    """The Match Camera operators, registered for the test when the add-on does not register them (yet)."""
    module = _module(addon, "operators.match_camera")
    added = [cls for cls in module.classes if not hasattr(bpy.types, cls.__name__)]
    for cls in added:
        bpy.utils.register_class(cls)
    yield module
    for cls in reversed(added):
        bpy.utils.unregister_class(cls)


def test_match_camera_operator_sets_the_camera(addon, empty_scene, cases, results, operators):
    best = int(np.argmax([r.confidence for r in results]))
    case = cases[best]
    assert bpy.ops.unposed.match_camera(filepath=str(case.path), method='VP') == {'FINISHED'}
    cam_obj = empty_scene.camera
    data = cam_obj.data
    render = empty_scene.render
    assert (render.resolution_x, render.resolution_y) == (case.width, case.height)
    lens_px = data.lens * case.width / data.sensor_width
    assert lens_px == pytest.approx(case.focal, rel=0.02)
    assert abs(data.shift_x) < 0.01 and abs(data.shift_y) < 0.01
    np.testing.assert_allclose(np.array(cam_obj.matrix_world.translation), [0, 0, operators.EYE_HEIGHT_M], atol=1e-6)
    # The room's walls are world-axis aligned, so the Manhattan frame is the world's up to a quarter turn about Z:
    # one flip/swap choice gives the true rotation.
    camera, pose = _module(addon, "bridge.camera").camera_from_blender(empty_scene, cam_obj)
    assert _up_error_deg(pose, case) < 2.0
    state = operators.stored_match(cam_obj)
    assert state["image"] == str(case.path) and state["result"]["method"] == "vp"
    angles = {}
    for flip in (False, True):
        for swap in (False, True):
            assert bpy.ops.unposed.match_camera_axes(flip=flip, swap=swap) == {'FINISHED'}
            _, pose = _module(addon, "bridge.camera").camera_from_blender(empty_scene, cam_obj)
            angles[flip, swap] = math.degrees(math.acos(np.clip((np.trace(pose[:3, :3].T @ case.cam_from_world[:3, :3])
                                                                  - 1) / 2, -1, 1)))
            np.testing.assert_allclose(np.array(cam_obj.matrix_world.translation), [0, 0, 1.6], atol=1e-6)
    assert min(angles.values()) < 2.0 and sorted(angles.values())[1] > 60, angles
    assert operators.stored_match(cam_obj)["flip"] is True
    bg = [b for b in data.background_images if b.source == 'IMAGE']
    assert len(bg) == 1 and bpy.path.abspath(bg[0].image.filepath) == str(case.path) and data.show_background_images
    # Matching again re-uses the camera and its background, and keeps the axis choice
    assert bpy.ops.unposed.match_camera(filepath=str(case.path), method='VP') == {'FINISHED'}
    assert empty_scene.camera == cam_obj and len(data.background_images) == 1
    assert operators.stored_match(cam_obj)["flip"] is True


def test_background_photo_and_orientation_tag(addon, empty_scene, cases, results, operators):
    """The scene camera's background photo is the default input; a photo with an EXIF orientation is shown
    through an upright copy matching the calibrated size."""
    best = int(np.argmax([r.confidence for r in results]))
    case = cases[best]
    shown = np.asarray(Image.open(case.path).convert("RGB"))
    stored = np.ascontiguousarray(STORED_FROM_DISPLAYED[6](shown))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = case.path.parent / "rotated.png"
    Image.fromarray(stored).save(rotated, exif=exif.tobytes())
    cam_obj = bpy.data.objects.new("Shot", bpy.data.cameras.new("Shot"))
    empty_scene.collection.objects.link(cam_obj)
    empty_scene.camera = cam_obj
    entry = cam_obj.data.background_images.new()
    entry.image = bpy.data.images.load(str(rotated))
    assert bpy.ops.unposed.match_camera(method='AUTO') == {'FINISHED'}
    state = operators.stored_match(cam_obj)
    assert state["image"] == str(rotated) and state["result"]["extras"]["orientation"] == 6
    assert (state["result"]["width"], state["result"]["height"]) == (case.width, case.height)
    assert state["result"]["hfov_deg"] == pytest.approx(results[best].hfov_deg, abs=0.05)
    upright = [b.image for b in cam_obj.data.background_images]
    assert len(upright) == 1 and upright[0].packed_file and tuple(upright[0].size) == (case.width, case.height)
    pixels = np.empty(case.width * case.height * 4, np.float32)
    upright[0].pixels.foreach_get(pixels)
    got = pixels.reshape(case.height, case.width, 4)[::-1, :, :3]
    np.testing.assert_allclose(got * 255, shown, atol=1.0)


def test_no_photo_is_refused_and_changes_nothing(addon, empty_scene, operators):
    with pytest.raises(RuntimeError, match="no photo"):
        bpy.ops.unposed.match_camera()
    with pytest.raises(RuntimeError, match="not found"):
        bpy.ops.unposed.match_camera(filepath="/nonexistent/photo.jpg")
    assert empty_scene.camera is None and not bpy.data.cameras
    assert not bpy.ops.unposed.match_camera_axes.poll()
