"""Lenses carried onto Blender cameras: ST-map files, the compositor distort group, the fisheye fit's residual and
the raw lens on the camera data (bridge.stmap, bridge.scene_import, bridge.camera).

The reference for every lens is engine.projection (torch), independent of the numpy maths in engine.stmap.
"""
import importlib
import json
import math
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch

bpy = pytest.importorskip("bpy")
# LENS_FIELD below is off-centre on purpose; Cycles' fisheye is always centred, which apply_camera warns about
# (checked in test_fit_residual_is_stored_and_reported).
pytestmark = pytest.mark.filterwarnings("ignore:LENS_FIELD principal point .* always centred")

F185 = 160 / math.radians(185.0)
OPENCV = ("OPENCV", 200, 150, [150.0, 152.0, 97.3, 70.0, -0.2, 0.05, 0.01, -0.005])
FISHEYE_185 = ("OPENCV_FISHEYE", 160, 160, [F185, F185, 80.0, 80.0, 0.02, -0.01, 0.002, 0.0])


def _field_params(n: int = 9, radius: float = 2.4) -> list[float]:
    """A 185-degree lens bent by a smooth, not radially symmetric field, off-centre (LENS_FIELD)."""
    g = np.linspace(-radius, radius, n)
    a, b = np.meshgrid(g, g)
    d = np.stack([0.03 * a * b + 0.02 * np.sin(b), 0.025 * (a * a - b * b) / 2 - 0.015 * a], -1)
    return [F185, F185, 81.5, 79.0, radius, float(n), *d.ravel()]


LENS_FIELD = ("LENS_FIELD", 160, 160, _field_params())
LENSES = [OPENCV, FISHEYE_185, LENS_FIELD]


@pytest.fixture
def unposed(addon):
    for name in ("bridge.camera", "bridge.stmap", "bridge.scene_import", "bridge.scene_export", "engine.bundle",
                 "engine.projection", "engine.stmap"):
        importlib.import_module(f"{addon.__name__}.{name}")
    return addon


def _import(unposed, lens, folder, source="test:lens", name="shot", network=None):
    """Import a one-image bundle with `lens` (ST-maps into folder/stmaps); (collection, camera object, Camera)."""
    B = unposed.engine.bundle
    camera = B.Camera(7, lens[0], lens[1], lens[2], list(lens[3]), network)
    scene = B.Scene({7: camera}, [B.Image(1, "view", 7, np.eye(4))])
    coll = unposed.bridge.scene_import.import_bundle(bpy.context, scene, name, source,
                                                     stmap_dir=folder / "stmaps")
    obj = next(o for o in coll.objects if o.type == "CAMERA")
    return coll, obj, camera


def _read_image(path) -> np.ndarray:
    """An image file as bpy reads it, (H, W, 4) float32 with row 0 at the top."""
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        image.colorspace_settings.name = "Non-Color"
        width, height = image.size
        pixels = np.empty(width * height * 4, np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    return pixels.reshape(height, width, 4)[::-1]


def _float_image(name: str, rgb: np.ndarray):
    height, width = rgb.shape[:2]
    image = bpy.data.images.new(name, width, height, float_buffer=True, alpha=False)
    image.colorspace_settings.name = "Non-Color"
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :3] = rgb
    image.pixels.foreach_set(rgba[::-1].ravel())
    return image


