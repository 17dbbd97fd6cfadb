"""Cycles renders through cameras made by bridge.camera: a tiny emissive sphere lands where the camera model says.

Each scene holds a few small glowing spheres on rays picked through known pixels of the engine camera
(pycolmap is the reference projection); the centroid of each bright blob in the render must sit on the pixel
pycolmap projects the sphere's centre to.
"""
import importlib
import os
import tempfile

import numpy as np
import pycolmap
import pytest

SAMPLES = 16
# Fractions of the image size where spheres are placed: centre, the four quadrants, near the left edge.
SPOTS = [(0.5, 0.5), (0.2, 0.3), (0.8, 0.25), (0.3, 0.8), (0.75, 0.7), (0.06, 0.5)]


@pytest.fixture
def unposed(addon):
    for name in ("bridge.camera", "engine.bundle"):
        importlib.import_module(f"{addon.__name__}.{name}")
    return addon


def _setup(scene):
    import bpy

    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = SAMPLES
    scene.cycles.use_denoising = False
    scene.view_settings.view_transform = "Standard"
    scene.world = bpy.data.worlds.new("black")
    scene.world.color = (0.0, 0.0, 0.0)
    data = bpy.data.cameras.new("Cam")
    obj = bpy.data.objects.new("Cam", data)
    scene.collection.objects.link(obj)
    scene.camera = obj
    return obj


def _glowing_spheres(scene, centres, radius):
    import bmesh
    import bpy
    from mathutils import Matrix

    mat = bpy.data.materials.new("glow")
    tree = mat.node_tree
    tree.nodes.clear()
    emission = tree.nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 10.0
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(emission.outputs[0], out.inputs[0])
    mesh = bpy.data.meshes.new("spheres")
    bm = bmesh.new()
    for c in centres:
        bmesh.ops.create_uvsphere(bm, u_segments=16, v_segments=8, radius=radius,
                                  matrix=Matrix.Translation(c))
    bm.to_mesh(mesh)
    bm.free()
    mesh.materials.append(mat)
    scene.collection.objects.link(bpy.data.objects.new("spheres", mesh))


def _render(scene):
    import bpy

    fd, path = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        scene.render.image_settings.file_format = "OPEN_EXR"
        scene.render.filepath = path
        bpy.ops.render.render(write_still=True)
        image = bpy.data.images.load(path)
        width, height = image.size
        pixels = np.empty(width * height * 4, np.float32)
        image.pixels.foreach_get(pixels)
        bpy.data.images.remove(image)
    finally:
        os.unlink(path)
    return pixels.reshape(height, width, 4)[::-1, :, 0]  # rows top-down, like COLMAP pixels


def _blob_centroids(image):
    import cv2

    labels_n, labels = cv2.connectedComponents((image > 0.02 * image.max()).astype(np.uint8))
    v, u = np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5  # pixel centres at +0.5
    out = []
    for i in range(1, labels_n):
        w = np.where(labels == i, image, 0.0)
        out.append([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])
    return np.array(out)


def _check_spheres(scene, obj, unposed, camera, radius_px):
    bridge = unposed.bridge.camera
    bridge.apply_camera(scene, obj, camera)
    pose = np.eye(4)
    pose[:3, 3] = [0.3, -0.2, 1.0]
    bridge.apply_pose(obj, pose)
    ref = pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height, params=camera.params)
    pixels = np.array([(fu * camera.width, fv * camera.height) for fu, fv in SPOTS])
    rays = np.c_[ref.cam_from_img(pixels), np.ones(len(pixels))]
    cam_pts = 4.0 * rays / np.linalg.norm(rays, axis=1, keepdims=True)
    world = (np.linalg.inv(pose) @ np.c_[cam_pts, np.ones(len(cam_pts))].T).T[:, :3]
    fx = camera.params[0]
    _glowing_spheres(scene, world, radius=radius_px * 4.0 / fx)

    found = _blob_centroids(_render(scene))
    expected = ref.img_from_cam(cam_pts)
    assert len(found) == len(expected)
    err = np.array([np.linalg.norm(found - p, axis=1).min() for p in expected])
    assert err.max() < 0.5, err


def test_pinhole_with_shift_and_non_square_pixels(unposed, empty_scene):
    obj = _setup(empty_scene)
    camera = unposed.engine.bundle.Camera(1, "PINHOLE", 200, 150, [180.0, 150.0, 88.5, 86.0])
    _check_spheres(empty_scene, obj, unposed, camera, radius_px=1.5)
    assert (empty_scene.render.pixel_aspect_x, empty_scene.render.pixel_aspect_y) == pytest.approx((1.0, 1.2))


def test_fisheye_equidistant(unposed, empty_scene):
    obj = _setup(empty_scene)
    f = 160 / np.radians(200.0)
    camera = unposed.engine.bundle.Camera(1, "OPENCV_FISHEYE", 160, 160, [f, f, 80.0, 80.0, 0.0, 0.0, 0.0, 0.0])
    _check_spheres(empty_scene, obj, unposed, camera, radius_px=1.5)
    # the lens polynomial's linear term (FISHEYE_EQUIDISTANT would render only the inscribed circle)
    assert obj.data.panorama_type == "FISHEYE_LENS_POLYNOMIAL"
    assert obj.data["unposed_fisheye_fit_rms_px"] < 0.01


def test_fisheye_fitted_polynomial(unposed, empty_scene):
    obj = _setup(empty_scene)
    camera = unposed.engine.bundle.Camera(1, "OPENCV_FISHEYE", 200, 150,
                                          [70.0, 70.0, 100.0, 75.0, 0.05, -0.02, 0.01, -0.002])
    _check_spheres(empty_scene, obj, unposed, camera, radius_px=1.5)
    assert obj.data.panorama_type == "FISHEYE_LENS_POLYNOMIAL"
