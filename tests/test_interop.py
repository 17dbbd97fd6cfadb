"""COLMAP and nerfstudio interchange, and the `import` / `export` commands."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from engine import __version__
from engine.bundle import Camera, Image, Scene, read_bundle, write_bundle
from engine.camera_models import MODELS
from engine.cli import main
from engine.interop import EXPORT_MARKER, InteropError, colmap, nerfstudio
from engine.ply import Points
from engine.pose import CV_FROM_GL, make_transform, quat_to_rotation

RNG = np.random.default_rng(7)
FAR = np.array([0.0, 0.0, 0.0, 1.0])


def random_params(model_name: str, rng: np.random.Generator, zero: tuple[str, ...] = ()) -> list[float]:
    """Plausible parameters for a 640x480 camera: off-centre principal point, every distortion term non-zero."""
    model = MODELS[model_name]
    values = {"f": 500 + 50 * rng.random(), "fx": 500 + 50 * rng.random(), "fy": 480 + 50 * rng.random(),
              "cx": 320 + 10 * rng.standard_normal(), "cy": 240 + 10 * rng.standard_normal()}
    return [values.get(p, 0.0 if p in zero else 0.01 * rng.standard_normal()) for p in model.params]


def random_pose(rng: np.random.Generator) -> np.ndarray:
    return make_transform(quat_to_rotation(rng.standard_normal(4)), 3 * rng.standard_normal(3))


def write_photo(path: Path) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((6, 8, 3), 127, np.uint8))
    return path


def make_scene(tmp: Path, cameras: dict[int, tuple[str, list[float]]], per_camera: int = 2,
               n_points: int = 50) -> Scene:
    cams = {cid: Camera(cid, model, 640, 480, params) for cid, (model, params) in cameras.items()}
    images = []
    for k, cid in enumerate(np.repeat(list(cams), per_camera)):
        name = f"cam{cid}/img_{k:03d}.png"
        images.append(Image(id=10 + 3 * k, name=name, camera_id=int(cid), cam_from_world=random_pose(RNG),
                            path=write_photo(tmp / "photos" / name)))
    points = Points(RNG.standard_normal((n_points, 3)) * 5, RNG.integers(0, 256, (n_points, 3)))
    return Scene(cams, images, points)


def assert_same_scene(a: Scene, b: Scene, same_ids: bool = True) -> None:
    """Same images (by name), intrinsics and poses to 1e-9 relative, same points and colours."""
    assert sorted(i.name for i in a.images) == sorted(i.name for i in b.images)
    by_name = {i.name: i for i in b.images}
    for img in a.images:
        other = by_name[img.name]
        ca, cb = a.camera_of(img), b.camera_of(other)
        assert (ca.model, ca.width, ca.height) == (cb.model, cb.width, cb.height)
        np.testing.assert_allclose(cb.params, ca.params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(other.cam_from_world, img.cam_from_world, rtol=1e-9, atol=1e-12)
        if same_ids:
            assert (other.id, other.camera_id) == (img.id, img.camera_id)
    if a.points is None:
        assert b.points is None
    else:
        np.testing.assert_array_equal(b.points.xyz, a.points.xyz)
        np.testing.assert_array_equal(b.points.rgb, a.points.rgb)


def round_trip(tmp: Path, scene: Scene, fmt: str, *extra: str) -> Scene:
    write_bundle(scene, tmp / "bundle")
    assert main(["--progress", "none", "export", str(tmp / "bundle"), "--format", fmt, "--out", str(tmp / "x"),
                 *extra]) == 0
    assert main(["--progress", "none", "import", str(tmp / "x"), "--out", str(tmp / "back")]) == 0
    return read_bundle(tmp / "back")


def test_camera_registry_matches_colmap():
    import pycolmap

    for name, model in MODELS.items():
        cam = pycolmap.Camera(model=name, width=10, height=10, params=[1.0] * model.num_params)
        assert cam.model.value == model.model_id
        assert tuple(p.strip() for p in cam.params_info.split(",")) == model.params


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_colmap_round_trip_all_models(tmp_path, binary):
    scene = make_scene(tmp_path, {i + 1: (m, random_params(m, RNG)) for i, m in enumerate(MODELS)})
    back = round_trip(tmp_path, scene, "colmap", *(["--binary"] if binary else []))
    assert_same_scene(scene, back)
    ext = ".bin" if binary else ".txt"
    for stem in ("cameras", "images", "points3D", "rigs", "frames"):
        assert (tmp_path / "x" / "sparse" / "0" / f"{stem}{ext}").is_file()
    for img in back.images:  # photos were exported into images/ and the bundle refers to them there
        assert img.path == (tmp_path / "x" / "images" / img.name).resolve()
        assert img.path.read_bytes() == (tmp_path / "photos" / img.name).read_bytes()
    assert json.loads((tmp_path / "x" / EXPORT_MARKER).read_text())["format"] == "colmap"
    for stem in ("rigs", "frames"):  # models from COLMAP < 3.12 have no rigs or frames
        (tmp_path / "x" / "sparse" / "0" / f"{stem}{ext}").unlink()
    assert_same_scene(scene, colmap.read_model(tmp_path / "x" / "sparse" / "0"))


def test_colmap_text_refuses_names_with_spaces(tmp_path):
    scene = make_scene(tmp_path, {1: ("PINHOLE", random_params("PINHOLE", RNG))}, per_camera=1)
    scene.images[0].name = "my photo.png"
    with pytest.raises(InteropError, match="whitespace.*--binary"):
        colmap.write_model(scene, tmp_path / "m", binary=False)
    colmap.write_model(scene, tmp_path / "m", binary=True)
    assert colmap.read_model(tmp_path / "m").images[0].name == "my photo.png"


def _rigid(rng):
    import pycolmap

    pose = random_pose(rng)
    return pose, pycolmap.Rigid3d(pycolmap.Rotation3d(pose[:3, :3]), pose[:3, 3])


def test_third_party_colmap_model_with_rig(tmp_path):
    """A model built with pycolmap's API as other tools do: a two-camera rig, an unregistered frame, tracks."""
    import pycolmap

    rng = np.random.default_rng(3)
    rec = pycolmap.Reconstruction()
    params = {1: ("SIMPLE_RADIAL", [60.0, 31.0, 25.0, 0.01]),
              2: ("OPENCV_FISHEYE", [40.0, 41.0, 32.0, 24.0, 0.01, 0.002, -0.001, 0.0005])}
    for cid, (model, p) in params.items():
        rec.add_camera(pycolmap.Camera(camera_id=cid, model=model, width=64, height=48, params=p))
    rig = pycolmap.Rig(rig_id=1)
    rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, 1))
    sensor2_from_rig, s2 = _rigid(rng)
    rig.add_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, 2), s2)
    rec.add_rig(rig)
    expected = {}
    for f in (1, 2, 3):
        frame = pycolmap.Frame(frame_id=f, rig_id=1)
        rig_from_world, rfw = _rigid(rng)
        if f != 3:  # frame 3 stays unregistered (no pose), like an image the mapper could not place
            frame.rig_from_world = rfw
        for cid in (1, 2):
            frame.add_data_id(pycolmap.data_t(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, cid), 2 * f + cid))
        rec.add_frame(frame)
        for cid in (1, 2):
            image_id = 2 * f + cid
            name = f"frame{f}_cam{cid}.jpg"
            image = pycolmap.Image(name=name, camera_id=cid, image_id=image_id,
                                   keypoints=rng.uniform(0, 40, (5, 2)))
            image.frame_id = f
            rec.add_image(image)
            write_photo(tmp_path / "proj" / "images" / name)
            if f != 3:
                expected[name] = (image_id, cid, (sensor2_from_rig if cid == 2 else np.eye(4)) @ rig_from_world)
        if f != 3:
            rec.register_frame(f)
    xyz = rng.standard_normal((5, 3))
    for k, p in enumerate(xyz):
        track = pycolmap.Track()
        track.add_element(3, k)
        track.add_element(4, k)
        rec.add_point3D(p, track, np.array([k, 2 * k, 3 * k], np.uint8))
    (tmp_path / "proj" / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(tmp_path / "proj" / "sparse" / "0"))

    out = tmp_path / "bundle"
    assert main(["--progress", "none", "import", str(tmp_path / "proj"), "--out", str(out)]) == 0
    scene = read_bundle(out)
    assert {i.name for i in scene.images} == set(expected)
    for img in scene.images:
        image_id, cid, pose = expected[img.name]
        assert (img.id, img.camera_id) == (image_id, cid)
        np.testing.assert_allclose(img.cam_from_world, pose, rtol=1e-9, atol=1e-12)
        assert img.path == (tmp_path / "proj" / "images" / img.name).resolve()
        cam = scene.camera_of(img)
        assert (cam.model, cam.width, cam.height, cam.params) == (params[cid][0], 64, 48, params[cid][1])
    np.testing.assert_array_equal(scene.points.xyz, xyz.astype(np.float32))
    np.testing.assert_array_equal(scene.points.rgb, [[k, 2 * k, 3 * k] for k in range(5)])
    prov = scene.provenance
    assert (prov["tool"], prov["version"], prov["command"], prov["source_format"]) == \
        ("unposed", __version__, "import", "colmap")
    assert prov["source"] == str((tmp_path / "proj").resolve())
    assert abs((datetime.now(timezone.utc) - datetime.fromisoformat(prov["time"])).total_seconds()) < 60


