"""Scenes in and out of Blender: bridge.scene_import / scene_export / pointcloud and the import/export operators."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

N_POINTS = 40


def look_at(centre, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """cam_from_world (OpenCV axes) of a camera at `centre` looking at `target`, world z up."""
    centre, target = np.asarray(centre, float), np.asarray(target, float)
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    r = np.stack([x, np.cross(z, x), z])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, -r @ centre
    return out


def write_photo(path: Path, width: int, height: int, seed: int) -> Path:
    import cv2

    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    return path


def make_scene(addon, folder: Path):
    """Three camera models (non-square pixels, off-centre principal points, distortion, two sizes), five images
    (two sharing a photo, one without a photo) and a coloured point cloud with confidence."""
    bundle = addon.engine.bundle
    folder.mkdir(parents=True, exist_ok=True)
    cams = {1: bundle.Camera(1, "PINHOLE", 64, 48, [70.0, 66.0, 30.5, 25.2]),
            2: bundle.Camera(2, "SIMPLE_RADIAL", 48, 64, [60.0, 24.3, 31.7, -0.05]),
            3: bundle.Camera(3, "OPENCV", 64, 48, [68.0, 68.5, 32.4, 23.9, -0.1, 0.02, 0.001, -0.002])}
    a = write_photo(folder / "a.png", 64, 48, 1)
    c = write_photo(folder / "c.png", 48, 64, 2)
    d = write_photo(folder / "d.png", 64, 48, 3)
    images = [bundle.Image(1, "a", 1, look_at([3.0, 0.2, 0.5]), path=a),
              bundle.Image(2, "b", 1, look_at([0.1, 3.0, -0.4]), path=a),
              bundle.Image(3, "c", 2, look_at([-3.0, 0.3, 0.8]), path=c),
              bundle.Image(4, "d", 3, look_at([0.4, -3.0, 0.3]), path=d),
              bundle.Image(5, "e", 3, look_at([2.0, 2.0, 1.5]))]
    rng = np.random.default_rng(0)
    points = addon.engine.ply.Points(rng.uniform(-0.5, 0.5, (N_POINTS, 3)), rng.integers(0, 256, (N_POINTS, 3)),
                                     rng.random(N_POINTS))
    return bundle.Scene(cams, images, points, units="meters")


def write_bundle_dir(addon, folder: Path) -> Path:
    scene = make_scene(addon, folder / "photos")
    return addon.engine.bundle.write_bundle(scene, folder / "bundle")


def pixel_aspect(fx: float, fy: float) -> tuple[float, float]:
    return (1.0, fx / fy) if fx >= fy else (fy / fx, 1.0)


def blender_pixels(obj, xyz: np.ndarray, width: int, height: int, aspect) -> np.ndarray:
    """Where Blender's camera projects world points, in COLMAP pixel coordinates."""
    dg = bpy.context.evaluated_depsgraph_get()
    proj = np.array(obj.calc_matrix_camera(dg, x=width, y=height, scale_x=aspect[0], scale_y=aspect[1]))
    h = np.c_[xyz, np.ones(len(xyz))] @ (proj @ np.linalg.inv(np.array(obj.matrix_world))).T
    ndc = h[:, :2] / h[:, 3:4]
    return np.c_[(ndc[:, 0] + 1.0) * width / 2.0, (1.0 - ndc[:, 1]) * height / 2.0]


