"""Blender camera bridge: intrinsics, pose and lens settings checked against Blender's own projection and pycolmap."""
import importlib
import json
import math
import warnings

import numpy as np
import pycolmap
import pytest

# (name, width, height, PINHOLE params): landscape, portrait, shifted principal point, fx > fy, fx < fy.
PINHOLES = [
    ("landscape", 200, 150, [170.0, 170.0, 100.0, 75.0]),
    ("portrait", 120, 200, [150.0, 150.0, 60.0, 100.0]),
    ("shifted", 200, 150, [160.0, 160.0, 83.25, 91.5]),
    ("fx_gt_fy", 200, 150, [190.0, 150.0, 110.0, 70.0]),
    ("fx_lt_fy", 160, 200, [140.0, 175.0, 70.0, 110.0]),
]


@pytest.fixture
def unposed(addon):
    """The add-on, with the modules these tests reach through it imported."""
    for name in ("bridge.camera", "bridge.lens", "engine.bundle", "engine.errors"):
        importlib.import_module(f"{addon.__name__}.{name}")
    return addon


def _camera_object(scene, name="Cam"):
    import bpy

    data = bpy.data.cameras.new(name)
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    scene.camera = obj
    return obj


def _random_pose(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    pose = np.eye(4)
    pose[:3, :3] = q if np.linalg.det(q) > 0 else -q
    pose[:3, 3] = rng.uniform(-2, 2, 3)
    return pose


def _points_in_view(pose, rng, n=40):
    cam = np.c_[rng.uniform(-1, 1, (n, 2)), rng.uniform(2, 6, n)]
    cam[:, :2] *= cam[:, 2:3] * 0.5
    return cam, (np.linalg.inv(pose) @ np.c_[cam, np.ones(n)].T).T[:, :3]


@pytest.mark.parametrize("case", PINHOLES, ids=[c[0] for c in PINHOLES])
def test_projection_matches_blender(unposed, empty_scene, case):
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    _, width, height, params = case
    scene = empty_scene
    obj = _camera_object(scene)
    camera = unposed.engine.bundle.Camera(1, "PINHOLE", width, height, params)
    rng = np.random.default_rng(1)
    pose = _random_pose(rng)
    unposed.bridge.camera.apply_camera(scene, obj, camera)
    unposed.bridge.camera.apply_pose(obj, pose)
    bpy.context.view_layer.update()

    cam_pts, world_pts = _points_in_view(pose, rng)
    expected = pycolmap.Camera(model="PINHOLE", width=width, height=height, params=params).img_from_cam(cam_pts)

    view = np.array([world_to_camera_view(scene, obj, Vector(p))[:2] for p in world_pts])
    via_view = np.c_[view[:, 0] * width, (1.0 - view[:, 1]) * height]  # Blender: origin bottom-left, y up
    r = scene.render
    proj = np.array(obj.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=width, y=height,
                                           scale_x=r.pixel_aspect_x, scale_y=r.pixel_aspect_y))
    h = (proj @ np.array(obj.matrix_world.inverted()) @ np.c_[world_pts, np.ones(len(world_pts))].T).T
    ndc = h[:, :2] / h[:, 3:]
    via_matrix = np.c_[(ndc[:, 0] + 1) * width / 2, (1 - ndc[:, 1]) * height / 2]

    assert np.abs(via_view - expected).max() < 0.01
    assert np.abs(via_matrix - expected).max() < 0.01


@pytest.mark.parametrize("case", PINHOLES, ids=[c[0] for c in PINHOLES])
def test_intrinsics_and_pose_round_trip(unposed, empty_scene, case):
    _, width, height, params = case
    scene = empty_scene
    obj = _camera_object(scene)
    bridge = unposed.bridge.camera
    camera = unposed.engine.bundle.Camera(3, "PINHOLE", width, height, params)
    pose = _random_pose(np.random.default_rng(2))
    bridge.apply_camera(scene, obj, camera)
    bridge.apply_pose(obj, pose)

    stored, back_pose = bridge.camera_from_blender(scene, obj)
    assert (stored.model, stored.width, stored.height, stored.params, stored.id) == ("PINHOLE", width, height,
                                                                                      params, 3)
    assert np.abs(back_pose - pose).max() < 1e-6

    del obj.data[bridge.CALIBRATION_KEY]  # now read from Blender's own projection matrix
    derived, _ = bridge.camera_from_blender(scene, obj)
    assert derived.model == "PINHOLE" and (derived.width, derived.height) == (width, height)
    np.testing.assert_allclose(derived.params, params, rtol=1e-6)