def _fov_model(root: Path) -> Path:
    import pycolmap

    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=4, model="FOV", width=64, height=48,
                                                    params=[50.0, 50.0, 32.0, 24.0, 0.9]))
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.jpg", camera_id=4, image_id=1),
                                     _rigid(np.random.default_rng(0))[1])
    model = root / "model"
    model.mkdir(parents=True)
    rec.write_text(str(model))
    return model


def test_colmap_unsupported_model_is_named(tmp_path):
    with pytest.raises(InteropError, match=r"camera 4 uses the COLMAP camera model FOV"):
        colmap.read_model(_fov_model(tmp_path))


def test_colmap_locate_layouts(tmp_path):
    scene = make_scene(tmp_path, {1: ("PINHOLE", random_params("PINHOLE", RNG))}, per_camera=1)
    for layout in ("proj/sparse/0", "proj/sparse", "proj/colmap/sparse/0"):
        colmap.write_model(scene, tmp_path / layout)
        (tmp_path / "proj" / "images").mkdir(parents=True, exist_ok=True)
        model, images = colmap.locate(tmp_path / layout)
        assert (model, images) == (tmp_path / layout, tmp_path / "proj" / "images")
    assert colmap.locate(tmp_path / "proj")[0] == tmp_path / "proj" / "sparse" / "0"
    with pytest.raises(InteropError, match=r"no COLMAP model found.*cameras\.bin"):
        colmap.locate(tmp_path / "photos")
    with pytest.raises(InteropError, match=r"photo not found at .*images/cam1/img_000\.png"):
        colmap.read_model(tmp_path / "proj" / "sparse" / "0", tmp_path / "proj" / "images")
    assert colmap.read_model(tmp_path / "proj" / "sparse" / "0").images[0].path is None