def pinhole_pixels(camera, cam_from_world: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    fx, fy, cx, cy, _ = camera.split()
    x = xyz @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    return np.c_[fx * x[:, 0] / x[:, 2] + cx, fy * x[:, 1] / x[:, 2] + cy]


def file_state(scene) -> dict:
    """Everything an import could touch."""
    state = {name: sorted(idb.name for idb in getattr(bpy.data, name))
             for name in ("objects", "collections", "cameras", "images", "meshes", "movieclips", "materials",
                          "node_groups")}
    render = scene.render
    state["render"] = (render.resolution_x, render.resolution_y, render.resolution_percentage,
                       render.pixel_aspect_x, render.pixel_aspect_y)
    state["camera"] = scene.camera.name if scene.camera else None
    state["tree"] = sorted((c.name, sorted(o.name for o in c.objects)) for c in scene.collection.children_recursive)
    return state


def assert_scenes_equal(got, want, tol: float = 1e-6) -> None:
    assert sorted(got.cameras) == sorted(want.cameras)
    for cid, cam in want.cameras.items():
        g = got.cameras[cid]
        assert (g.model, g.width, g.height) == (cam.model, cam.width, cam.height)
        np.testing.assert_allclose(g.params, cam.params, rtol=0, atol=tol)
    assert [im.id for im in got.images] == [im.id for im in want.images]
    for g, w in zip(got.images, want.images):
        assert (g.name, g.camera_id) == (w.name, w.camera_id)
        assert (None if g.path is None else Path(g.path).resolve()) == (None if w.path is None else Path(w.path).resolve())
        np.testing.assert_allclose(g.cam_from_world, w.cam_from_world, rtol=0, atol=tol)
    assert (got.points is None) == (want.points is None)
    if want.points is not None:
        np.testing.assert_allclose(got.points.xyz, want.points.xyz, rtol=0, atol=tol)
        np.testing.assert_array_equal(got.points.rgb, want.points.rgb)
        np.testing.assert_allclose(got.points.confidence, want.points.confidence, rtol=0, atol=tol)


def imported_cameras(collection) -> dict:
    return {obj["unposed_image_name"]: obj for obj in collection.objects if obj.type == "CAMERA"}


def test_import_bundle_cameras_photos_and_points(addon, empty_scene, tmp_path):
    scene = make_scene(addon, tmp_path)
    coll = addon.bridge.scene_import.import_bundle(bpy.context, scene, "shot", "test:source")

    assert coll.name in {c.name for c in empty_scene.collection.children}
    cams = imported_cameras(coll)
    assert sorted(cams) == ["a", "b", "c", "d", "e"]
    assert sorted(o.name for o in coll.objects) == ["a", "b", "c", "d", "e", "shot points"]
    xyz = scene.points.xyz.astype(np.float64)
    for image in scene.images:
        obj, camera = cams[image.name], scene.camera_of(image)
        fx, fy, *_ = camera.split()
        want = pinhole_pixels(camera, image.cam_from_world, xyz)
        got = blender_pixels(obj, xyz, camera.width, camera.height, pixel_aspect(fx, fy))
        assert np.abs(got - want).max() < 0.01, image.name

    # Photos: one image datablock per file; distorted cameras show theirs through a lens clip.
    bg = {name: obj.data.background_images for name, obj in cams.items()}
    assert bg["a"][0].image == bg["b"][0].image and bg["a"][0].source == "IMAGE"
    assert Path(bpy.path.abspath(bg["a"][0].image.filepath)) == tmp_path / "a.png"
    assert Path(bpy.path.abspath(bg["c"][0].clip.filepath)) == tmp_path / "c.png"
    assert bg["c"][0].clip.tracking.camera.k1 == pytest.approx(-0.05)
    assert Path(bpy.path.abspath(bg["d"][0].clip.filepath)) == tmp_path / "d.png"
    assert bg["d"][0].clip.tracking.camera.brown_k1 == pytest.approx(-0.1)
    assert all(obj.data.show_background_images for obj in cams.values())
    assert len(bpy.data.images) == 1

    # Active camera and render settings follow the first image.
    assert empty_scene.camera == cams["a"]
    render = empty_scene.render
    assert (render.resolution_x, render.resolution_y, render.resolution_percentage) == (64, 48, 100)
    assert render.pixel_aspect_y / render.pixel_aspect_x == pytest.approx(70.0 / 66.0)

    cloud = coll.objects["shot points"]
    got = addon.bridge.pointcloud.points_from_object(cloud)
    np.testing.assert_array_equal(got.xyz, scene.points.xyz)
    np.testing.assert_array_equal(got.rgb, scene.points.rgb)
    np.testing.assert_array_equal(got.confidence, scene.points.confidence)
    radius = addon.bridge.pointcloud.get_radius(cloud)
    assert 0.001 < radius < 0.05  # 0.2 % of the ~2.5 m from points to their nearest camera


def test_point_cloud_renders_its_colours(addon, empty_scene):
    """Cycles draws the points as spheres coloured from the attribute (white world light, diffuse only)."""
    pc = addon.bridge.pointcloud
    colours = np.array([[255, 0, 0], [0, 255, 0], [40, 80, 200]], np.uint8)
    points = addon.engine.ply.Points(np.array([[-1, 0, 0], [0, 0, 0], [1, 0, 0]], np.float32), colours)
    obj = pc.points_object("pc", points, 0.4)
    empty_scene.collection.objects.link(obj)
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    empty_scene.collection.objects.link(cam)
    cam.data.type, cam.data.ortho_scale, cam.location = "ORTHO", 4.0, (0.0, 0.0, 5.0)
    empty_scene.camera = cam
    render = empty_scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = 64, 32, 100
    world = bpy.data.worlds.new("white")
    world.node_tree.nodes["Background"].inputs[0].default_value = (1, 1, 1, 1)
    empty_scene.world = world
    empty_scene.view_settings.view_transform = "Standard"
    render.engine, empty_scene.cycles.samples = "CYCLES", 16
    bpy.ops.render.render()
    result = bpy.data.images["Render Result"]
    path = Path(bpy.app.tempdir) / "unposed_points_render.png"
    result.save_render(str(path))
    image = bpy.data.images.load(str(path))
    pixels = np.array(image.pixels[:]).reshape(32, 64, 4)[:, :, :3]
    for colour, x in zip(colours, (16, 32, 48)):
        seen = pixels[15:17, x - 1:x + 1].reshape(-1, 3).mean(0) * 255
        assert np.abs(seen - colour).max() < 6, (colour, seen)
    assert np.abs(pixels[2, 2] * 255 - 255).max() < 2  # background between the points stays white


def test_points_from_user_mesh_with_float_colours(addon, empty_scene):
    mesh = bpy.data.meshes.new("m")
    mesh.vertices.add(2)
    mesh.attributes["position"].data.foreach_set("vector", np.array([0, 0, 0, 1, 2, 3], np.float32))
    attr = mesh.attributes.new("Paint", "FLOAT_COLOR", "POINT")  # found as the only per-point colour
    srgb = np.array([[255, 128, 0, 255], [51, 102, 153, 255]], np.float32) / 255  # stored scene-linear
    attr.data.foreach_set("color_srgb", srgb.ravel())
    obj = bpy.data.objects.new("m", mesh)
    obj.location = (10, 0, 0)
    empty_scene.collection.objects.link(obj)
    bpy.context.view_layer.update()  # matrix_world follows location
    got = addon.bridge.pointcloud.points_from_object(obj)
    np.testing.assert_allclose(got.xyz, [[10, 0, 0], [11, 2, 3]])
    np.testing.assert_array_equal(got.rgb, [[255, 128, 0], [51, 102, 153]])
    assert got.confidence is None


def test_reimport_replaces_only_its_collection(addon, empty_scene, tmp_path):
    si = addon.bridge.scene_import
    scene = make_scene(addon, tmp_path)
    user = bpy.data.objects.new("user empty", None)
    empty_scene.collection.objects.link(user)
    coll = si.import_bundle(bpy.context, scene, "shot", "test:a")
    extra = bpy.data.objects.new("user extra", None)  # the user's own object put in the imported collection
    coll.objects.link(extra)
    other = si.import_bundle(bpy.context, scene, "other", "test:b")
    before = file_state(empty_scene)

    scene.images[0].cam_from_world = look_at([3.0, -0.5, 1.0])
    again = si.import_bundle(bpy.context, scene, "shot", "test:a")
    assert again == coll and empty_scene.camera == coll.objects["a"]
    after = file_state(empty_scene)
    before["camera"] = after["camera"] = None
    assert after == before  # same names and counts: replaced, no duplicates or orphans
    assert "user extra" in coll.objects and user.name in empty_scene.collection.objects
    fx, fy, *_ = scene.cameras[1].split()
    xyz = scene.points.xyz.astype(np.float64)
    got = blender_pixels(coll.objects["a"], xyz, 64, 48, pixel_aspect(fx, fy))
    assert np.abs(got - pinhole_pixels(scene.cameras[1], scene.images[0].cam_from_world, xyz)).max() < 0.01


def test_export_round_trip(addon, empty_scene, tmp_path):
    bundle = addon.engine.bundle
    scene = make_scene(addon, tmp_path / "photos")
    coll = addon.bridge.scene_import.import_bundle(bpy.context, scene, "shot", "test:source")
    render_before = file_state(empty_scene)["render"]

    got = addon.bridge.scene_export.scene_from_blender(bpy.context, empty_scene.objects)
    assert_scenes_equal(got, scene)
    assert got.units == "meters"
    assert file_state(empty_scene)["render"] == render_before
    bundle.write_bundle(got, tmp_path / "out")
    assert_scenes_equal(bundle.read_bundle(tmp_path / "out"), scene)

    # A copy of a camera shares its camera id; a camera made by hand gets a PINHOLE camera and fresh ids.
    dup = coll.objects["a"].copy()
    dup.data = dup.data.copy()
    dup.location.x += 1.0
    coll.objects.link(dup)
    own = bpy.data.objects.new("own", bpy.data.cameras.new("own"))
    coll.objects.link(own)
    got = addon.bridge.scene_export.scene_from_blender(bpy.context, empty_scene.objects)
    assert len(got.cameras) == 4 and len(got.images) == 7
    by_name = {im.name: im for im in got.images}
    assert by_name[dup.name].camera_id == 1 and by_name[dup.name].id not in {1, 2, 3, 4, 5}
    assert got.cameras[by_name["own"].camera_id].model == "PINHOLE"
    assert len({im.id for im in got.images}) == 7

    # Only the selected camera, with the cloud of its collection.
    got = addon.bridge.scene_export.scene_from_blender(bpy.context, [coll.objects["c"]])
    assert [im.name for im in got.images] == ["c"] and list(got.cameras) == [2]
    assert len(got.points) == N_POINTS


def test_operators_bundle_import_and_export(addon, empty_scene, tmp_path):
    bundle_dir = write_bundle_dir(addon, tmp_path)
    assert bpy.ops.unposed.import_scene(filepath=str(bundle_dir / "scene.json")) == {"FINISHED"}
    assert "bundle" in bpy.data.collections
    out = tmp_path / "exported"
    assert bpy.ops.unposed.export_scene(filepath=str(out), format="BUNDLE") == {"FINISHED"}
    assert_scenes_equal(addon.engine.bundle.read_bundle(out), addon.engine.bundle.read_bundle(bundle_dir))
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj.name == "c")
    assert bpy.ops.unposed.export_scene(filepath=str(out), format="BUNDLE", selected_only=True) == {"FINISHED"}
    assert [im.name for im in addon.engine.bundle.read_bundle(out).images] == ["c"]
    # Refuses to replace a folder that is not a bundle.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(RuntimeError, match="not a scene bundle"):
        bpy.ops.unposed.export_scene(filepath=str(tmp_path / "mine"), format="BUNDLE")
    assert (tmp_path / "mine" / "keep.txt").is_file()