def test_pose_ignores_object_scale(unposed, empty_scene):
    obj = _camera_object(empty_scene)
    pose = _random_pose(np.random.default_rng(3))
    unposed.bridge.camera.apply_pose(obj, pose)
    obj.scale = (2.0, 2.0, 2.0)
    _, back = unposed.bridge.camera.camera_from_blender(empty_scene, obj)
    assert np.abs(back - pose).max() < 1e-5


def test_stored_calibration_follows_render_size_and_edits(unposed, empty_scene):
    scene = empty_scene
    obj = _camera_object(scene)
    bridge = unposed.bridge.camera
    camera = unposed.engine.bundle.Camera(1, "OPENCV", 200, 150, [190.0, 150.0, 110.0, 70.0, -0.1, 0.02, 0.001, -0.002])
    bridge.apply_camera(scene, obj, camera)
    doc = json.loads(obj.data[bridge.CALIBRATION_KEY])
    assert doc["model"] == "OPENCV" and doc["params"] == camera.params and doc["convention"] == "colmap"

    scene.render.resolution_percentage = 50  # the stored calibration rescales exactly as Blender does
    half, _ = bridge.camera_from_blender(scene, obj)
    clip = obj.data.background_images[0].clip
    calibration = obj.data.pop(bridge.CALIBRATION_KEY)
    derived, _ = bridge.camera_from_blender(scene, obj)  # Blender's matrix + the clip's distortion
    assert half.model == derived.model == "OPENCV" and (half.width, half.height) == (100, 75)
    np.testing.assert_allclose(half.params[:4], derived.params[:4], rtol=1e-6)
    np.testing.assert_allclose(half.params[4:], derived.params[4:], rtol=1e-6)
    assert clip.tracking.camera.distortion_model == "BROWN"

    obj.data[bridge.CALIBRATION_KEY] = calibration
    scene.render.resolution_percentage = 100
    obj.data.lens *= 1.1  # user edit: the stored calibration no longer describes the camera
    edited, _ = bridge.camera_from_blender(scene, obj)
    assert edited.params[0] == pytest.approx(190.0 * 1.1, rel=1e-6)
    assert edited.params[4:] == pytest.approx(camera.params[4:], rel=1e-6)  # distortion still from the clip


@pytest.mark.parametrize("model,params", [("SIMPLE_RADIAL", [150.0, 97.0, 80.0, -0.1]),
                                          ("RADIAL", [150.0, 97.0, 80.0, -0.1, 0.02])])
def test_derived_camera_keeps_clip_distortion(unposed, empty_scene, model, params):
    scene = empty_scene
    obj = _camera_object(scene)
    bridge = unposed.bridge.camera
    bridge.apply_camera(scene, obj, unposed.engine.bundle.Camera(1, model, 200, 150, params))
    del obj.data[bridge.CALIBRATION_KEY]
    derived, _ = bridge.camera_from_blender(scene, obj)
    assert derived.model == model
    np.testing.assert_allclose(derived.params, params, rtol=1e-6)


def test_without_resolution_the_scene_decides(unposed, empty_scene):
    scene = empty_scene
    scene.render.resolution_x, scene.render.resolution_y = 400, 300
    obj = _camera_object(scene)
    bridge = unposed.bridge.camera
    camera = unposed.engine.bundle.Camera(1, "PINHOLE", 200, 150, [190.0, 150.0, 110.0, 70.0])
    bridge.apply_camera(scene, obj, camera, set_resolution=False)
    assert (scene.render.resolution_x, scene.render.pixel_aspect_y) == (400, 1.0)
    # Square pixels in the scene: Blender renders fy = fx, so the stored calibration (fy = 150) no longer holds.
    got, _ = bridge.camera_from_blender(scene, obj)
    assert got.model == "PINHOLE"
    np.testing.assert_allclose(got.params, [380.0, 380.0, 220.0, 150.0 + (70.0 - 75.0) * 2 * 190.0 / 150.0],
                               rtol=1e-6)
    scene.render.pixel_aspect_y = 190.0 / 150.0  # the pixel aspect the camera needs: the stored one, rescaled
    got, _ = bridge.camera_from_blender(scene, obj)
    assert got.params == pytest.approx([380.0, 300.0, 220.0, 140.0], rel=1e-9)