def test_nerfstudio_round_trip_perspective_per_frame(tmp_path):
    models = ["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV"]
    cams = {i + 1: (m, random_params(m, RNG, zero=("k4", "k5", "k6"))) for i, m in enumerate(models)}
    scene = make_scene(tmp_path, cams)
    back = round_trip(tmp_path, scene, "nerfstudio")
    assert_same_scene(scene, back, same_ids=False)
    assert [i.id for i in back.images] == [i.id for i in scene.images]  # colmap_im_id keeps image ids
    doc = json.loads((tmp_path / "x" / "transforms.json").read_text())
    assert doc["camera_model"] == "OPENCV" and "fl_x" not in doc  # per-frame intrinsics only, as nerfstudio wants
    assert doc["frames"][0]["file_path"] == "images/cam1/img_000.png"


def test_nerfstudio_round_trip_fisheye_shared(tmp_path):
    scene = make_scene(tmp_path, {5: ("OPENCV_FISHEYE", random_params("OPENCV_FISHEYE", RNG))}, per_camera=4)
    back = round_trip(tmp_path, scene, "nerfstudio")
    assert_same_scene(scene, back, same_ids=False)
    doc = json.loads((tmp_path / "x" / "transforms.json").read_text())
    assert doc["camera_model"] == "OPENCV_FISHEYE" and doc["ply_file_path"] == "points.ply"
    assert all(k not in f for f in doc["frames"] for k in ("fl_x", "k1"))
    params = scene.cameras[5].params
    assert [doc[k] for k in ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "k3", "k4")] == params  # cx, cy: no offset
    assert (doc["w"], doc["h"]) == (640, 480)
    for frame, img in zip(doc["frames"], scene.images):
        c2w = np.array(frame["transform_matrix"])
        rot, t = img.cam_from_world[:3, :3], img.cam_from_world[:3, 3]
        np.testing.assert_allclose(c2w[:3, 3], -rot.T @ t, atol=1e-12)  # camera centre
        np.testing.assert_allclose(-c2w[:3, 2], rot.T @ [0, 0, 1], atol=1e-12)  # OpenGL looks down -z
        np.testing.assert_allclose(c2w[:3, 1], rot.T @ [0, -1, 0], atol=1e-12)  # image up is OpenCV's -y


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "THIN_PRISM_FISHEYE"])
def test_nerfstudio_equivalent_fisheye_projects_identically(tmp_path, model):
    """Fisheye models nerfstudio has no name for become OPENCV_FISHEYE; COLMAP projects both alike."""
    import pycolmap

    params = random_params(model, RNG, zero=("p1", "p2", "sx1", "sy1"))
    scene = make_scene(tmp_path, {1: (model, params)}, per_camera=1)
    back = round_trip(tmp_path, scene, "nerfstudio")
    cam = back.camera_of(back.images[0])
    assert cam.model == "OPENCV_FISHEYE"
    rays = np.c_[RNG.uniform(-1.2, 1.2, (500, 2)), np.ones(500)]
    before = pycolmap.Camera(model=model, width=640, height=480, params=params).img_from_cam(rays)
    after = pycolmap.Camera(model=cam.model, width=640, height=480, params=cam.params).img_from_cam(rays)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-9)