def _composite(scene, group, image, width: int, height: int) -> np.ndarray:
    """Render the compositor with `image` through the node group at width x height: RGBA, row 0 at the top."""
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    tree = bpy.data.node_groups.new("comp", "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    source = tree.nodes.new("CompositorNodeImage")
    source.image = image
    node = tree.nodes.new("CompositorNodeGroup")
    node.node_tree = group
    out = tree.nodes.new("NodeGroupOutput")
    tree.links.new(source.outputs["Image"], node.inputs[0])
    tree.links.new(node.outputs[0], out.inputs[0])
    scene.compositing_node_group, scene.render.use_compositing = tree, True
    try:
        return _render(scene)
    finally:
        scene.compositing_node_group = None
        bpy.data.node_groups.remove(tree)


def _render(scene) -> np.ndarray:
    fd, path = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        scene.render.image_settings.file_format = "OPEN_EXR"
        scene.render.image_settings.color_depth = "32"
        scene.render.filepath = path
        bpy.ops.render.render(write_still=True)
        return _read_image(path)
    finally:
        os.unlink(path)


def _bilinear(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Bilinear sample of image (H, W, ...) at COLMAP positions (..., 2), edge pixels repeated."""
    h, w = image.shape[:2]
    x, y = pixels[..., 0] - 0.5, pixels[..., 1] - 0.5
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    wx, wy = np.clip(x - x0, 0, 1), np.clip(y - y0, 0, 1)
    if image.ndim == 3:
        wx, wy = wx[..., None], wy[..., None]
    top = image[y0, x0] * (1 - wx) + image[y0, x0 + 1] * wx
    return top * (1 - wy) + (image[y0 + 1, x0] * (1 - wx) + image[y0 + 1, x0 + 1] * wx) * wy


def _grid(width: int, height: int) -> np.ndarray:
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([u, v], -1)


# --------------------------------------------------------------------------------------------------------------


def test_exr_files_hold_the_maps_exactly(unposed, empty_scene, tmp_path):
    stmap = unposed.engine.stmap
    for lens in (OPENCV, LENS_FIELD):
        _, obj, camera = _import(unposed, lens, tmp_path, source=f"test:{lens[0]}")
        info = json.loads(obj.data[unposed.bridge.stmap.STMAP_KEY])
        maps = stmap.st_maps(camera, unposed.bridge.stmap.render_camera(obj.data, camera))
        assert info["plate"] == [camera.width, camera.height]
        assert info["render"] == [maps.render.width, maps.render.height]
        for key, expected in (("distort", maps.distort), ("undistort", maps.undistort)):
            path = tmp_path / "stmaps" / f"camera_7_{key}.exr"
            assert info[key] == str(path)
            header = path.read_bytes()[:400]
            assert header[:4] == b"v/1\x01"  # OpenEXR, channels B, G, R of pixel type 2 (32-bit float)
            chlist = header[header.index(b"chlist\x00") + 11:]
            assert [chlist[i * 18] for i in range(3)] == list(b"BGR") and all(chlist[i * 18 + 2] == 2 for i in range(3))
            back = _read_image(path)
            np.testing.assert_array_equal(back[..., :3], expected)
        # Orientation: the top-left plate pixel samples the render near its top-left corner (t from the bottom).
        s, t, valid = maps.distort[0, 0]
        assert valid == 1 and s < 0.5 and t > 0.5


def test_map_uv_samples_at_st_without_offset(unposed, empty_scene):
    """The measurement behind the group: Map UV at (s, t) = (x / W, 1 - y / H) reads the image at COLMAP pixel
    (x, y) exactly (bilinear), and the valid channel masks (0: transparent)."""
    width, height = 64, 48
    grid = _grid(width, height)

    def pattern(p):
        return 0.5 + 0.3 * np.sin(0.37 * p[..., 0] + 0.2) * np.cos(0.29 * p[..., 1] - 0.1)

    image = _float_image("src", np.repeat(pattern(grid)[..., None], 3, -1))
    shifted = grid + [3.3, -2.2]
    st = np.concatenate([unposed.engine.stmap.st_from_pixels(shifted, width, height), np.ones((height, width, 1))], -1)
    st[30:40, 5:15, 2] = 0.0
    group = unposed.bridge.stmap.distort_group("g", _float_image("st", st))
    out = _composite(empty_scene, group, image, width, height)
    inside = np.zeros((height, width), bool)
    inside[4:-4, 4:-8] = True
    inside[30:40, 5:15] = False
    ideal = _bilinear(pattern(grid), shifted)
    assert np.abs(out[..., 0] - ideal)[inside].max() < 1e-4
    # Half a pixel off would show as |gradient| / 2, about 0.05 here.
    assert np.abs(out[30:40, 5:15]).max() == 0.0


def _pattern(rays: np.ndarray, focal: float) -> np.ndarray:
    """A smooth scene painted on the sphere of directions, periods about 16 px near the axis at focal `focal`."""
    d = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    w = 2 * math.pi * focal / 16.0
    return 0.5 + 0.2 * np.sin(w * d[..., 0]) + 0.2 * np.cos(w * d[..., 1])


@pytest.mark.parametrize("lens", LENSES, ids=[lens[0] for lens in LENSES])
def test_group_distorts_cg_like_the_lens(unposed, empty_scene, tmp_path, lens):
    """A CG render of a painted sphere of directions (drawn through the render camera), distorted by the group,
    against the same scene seen through the real lens (engine.projection)."""
    _, obj, camera = _import(unposed, lens, tmp_path)
    render = unposed.bridge.stmap.render_camera(obj.data, camera)
    info = json.loads(obj.data[unposed.bridge.stmap.STMAP_KEY])
    big_w, big_h = info["render"]
    big = render.grown((big_w - camera.width) // 2, (big_h - camera.height) // 2)
    focal = camera.params[0]
    cg_rays, _ = big.rays(_grid(big_w, big_h))
    cg = _pattern(cg_rays, focal)
    group = bpy.data.node_groups[info["node_group"]]
    out = _composite(empty_scene, group, _float_image("cg", np.repeat(cg[..., None], 3, -1)), camera.width,
                     camera.height)

    out = out[::2, ::2]  # every other plate pixel (LENS_FIELD's torch unprojection is slow on CPU)
    plate = _grid(camera.width, camera.height)[::2, ::2]
    proj = unposed.engine.projection
    rays, ok = proj.unproject_directions(camera.model, camera.params, torch.from_numpy(plate.reshape(-1, 2)))
    rays, ok = rays.numpy().reshape(*plate.shape[:2], 3), ok.numpy().reshape(plate.shape[:2])
    q, seen = big.pixels(rays)
    ok &= seen & np.all((q > 1) & (q < [big_w - 1, big_h - 1]), axis=-1)
    assert ok[2:-2, 2:-2].mean() > 0.99 if lens is OPENCV else ok.mean() > 0.7
    # 1. The group samples the render where the lens's rays meet it (ideal bilinear resampling): exact.
    assert np.abs(out[..., 0] - _bilinear(cg, q))[ok].max() < 1e-3
    # 2. ... which matches the scene through the real lens up to bilinear interpolation of the render.
    truth = _pattern(rays, focal)
    assert np.abs(out[..., 0] - truth)[ok].max() < 0.02
    assert np.all(out[..., 3][ok] > 0.999)


def _glowing_spheres(scene, centres, radius):
    import bmesh
    from mathutils import Matrix

    mat = bpy.data.materials.new("glow")
    tree = mat.node_tree
    tree.nodes.clear()
    emission = tree.nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 10.0
    tree.links.new(emission.outputs[0], tree.nodes.new("ShaderNodeOutputMaterial").inputs[0])
    mesh = bpy.data.meshes.new("spheres")
    bm = bmesh.new()
    for c in centres:
        bmesh.ops.create_uvsphere(bm, u_segments=24, v_segments=12, radius=radius, matrix=Matrix.Translation(c))
    bm.to_mesh(mesh)
    bm.free()
    mesh.materials.append(mat)
    scene.collection.objects.link(bpy.data.objects.new("spheres", mesh))


def _centroids(image: np.ndarray) -> np.ndarray:
    import cv2

    n, labels = cv2.connectedComponents((image > 0.02 * image.max()).astype(np.uint8))
    grid = _grid(image.shape[1], image.shape[0])
    weights = [np.where(labels == i, image, 0.0) for i in range(1, n)]
    return np.array([(grid * w[..., None]).sum((0, 1)) / w.sum() for w in weights])


@pytest.mark.parametrize("lens", [OPENCV, FISHEYE_185], ids=["OPENCV", "OPENCV_FISHEYE"])
def test_cycles_render_with_overscan_then_group_lands_on_the_lens(unposed, empty_scene, tmp_path, lens):
    """End to end: glowing spheres rendered by Cycles through the imported camera with `overscan`, then distorted
    by the group, sit where the real lens images their centres (one of the fisheye's beyond 90 degrees)."""
    scene = empty_scene
    _, obj, camera = _import(unposed, lens, tmp_path)
    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.use_denoising = 16, False
    scene.view_settings.view_transform = "Standard"
    scene.world = bpy.data.worlds.new("black")
    scene.world.color = (0.0, 0.0, 0.0)
    pixels = np.array([(0.5, 0.5), (0.15, 0.2), (0.85, 0.3), (0.25, 0.85), (0.8, 0.8)]) * [camera.width, camera.height]
    if lens is FISHEYE_185:
        pixels = np.r_[pixels, [[12.0, 14.0]]]  # about 110 degrees from the axis: behind the camera
    proj = unposed.engine.projection
    rays, ok = proj.unproject_directions(camera.model, camera.params, torch.from_numpy(pixels))
    assert ok.all()
    cam_pts = 4.0 * rays.numpy()
    assert lens is not FISHEYE_185 or cam_pts[-1, 2] < 0
    _glowing_spheres(scene, cam_pts, radius=1.2 * 4.0 / camera.params[0])  # cam_from_world = I: world = camera
    with unposed.bridge.stmap.overscan(scene, obj):
        info = json.loads(obj.data[unposed.bridge.stmap.STMAP_KEY])
        assert (scene.render.resolution_x, scene.render.resolution_y) == tuple(info["render"])
        cg = _render(scene)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (camera.width, camera.height)
    group = bpy.data.node_groups[info["node_group"]]
    out = _composite(scene, group, _float_image("cg", cg[..., :3]), camera.width, camera.height)
    found = _centroids(out[..., 0])
    expected = proj.project(camera.model, camera.params, torch.from_numpy(cam_pts))[0].numpy()
    assert len(found) == len(expected)
    err = np.array([np.linalg.norm(found - p, axis=1).min() for p in expected])
    assert err.max() < 0.2, err  # measured: < 0.08 px (sphere centroids, 16 samples)


@pytest.mark.parametrize("lens", [FISHEYE_185, LENS_FIELD], ids=["OPENCV_FISHEYE", "LENS_FIELD"])
def test_fit_residual_is_stored_and_reported(unposed, empty_scene, tmp_path, lens):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coll, obj, camera = _import(unposed, lens, tmp_path)
    off_centre = [str(w.message) for w in caught if "always centred" in str(w.message)]
    assert len(off_centre) == (lens is LENS_FIELD)
    data = obj.data
    rms = data[unposed.bridge.camera.FIT_RMS_KEY]
    assert data.panorama_type == "FISHEYE_LENS_POLYNOMIAL"
    # Measured independently: each Cycles ray (from the polynomial Blender holds) projected by the real lens.
    grid = _grid(camera.width, camera.height)[::4, ::4].reshape(-1, 2)
    mm = data.sensor_width / camera.width
    su, sv = (grid[:, 0] - camera.width / 2) * mm, (grid[:, 1] - camera.height / 2) * mm
    r = np.hypot(su, sv)
    theta = -sum(getattr(data, f"fisheye_polynomial_k{i}") * r ** i for i in range(5))
    phi = np.arctan2(sv, su)
    rays = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    back, valid = unposed.engine.projection.project(camera.model, camera.params, torch.from_numpy(rays))
    keep = valid.numpy() & (theta <= data.fisheye_fov / 2)
    measured = float(np.sqrt(np.mean(np.sum((back.numpy() - grid) ** 2, axis=1)[keep])))
    assert rms == pytest.approx(measured, rel=0.1, abs=0.01)
    assert data.fisheye_fov > math.radians(185)
    summary = unposed.bridge.scene_import.lens_summary(coll)
    assert f"camera 7 {lens[0]}: Cycles fisheye polynomial, fit RMS {rms:.2f} px" in summary
    assert "ST-maps for a" in summary


@pytest.mark.parametrize("lens", [LENS_FIELD, FISHEYE_185, OPENCV], ids=["LENS_FIELD", "OPENCV_FISHEYE", "OPENCV"])
def test_raw_lens_round_trips(unposed, empty_scene, tmp_path, lens):
    network = None
    if lens is LENS_FIELD:  # with its network file (engine.lens_field)
        lens_field = importlib.import_module(f"{unposed.__name__}.engine.lens_field")
        network = lens_field.save_network(tmp_path / "net.npz", lens_field.LensField(grid=9, radius=2.4))
    _, obj, camera = _import(unposed, lens, tmp_path, network=network)
    bridge = unposed.bridge.camera
    back, _ = bridge.camera_from_blender(empty_scene, obj)
    assert (back.model, back.width, back.height, back.params, back.lens_network) == (
        camera.model, camera.width, camera.height, camera.params, network)
    empty_scene.render.resolution_percentage = 50  # the stored lens rescales; the field's grid is in radians
    half, _ = bridge.camera_from_blender(empty_scene, obj)
    assert (half.width, half.height) == (camera.width // 2, camera.height // 2)
    assert half.params[0] == camera.params[0] / 2 and half.params[4:] == camera.params[4:]
    empty_scene.render.resolution_percentage = 100
    exported = unposed.bridge.scene_export.scene_from_blender(bpy.context, [obj])
    bundle = unposed.engine.bundle
    (cam,) = bundle.read_bundle(bundle.write_bundle(exported, tmp_path / "out"), check_files=False).cameras.values()
    assert (cam.model, cam.width, cam.height, cam.params) == (camera.model, camera.width, camera.height,
                                                               camera.params)


def test_reimport_replaces_group_in_place_and_failure_changes_nothing(unposed, empty_scene, tmp_path):
    si = unposed.bridge.scene_import
    _, obj, _ = _import(unposed, FISHEYE_185, tmp_path)
    first = bpy.data.node_groups[json.loads(obj.data[unposed.bridge.stmap.STMAP_KEY])["node_group"]]
    name, uid = first.name, first.session_uid
    user = bpy.data.node_groups.new("user comp", "CompositorNodeTree")  # the user's compositor uses the group
    node = user.nodes.new("CompositorNodeGroup")
    node.node_tree = first

    _, obj, _ = _import(unposed, FISHEYE_185, tmp_path)
    second = bpy.data.node_groups[name]
    assert second.session_uid != uid and node.node_tree == second
    assert [g.name for g in bpy.data.node_groups if g.name.startswith(unposed.bridge.stmap.GROUP_PREFIX)] == [name]
    assert sorted(i.name for i in bpy.data.images if i.name.startswith("camera_")) == ["camera_7_distort.exr"]

    def state():
        return {kind: sorted(idb.name for idb in getattr(bpy.data, kind))
                for kind in ("objects", "cameras", "images", "node_groups", "collections")}

    before = state()
    (tmp_path / "blocked").write_text("a file where the ST-map folder should go")
    B = unposed.engine.bundle
    scene = B.Scene({7: B.Camera(7, *FISHEYE_185[:3], list(FISHEYE_185[3]))}, [B.Image(1, "view", 7, np.eye(4))])
    with pytest.raises(OSError):
        si.import_bundle(bpy.context, scene, "shot", "test:lens", stmap_dir=tmp_path / "blocked" / "stmaps")
    assert state() == before and node.node_tree == second