def test_bad_camera_leaves_scene_unchanged(unposed, empty_scene):
    scene = empty_scene
    obj = _camera_object(scene)
    before = (obj.data.lens, scene.render.resolution_x, len(obj.data.keys()))
    bad = unposed.engine.bundle.Camera(1, "OPENCV", 200, 150, [190.0, 150.0, 110.0])
    with pytest.raises(unposed.engine.errors.CameraModelError, match="OPENCV takes 8 parameters"):
        unposed.bridge.camera.apply_camera(scene, obj, bad)
    assert (obj.data.lens, scene.render.resolution_x, len(obj.data.keys())) == before


# ---------------------------------------------------------------------------------------------------------------
# MovieClip tracking camera

CLIP_CASES = [
    ("SIMPLE_RADIAL", [180.0, 97.0, 80.0, -0.12], "POLYNOMIAL"),
    ("RADIAL", [180.0, 97.0, 80.0, -0.12, 0.03], "POLYNOMIAL"),
    ("OPENCV", [180.0, 170.0, 97.0, 80.0, -0.12, 0.03, 0.002, -0.001], "BROWN"),
    ("FULL_OPENCV", [180.0, 180.0, 97.0, 80.0, -0.12, 0.03, 0.002, -0.001, 0.004, 0.0, 0.0, 0.0], "BROWN"),
]


@pytest.mark.parametrize("model,params,clip_model", CLIP_CASES, ids=[c[0] for c in CLIP_CASES])
def test_clip_round_trip(unposed, empty_scene, model, params, clip_model):
    lens = unposed.bridge.lens
    camera = unposed.engine.bundle.Camera(1, model, 200, 150, params)
    clip = lens.clip_for_camera(camera, None, "lens")
    tc = clip.tracking.camera
    assert tc.distortion_model == clip_model and tuple(clip.size) == (200, 150)
    back = lens.camera_from_clip(clip, 200, 150)
    assert back.model == model
    np.testing.assert_allclose(back.params, params, rtol=1e-6, atol=1e-9)
    half = lens.camera_from_clip(clip, 100, 75)  # pixel quantities follow the requested size
    np.testing.assert_allclose(half.params[:3], np.array(params[:3]) / 2, rtol=1e-6)


def test_pinhole_and_fisheye_have_no_clip(unposed, empty_scene):
    Camera = unposed.engine.bundle.Camera
    lens = unposed.bridge.lens
    assert lens.clip_for_camera(Camera(1, "PINHOLE", 20, 10, [20.0, 20.0, 10.0, 5.0]), None, "x") is None
    fisheye = Camera(1, "OPENCV_FISHEYE", 20, 10, [10.0, 10.0, 10.0, 5.0, 0.1, 0.0, 0.0, 0.0])
    assert lens.clip_for_camera(fisheye, None, "x") is None


def _grid(width, height, n=15):
    u, v = np.meshgrid(np.linspace(0.5, width - 0.5, n), np.linspace(0.5, height - 0.5, n))
    return np.c_[u.ravel(), v.ravel()]


def test_division_clip_reads_as_exact_full_opencv(unposed, empty_scene):
    lens = unposed.bridge.lens
    camera = unposed.engine.bundle.Camera(1, "OPENCV", 200, 150, [180.0, 180.0, 97.0, 80.0, 0.0, 0.0, 0.0, 0.0])
    clip = lens.clip_for_camera(camera, None, "division")
    tc = clip.tracking.camera
    tc.distortion_model, tc.division_k1, tc.division_k2 = "DIVISION", -0.1, 0.02
    back = lens.camera_from_clip(clip, 200, 150)
    assert back.model == "FULL_OPENCV"
    # libmv's division model (distort direction): x_d = x / (1 + k1 r^2 + k2 r^4), r the undistorted radius.
    pin = pycolmap.Camera(model="PINHOLE", width=200, height=150, params=[180.0, 180.0, 97.0, 80.0])
    xy = pin.cam_from_img(_grid(200, 150))
    r2 = (xy ** 2).sum(1, keepdims=True)
    libmv = pin.img_from_cam(np.c_[xy / (1 - 0.1 * r2 + 0.02 * r2 ** 2), np.ones(len(xy))])
    ours = pycolmap.Camera(model="FULL_OPENCV", width=200, height=150, params=back.params).img_from_cam(
        np.c_[xy, np.ones(len(xy))])
    assert np.abs(ours - libmv).max() < 1e-3