def test_nerfstudio_export_refuses_what_it_cannot_express(tmp_path):
    params = random_params("FULL_OPENCV", RNG, zero=("k4", "k6"))
    scene = make_scene(tmp_path, {1: ("FULL_OPENCV", params)}, per_camera=1)
    with pytest.raises(InteropError, match=r"camera 1 \(FULL_OPENCV\): parameter k5="):
        nerfstudio.write_transforms(scene, tmp_path / "a")
    scene = make_scene(tmp_path, {1: ("OPENCV", random_params("OPENCV", RNG)),
                                  2: ("OPENCV_FISHEYE", random_params("OPENCV_FISHEYE", RNG))}, per_camera=1)
    with pytest.raises(InteropError, match="mixes fisheye and perspective"):
        nerfstudio.write_transforms(scene, tmp_path / "b")


def _frame(name: str, c2w: np.ndarray, **fields) -> dict:
    return {"file_path": name, "transform_matrix": c2w.tolist(), **fields}


def test_nerfstudio_file_as_other_tools_write_it(tmp_path):
    """Shared intrinsics with per-frame overrides, 3x4 matrices, an ASCII PLY with 'uint8' colours."""
    c2w = [np.linalg.inv(random_pose(RNG)) for _ in range(3)]
    for k in range(3):
        write_photo(tmp_path / "data" / "images" / f"frame_{k:05d}.jpg")
    doc = {"camera_model": "OPENCV", "fl_x": 600.0, "fl_y": 610.0, "cx": 330.5, "cy": 245.25, "w": 640, "h": 480,
           "k1": 0.02, "k2": -0.01, "p1": 0.001, "p2": -0.002, "applied_transform": np.eye(4)[:3].tolist(),
           "ply_file_path": "sparse_pc.ply",
           "frames": [_frame("./images/frame_00000.jpg", c2w[0]),
                      _frame("images/frame_00001.jpg", c2w[1][:3]),
                      _frame("images/frame_00002.jpg", c2w[2], fl_x=700.0, fl_y=700.0, k2=0.0, p1=0.0, p2=0.0,
                             camera_model="SIMPLE_RADIAL")]}
    (tmp_path / "data" / "transforms.json").write_text(json.dumps(doc))
    xyz = RNG.standard_normal((4, 3)).astype(np.float32)
    rows = "".join(f"{x} {y} {z} {k} {10 * k} 255\n" for k, (x, y, z) in enumerate(xyz.tolist()))
    (tmp_path / "data" / "sparse_pc.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
        f"property uint8 red\nproperty uint8 green\nproperty uint8 blue\nend_header\n{rows}")

    scene = nerfstudio.read_transforms(tmp_path / "data" / "transforms.json")
    assert [i.name for i in scene.images] == [f"frame_{k:05d}.jpg" for k in range(3)]
    cams = [scene.camera_of(i) for i in scene.images]
    assert cams[0] is cams[1]
    assert (cams[0].model, cams[0].params) == ("OPENCV", [600.0, 610.0, 330.5, 245.25, 0.02, -0.01, 0.001, -0.002])
    assert (cams[2].model, cams[2].params) == ("SIMPLE_RADIAL", [700.0, 330.5, 245.25, 0.02])
    for img, pose in zip(scene.images, c2w):
        # Geometry, not the formula: the camera centre maps to the origin, and a point 2 units along the
        # OpenGL camera's -z (its viewing direction) lies at depth 2 on the OpenCV camera's +z axis.
        ahead = pose @ np.array([0.0, 0.0, -2.0, 1.0])
        np.testing.assert_allclose(img.cam_from_world @ np.r_[pose[:3, 3], 1.0], FAR, atol=1e-12)
        np.testing.assert_allclose(img.cam_from_world @ ahead, [0.0, 0.0, 2.0, 1.0], atol=1e-12)
        np.testing.assert_allclose(img.cam_from_world @ pose @ CV_FROM_GL, np.eye(4), atol=1e-12)
    np.testing.assert_array_equal(scene.points.xyz, xyz)
    np.testing.assert_array_equal(scene.points.rgb[:, 1], [0, 10, 20, 30])


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("fl_x"), r"frames\[0\]: missing field 'fl_x'"),
    (lambda d: d.update(camera_model="EQUIRECTANGULAR"), r"camera_model: 'EQUIRECTANGULAR' is not supported"),
    (lambda d: d.update(k4=0.001), r"k4=0.001 \(nerfstudio's r\^8 radial term\)"),
    (lambda d: d.update(w=640.5), r"frames\[0\]\.w: expected a positive whole number"),
    (lambda d: d.update(fl_y=-5.0), r"focal length must be positive"),
    (lambda d: d["frames"][1].update(file_path="images/missing.jpg"), r"frames\[1\]\.file_path: photo not found"),
    (lambda d: d["frames"][1].update(file_path="./images/a.jpg"), r"frames\[1\]\.file_path names the same photo"),
    (lambda d: d["frames"][0]["transform_matrix"][0].__setitem__(0, 2.0), r"frames\[0\]\.transform_matrix: rotation"),
    (lambda d: d["frames"][0].update(transform_matrix="eye"), r"frames\[0\]\.transform_matrix: expected a 4x4"),
    (lambda d: d.update(frames=[]), r"'frames' must be a non-empty list"),
    (lambda d: d.update(ply_file_path="nope.ply"), r"ply_file_path: .*nope\.ply: point cloud file not found"),
])
def test_nerfstudio_bad_input_names_the_problem(tmp_path, change, message):
    write_photo(tmp_path / "images" / "a.jpg")
    write_photo(tmp_path / "images" / "b.jpg")
    doc = {"fl_x": 500.0, "fl_y": 500.0, "cx": 320.0, "cy": 240.0, "w": 640, "h": 480,
           "frames": [_frame("images/a.jpg", np.eye(4)), _frame("images/b.jpg", np.eye(4))]}
    change(doc)
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(InteropError, match=message):
        nerfstudio.read_transforms(tmp_path / "transforms.json")