@pytest.mark.parametrize("fmt", ["COLMAP", "NERFSTUDIO"])
def test_operators_colmap_and_nerfstudio_round_trip(addon, empty_scene, tmp_path, fmt):
    """Export through the engine and import the result back through the engine: same cameras and poses."""
    scene = addon.engine.bundle.read_bundle(write_bundle_dir(addon, tmp_path))
    scene.images = [im for im in scene.images if im.path is not None]  # the engine's importers want every photo
    addon.bridge.scene_import.import_bundle(bpy.context, scene, "shot", "test:source")
    out = tmp_path / fmt.lower()
    assert bpy.ops.unposed.export_scene(filepath=str(out), format=fmt) == {"FINISHED"}
    bpy.ops.wm.read_homefile(use_empty=True)
    if fmt == "COLMAP":  # a file of the model folder stands for the folder; photos from an explicit folder
        args = {"filepath": str(out / "sparse" / "0" / "cameras.txt"), "images_dir": str(out / "images")}
    else:
        args = {"filepath": str(out)}
    assert bpy.ops.unposed.import_scene(**args) == {"FINISHED"}
    coll = bpy.data.collections[fmt.lower()]
    got = addon.bridge.scene_export.scene_from_blender(bpy.context, coll.objects)
    want = {im.name: im for im in scene.images}
    assert sorted(im.name for im in got.images) == sorted(want)
    for im in got.images:
        w = want[im.name]
        np.testing.assert_allclose(im.cam_from_world, w.cam_from_world, atol=1e-5)
        cam, wcam = got.cameras[im.camera_id], scene.camera_of(w)
        assert (cam.width, cam.height) == (wcam.width, wcam.height)
        np.testing.assert_allclose(cam.split()[:4], wcam.split()[:4], atol=1e-4)
        np.testing.assert_allclose(cam.split()[4], wcam.split()[4], atol=1e-6)
        if w.path is not None:
            assert Path(im.path).read_bytes() == Path(w.path).read_bytes()
    assert len(got.points) == N_POINTS