def _brown(xy, ks, p):
    """Brown-Conrady with Blender's r^8 term, OpenCV's tangential convention."""
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    s = 1 + r2 * (ks[0] + r2 * (ks[1] + r2 * (ks[2] + r2 * ks[3])))
    return np.c_[x * s + 2 * p[0] * x * y + p[1] * (r2 + 2 * x * x), y * s + p[0] * (r2 + 2 * y * y) + 2 * p[1] * x * y]


def test_rational_terms_are_fitted_and_reported(unposed, empty_scene):
    lens = unposed.bridge.lens
    params = [180.0, 180.0, 97.0, 80.0, -0.1, 0.02, 0.001, -0.002, 0.003, 0.05, -0.01, 0.002]
    camera = unposed.engine.bundle.Camera(1, "FULL_OPENCV", 200, 150, params)
    with pytest.warns(lens.LensApproximationWarning, match=r"largest error (\d+\.\d+) px") as record:
        clip = lens.clip_for_camera(camera, None, "rational")
    reported = float(record[0].message.args[0].split("largest error ")[1].split(" px")[0])
    tc = clip.tracking.camera
    pin = pycolmap.Camera(model="PINHOLE", width=200, height=150, params=params[:4])
    full = pycolmap.Camera(model="FULL_OPENCV", width=200, height=150, params=params)
    xy = full.cam_from_img(_grid(200, 150))  # undistorted rays of pixels inside the image
    brown = _brown(xy, (tc.brown_k1, tc.brown_k2, tc.brown_k3, tc.brown_k4), (-tc.brown_p2, tc.brown_p1))
    err = np.abs(pin.img_from_cam(np.c_[brown, np.ones(len(xy))]) - _grid(200, 150)).max()
    assert err < 0.05 and err <= reported + 1e-3

    tc.brown_k4 = 0.01  # and back: Brown's r^8 term read as FULL_OPENCV's rational model
    with pytest.warns(lens.LensApproximationWarning, match="Brown k4"):
        back = lens.camera_from_clip(clip, 200, 150)
    xy = pin.cam_from_img(_grid(200, 150))
    brown = _brown(xy, (tc.brown_k1, tc.brown_k2, tc.brown_k3, tc.brown_k4), (-tc.brown_p2, tc.brown_p1))
    fitted = pycolmap.Camera(model="FULL_OPENCV", width=200, height=150, params=back.params)
    err = np.abs(fitted.img_from_cam(np.c_[xy, np.ones(len(xy))]) - pin.img_from_cam(np.c_[brown, np.ones(len(xy))]))
    assert err.max() < 0.05


def test_apply_camera_manages_one_clip(unposed, empty_scene):
    import bpy

    scene = empty_scene
    obj = _camera_object(scene)
    Camera = unposed.engine.bundle.Camera
    bridge = unposed.bridge.camera
    opencv = Camera(1, "OPENCV", 64, 48, [60.0, 60.0, 32.0, 24.0, -0.1, 0.01, 0.0, 0.0])
    bridge.apply_camera(scene, obj, opencv)
    bridge.apply_camera(scene, obj, Camera(1, "OPENCV", 64, 48, [60.0, 60.0, 32.0, 24.0, -0.2, 0.0, 0.0, 0.0]))
    assert len(obj.data.background_images) == 1 and len(bpy.data.movieclips) == 1
    assert obj.data.background_images[0].clip.tracking.camera.brown_k1 == pytest.approx(-0.2)
    bridge.apply_camera(scene, obj, Camera(1, "PINHOLE", 64, 48, [60.0, 60.0, 32.0, 24.0]))
    assert len(obj.data.background_images) == 0 and len(bpy.data.movieclips) == 0
    assert bridge.camera_from_blender(scene, obj)[0].model == "PINHOLE"

    photo = unposed.bridge.lens._blank_frame(128, 96)  # a photo at twice the camera's size
    bridge.apply_camera(scene, obj, opencv, image_path=photo)
    clip = obj.data.background_images[0].clip
    assert tuple(clip.size) == (128, 96) and clip.tracking.camera.focal_length_pixels == pytest.approx(120.0)
    with pytest.raises(ValueError, match="aspect ratios differ"):
        bridge.apply_camera(scene, obj, opencv, image_path=unposed.bridge.lens._blank_frame(100, 100))
    assert obj.data.background_images[0].clip == clip


# ---------------------------------------------------------------------------------------------------------------
# Cycles fisheye polynomial

FISHEYE = [280.0, 280.0, 320.0, 240.0, -0.013, 0.003, -0.0016, 0.0002]  # a typical wide lens on 640x480