def test_nerfstudio_malformed_json(tmp_path):
    (tmp_path / "transforms.json").write_text('{"frames": [')
    with pytest.raises(InteropError, match=r"transforms\.json: malformed JSON at line 1 column 13"):
        nerfstudio.read_transforms(tmp_path / "transforms.json")


# --- the command line, as the Blender job runner drives it -------------------------------------------------

def run_engine(*args: str) -> tuple[int, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "engine", "--progress", "jsonl", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_cli_import_and_export(tmp_path):
    scene = make_scene(tmp_path, {1: ("OPENCV", random_params("OPENCV", RNG))}, per_camera=3)
    colmap.write_model(scene, tmp_path / "proj" / "sparse" / "0", binary=True)
    for img in scene.images:
        write_photo(tmp_path / "proj" / "images" / img.name)
    code, events = run_engine("import", str(tmp_path / "proj"), "--out", str(tmp_path / "b"))
    assert code == 0
    assert events[-1] == {"event": "result", "result": {"bundle": str(tmp_path / "b"), "format": "colmap",
                                                        "images": 3, "cameras": 1, "points": 50}}
    assert_same_scene(scene, read_bundle(tmp_path / "b"))
    code, events = run_engine("export", str(tmp_path / "b"), "--format", "nerfstudio", "--out", str(tmp_path / "ns"))
    assert code == 0 and events[-1]["event"] == "result" and events[-1]["result"]["photos"] == 3
    assert any(e["event"] == "progress" and e["name"] == "photos" and e["done"] == 3 for e in events)
    assert_same_scene(scene, nerfstudio.read_transforms(tmp_path / "ns" / "transforms.json"), same_ids=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_cli_bad_input_exit_2_and_no_output(tmp_path):
    model = _fov_model(tmp_path)
    code, events = run_engine("import", str(model), "--out", str(tmp_path / "b"))
    assert code == 2 and events[-1]["event"] == "error" and events[-1]["kind"] == "InteropError"
    assert "COLMAP camera model FOV" in events[-1]["message"]
    assert not (tmp_path / "b").exists() and _leftovers(tmp_path) == []

    code, events = run_engine("import", str(tmp_path / "nothing"), "--out", str(tmp_path / "b"))
    assert code == 2 and "nothing: not found" in events[-1]["message"] and not (tmp_path / "b").exists()

    # A failed export (a camera nerfstudio cannot express) leaves nothing half-written.
    scene = make_scene(tmp_path, {1: ("FULL_OPENCV", random_params("FULL_OPENCV", RNG))}, per_camera=1)
    write_bundle(scene, tmp_path / "b")
    code, events = run_engine("export", str(tmp_path / "b"), "--format", "nerfstudio", "--out", str(tmp_path / "ns"))
    assert code == 2 and "parameter k4=" in events[-1]["message"]
    assert not (tmp_path / "ns").exists() and _leftovers(tmp_path) == []


def test_cli_refuses_to_replace_foreign_folders(tmp_path):
    scene = make_scene(tmp_path, {1: ("PINHOLE", random_params("PINHOLE", RNG))}, per_camera=1)
    write_bundle(scene, tmp_path / "b")
    precious = tmp_path / "mine" / "notes.txt"
    precious.parent.mkdir()
    precious.write_text("keep me")
    for args in (["export", str(tmp_path / "b"), "--format", "colmap", "--out", str(precious.parent)],
                 ["import", str(tmp_path / "x"), "--out", str(precious.parent)]):
        code, events = run_engine(*args)
        assert code == 2 and "refusing to replace it" in events[-1]["message"]
        assert precious.read_text() == "keep me"
    # An earlier export is replaced.
    assert main(["--progress", "none", "export", str(tmp_path / "b"), "--format", "colmap", "--out",
                 str(tmp_path / "e")]) == 0
    assert main(["--progress", "none", "export", str(tmp_path / "b"), "--format", "nerfstudio", "--out",
                 str(tmp_path / "e")]) == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "images", "points.ply", "transforms.json", EXPORT_MARKER]


def test_learned_lens_export_is_refused_with_a_clear_error():
    n = 2
    field = Camera(3, "LENS_FIELD", 64, 64, [20.0, 20.0, 32.0, 32.0, 1.8, float(n)] + [0.0] * (2 * n * n))
    with pytest.raises(InteropError, match=r"camera 3 \(LENS_FIELD\).*nerfstudio"):
        nerfstudio.camera_to_nerfstudio(field)