def _break_json(bundle: Path) -> str:
    (bundle / "scene.json").write_text('{"format": "unposed-scene", "version": 1, "cameras": [')
    return "malformed JSON"


def _missing_photo(bundle: Path) -> str:
    (bundle.parent / "photos" / "c.png").unlink()
    return "c.png"


def _edit_doc(bundle: Path, edit) -> None:
    path = bundle / "scene.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _nan_pose(bundle: Path) -> str:
    _edit_doc(bundle, lambda doc: doc["images"][2]["cam_from_world"][0].__setitem__(3, float("nan")))
    return "NaN"


def _unknown_model(bundle: Path) -> str:
    _edit_doc(bundle, lambda doc: doc["cameras"][1].__setitem__("model", "PINHOLE_DELUXE"))
    return "unknown camera model 'PINHOLE_DELUXE'"


def _bad_ply(bundle: Path) -> str:
    (bundle / "points.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nend_header\n")
    return "points.ply"


def _corrupt_photo(bundle: Path) -> str:
    (bundle.parent / "photos" / "d.png").write_bytes(b"this is not an image")
    return "d.png' is not a readable image"


def _wrong_aspect(bundle: Path) -> str:
    write_photo(bundle.parent / "photos" / "c.png", 64, 48, 9)  # camera 2 is 48x64
    return "aspect ratios differ"