def _cycles_rays(coeffs, fov, width, height, aspect, sensor_width, samples=40):
    """Pixel grid and the unit rays Cycles' FISHEYE_LENS_POLYNOMIAL casts through them (OpenCV camera axes)."""
    u, v = np.meshgrid((np.arange(samples) + 0.5) * width / samples, (np.arange(samples) + 0.5) * height / samples)
    su, sv = (u - width / 2) * sensor_width / width, (v - height / 2) * sensor_width / width * aspect
    r = np.hypot(su, sv)
    theta = -sum(k * r ** i for i, k in enumerate(coeffs))
    keep = (theta <= fov / 2) & (theta < math.pi / 2 - 1e-3)
    phi = np.arctan2(sv, su)
    rays = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    return np.c_[u[keep], v[keep]], rays[keep]


def test_fisheye_fit_residual_is_small_and_honest(unposed):
    lens = unposed.bridge.lens
    camera = unposed.engine.bundle.Camera(1, "OPENCV_FISHEYE", 640, 480, FISHEYE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # centred: nothing to warn about
        fit = lens.fit_fisheye_polynomial(camera)
    assert fit.coeffs[0] == 0.0 and fit.rms_px < 0.1
    pixels, rays = _cycles_rays(fit.coeffs, fit.fov, 640, 480, 1.0, lens.SENSOR_WIDTH_MM)
    ref = pycolmap.Camera(model="OPENCV_FISHEYE", width=640, height=480, params=FISHEYE).img_from_cam(rays)
    rms = float(np.sqrt(np.mean(np.sum((ref - pixels) ** 2, axis=1))))
    assert rms < 0.1 and rms == pytest.approx(fit.rms_px, rel=0.5, abs=0.01)

    off = unposed.engine.bundle.Camera(1, "OPENCV_FISHEYE", 640, 480, FISHEYE[:2] + [330.0, 236.0] + FISHEYE[4:])
    with pytest.warns(lens.LensApproximationWarning, match="always centred"):
        off_fit = lens.fit_fisheye_polynomial(off)
    assert off_fit.rms_px == pytest.approx(math.hypot(10, 4), abs=0.2)


def test_fisheye_camera_settings_and_read_back(unposed, empty_scene):
    scene = empty_scene
    obj = _camera_object(scene)
    Camera = unposed.engine.bundle.Camera
    bridge = unposed.bridge.camera
    camera = Camera(1, "OPENCV_FISHEYE", 640, 480, [280.0, 300.0] + FISHEYE[2:])
    bridge.apply_camera(scene, obj, camera)
    data = obj.data
    assert (data.type, data.panorama_type) == ("PANO", "FISHEYE_LENS_POLYNOMIAL")
    assert len(data.background_images) == 0
    assert bridge.camera_from_blender(scene, obj)[0].params == camera.params

    del data[bridge.CALIBRATION_KEY]
    derived, _ = bridge.camera_from_blender(scene, obj)  # fitted back from the polynomial Blender holds
    assert derived.model == "OPENCV_FISHEYE"
    pixels, rays = _cycles_rays([data.fisheye_polynomial_k0, data.fisheye_polynomial_k1, data.fisheye_polynomial_k2,
                                 data.fisheye_polynomial_k3, data.fisheye_polynomial_k4], data.fisheye_fov,
                                640, 480, 280.0 / 300.0, data.sensor_width)
    proj = pycolmap.Camera(model="OPENCV_FISHEYE", width=640, height=480, params=derived.params).img_from_cam(rays)
    assert np.abs(proj - pixels).max() < 0.3

    equidistant = Camera(1, "OPENCV_FISHEYE", 300, 300, [100.0, 100.0, 150.0, 150.0, 0.0, 0.0, 0.0, 0.0])
    bridge.apply_camera(scene, obj, equidistant)
    # the lens polynomial, linear, reaching the corners (FISHEYE_EQUIDISTANT renders only the inscribed circle)
    assert data.panorama_type == "FISHEYE_LENS_POLYNOMIAL" and data.fisheye_fov > 3.0 * 2 ** 0.5 - 1e-3
    assert data["unposed_fisheye_fit_rms_px"] < 0.01
    del data[bridge.CALIBRATION_KEY]
    derived, _ = bridge.camera_from_blender(scene, obj)
    np.testing.assert_allclose(derived.params, equidistant.params, rtol=1e-4, atol=1e-4)