@pytest.mark.parametrize("breaker", [_break_json, _missing_photo, _nan_pose, _unknown_model, _bad_ply,
                                     _corrupt_photo, _wrong_aspect])
def test_bad_input_is_refused_and_changes_nothing(addon, empty_scene, tmp_path, breaker):
    # An earlier import of the same source, so a failed import must neither add to nor remove from it.
    bundle_dir = write_bundle_dir(addon, tmp_path)
    assert bpy.ops.unposed.import_scene(filepath=str(bundle_dir)) == {"FINISHED"}
    before = file_state(empty_scene)
    expected = breaker(bundle_dir)
    with pytest.raises(RuntimeError) as err:
        bpy.ops.unposed.import_scene(filepath=str(bundle_dir))
    assert expected in str(err.value)
    assert file_state(empty_scene) == before


def test_failure_while_building_rolls_back(addon, empty_scene, tmp_path, monkeypatch):
    scene = make_scene(addon, tmp_path)
    before = file_state(empty_scene)

    def fail(*_args, **_kwargs):
        raise RuntimeError("no room for points")

    monkeypatch.setattr(addon.bridge.pointcloud, "points_object", fail)
    with pytest.raises(RuntimeError, match="no room for points"):
        addon.bridge.scene_import.import_bundle(bpy.context, scene, "shot", "test:source")
    assert file_state(empty_scene) == before


def test_export_without_cameras_is_refused(addon, empty_scene, tmp_path):
    with pytest.raises(RuntimeError, match="no camera objects to export"):
        bpy.ops.unposed.export_scene(filepath=str(tmp_path / "out"), format="BUNDLE")
    assert not (tmp_path / "out").exists()


def test_photo_size_from_headers(addon, tmp_path):
    import cv2

    photo_size = addon.bridge.scene_import.photo_size
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "p.png"), pixels)
    cv2.imwrite(str(tmp_path / "b.jpg"), pixels)
    cv2.imwrite(str(tmp_path / "p.jpg"), pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    cv2.imwrite(str(tmp_path / "p.tif"), pixels)
    assert photo_size(tmp_path / "p.png") == (40, 30)
    assert photo_size(tmp_path / "b.jpg") == (40, 30)
    assert photo_size(tmp_path / "p.jpg") == (40, 30)
    assert photo_size(tmp_path / "p.tif") is None  # other formats: Blender decodes them to find out


def test_engine_import_error_is_reported_and_changes_nothing(addon, empty_scene, tmp_path):
    """A folder that is neither a bundle nor a COLMAP/nerfstudio input goes to the engine, which refuses it."""
    (tmp_path / "empty").mkdir()
    before = file_state(empty_scene)
    with pytest.raises(RuntimeError, match="no COLMAP model found"):
        bpy.ops.unposed.import_scene(filepath=str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="not found"):
        bpy.ops.unposed.import_scene(filepath=str(tmp_path / "nowhere"))
    assert file_state(empty_scene) == before
