"""Scene bundle: reading validates and names the problem; writing is atomic and keeps photos."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import Camera, Image, Scene, read_bundle, write_bundle
from engine.errors import BundleError
from engine.ply import Points, read_points, write_points
from engine.pose import make_transform, quat_to_rotation

RNG = np.random.default_rng(11)


def valid_doc(root: Path) -> dict:
    (root / "photos").mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        (root / "photos" / name).write_bytes(b"\xff\xd8 not decoded here")
    write_points(root / "points.ply", Points(RNG.standard_normal((20, 3)), RNG.integers(0, 256, (20, 3))))
    pose = make_transform(quat_to_rotation([0.9, 0.1, -0.2, 0.3]), [0.5, -1.0, 2.0]).tolist()
    return {"format": "unposed-scene", "version": 1, "units": "unknown",
            "cameras": [{"id": 1, "model": "OPENCV", "width": 640, "height": 480,
                         "params": [500.0, 505.0, 320.0, 240.0, 0.01, -0.02, 0.001, 0.002]},
                        {"id": 2, "model": "SIMPLE_PINHOLE", "width": 320, "height": 240,
                         "params": [300.0, 160.0, 120.0]}],
            "images": [{"id": 1, "name": "a.jpg", "path": "photos/a.jpg", "camera_id": 1, "cam_from_world": pose},
                       {"id": 2, "name": "b.jpg", "path": "photos/b.jpg", "camera_id": 2,
                        "cam_from_world": np.eye(4).tolist(), "depth": "depth/b.npy"}],
            "points": "points.ply", "provenance": {"tool": "test"}, "splats": "splats.ply"}


def write_doc(root: Path, doc: dict | str) -> Path:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    (root / "scene.json").write_text(text, encoding="utf-8")
    return root


def test_valid_bundle_reads(tmp_path):
    doc = valid_doc(tmp_path)
    scene = read_bundle(write_doc(tmp_path, doc))
    assert [c.model for c in scene.cameras.values()] == ["OPENCV", "SIMPLE_PINHOLE"]
    assert scene.images[0].path == (tmp_path / "photos" / "a.jpg").resolve()
    np.testing.assert_array_equal(scene.images[0].cam_from_world, doc["images"][0]["cam_from_world"])
    assert scene.images[1].extras == {"depth": "depth/b.npy"} and scene.extras == {"splats": "splats.ply"}
    assert len(scene.points) == 20 and scene.provenance == {"tool": "test"}


def _set(path: str, value):
    """A change to the document: set the field at a dotted path ('images.0.id') to `value`."""
    def change(doc):
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value
    return change


def _delete(path: str):
    def change(doc):
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]
    return change


NAN_POSE = np.eye(4).tolist()
NAN_POSE[1][3] = float("nan")
SCALED_POSE = (2 * np.eye(4)).tolist()
SCALED_POSE[3][3] = 1.0
MIRROR_POSE = np.diag([1.0, 1.0, -1.0, 1.0]).tolist()


@pytest.mark.parametrize("change, message", [
    (_set("format", "colmap"), r"field 'format' must be 'unposed-scene', got 'colmap'"),
    (_set("version", 2), r"unsupported 'version' 2"),
    (_set("version", "1"), r"unsupported 'version' '1'"),
    (_delete("cameras"), r"missing field 'cameras'"),
    (_delete("images.0.cam_from_world"), r"images\[0\]: missing field 'cam_from_world'"),
    (_delete("cameras.1.width"), r"cameras\[1\]: missing field 'width'"),
    (_set("cameras.0.width", 640.0), r"cameras\[0\]\.width: expected int, got 640\.0"),
    (_set("cameras.0.height", 0), r"cameras\[0\]: width and height must be positive, got 640x0"),
    (_set("images.0.cam_from_world", NAN_POSE), r"images\[0\]\.cam_from_world: contains NaN"),
    (_set("images.1.cam_from_world", SCALED_POSE), r"images\[1\]\.cam_from_world: rotation part is not a proper"),
    (_set("images.1.cam_from_world", MIRROR_POSE), r"images\[1\]\.cam_from_world: rotation part is not a proper"),
    (_set("images.1.cam_from_world", [[1, 0, 0], [0, 1, 0]]), r"images\[1\]\.cam_from_world: expected a 4x4"),
    (_set("cameras.1.model", "KANNALA"), r"cameras\[1\]: unknown camera model 'KANNALA'"),
    (_set("cameras.0.params", [500.0, 505.0, 320.0, 240.0]), r"cameras\[0\]: OPENCV takes 8 parameters"),
    (_set("cameras.1.params", [-300.0, 160.0, 120.0]), r"cameras\[1\]: .*focal length must be positive"),
    (_set("cameras.1.id", 1), r"cameras\[1\]\.id 1 is used twice"),
    (_set("images.1.id", 1), r"images\[1\]\.id 1 is used twice"),
    (_set("images.1.name", "a.jpg"), r"images\[1\]\.name 'a.jpg' is used twice"),
    (_set("images.1.camera_id", 7), r"images\[1\]\.camera_id 7 names no camera"),
    (_set("images.0.path", "photos/missing.jpg"), r"images\[0\]: image file 'photos/missing.jpg' not found"),
    (_set("points", "nothere.ply"), r"nothere\.ply: point cloud file not found"),
    (_set("units", 3), r"units: expected a string, got 3"),
])
def test_invalid_bundle_names_the_problem(tmp_path, change, message):
    doc = valid_doc(tmp_path)
    change(doc)
    with pytest.raises(BundleError, match=message):
        read_bundle(write_doc(tmp_path, doc))


def test_unreadable_scene_json(tmp_path):
    with pytest.raises(BundleError, match=r"scene\.json: not found"):
        read_bundle(tmp_path)
    text = json.dumps(valid_doc(tmp_path), indent=1)
    with pytest.raises(BundleError, match=r"scene\.json: malformed JSON at line \d+ column \d+"):
        read_bundle(write_doc(tmp_path, text[: len(text) // 2]))  # truncated
    with pytest.raises(BundleError, match=r"scene\.json: malformed JSON at line 1 column 2"):
        read_bundle(write_doc(tmp_path, "{cameras: []}"))
    with pytest.raises(BundleError, match=r"top level must be a JSON object"):
        read_bundle(write_doc(tmp_path, "[1, 2]"))
    (tmp_path / "scene.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(BundleError, match=r"not UTF-8 text"):
        read_bundle(tmp_path)


def test_missing_photos_can_be_tolerated(tmp_path):
    doc = valid_doc(tmp_path)
    (tmp_path / "photos" / "b.jpg").unlink()
    write_doc(tmp_path, doc)
    with pytest.raises(BundleError, match=r"images\[1\]: image file 'photos/b.jpg' not found"):
        read_bundle(tmp_path)
    assert read_bundle(tmp_path, check_files=False).images[1].path == (tmp_path / "photos" / "b.jpg").resolve()


def _ply_header(fields: str, count: int = 2) -> bytes:
    return f"ply\nformat binary_little_endian 1.0\nelement vertex {count}\n{fields}end_header\n".encode()


@pytest.mark.parametrize("content, message", [
    (_ply_header("property float x\nproperty float y\nproperty float z\n") + b"\0" * 24,
     r"PLY vertex element lacks field\(s\) red, green, blue \(has x, y, z\)"),
    (_ply_header("property float x\nproperty float y\nproperty float z\nproperty float red\n"
                 "property float green\nproperty float blue\n") + b"\0" * 48,
     r"PLY field 'red' must be uchar"),
    (_ply_header("property float x\nproperty float y\nproperty float z\nproperty uchar red\n"
                 "property uchar green\nproperty uchar blue\n") + b"\0" * 20,
     r"not a readable PLY file \(.*early end-of-file"),  # truncated: 2 vertices need 30 bytes
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\n",
     r"not a readable PLY file"),  # truncated header
    (b"PK\x03\x04 a zip file", r"not a readable PLY file"),
    (b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n",
     r"PLY has no 'vertex' element"),
])
def test_bad_point_cloud_names_the_problem(tmp_path, content, message):
    doc = valid_doc(tmp_path)
    (tmp_path / "points.ply").write_bytes(content)
    with pytest.raises(BundleError, match=r"points\.ply: " + message):
        read_bundle(write_doc(tmp_path, doc))


def test_points_with_confidence_round_trip(tmp_path):
    points = Points(RNG.standard_normal((30, 3)), RNG.integers(0, 256, (30, 3)), RNG.random(30))
    write_points(tmp_path / "p.ply", points)
    back = read_points(tmp_path / "p.ply")
    np.testing.assert_array_equal(back.xyz, points.xyz)
    np.testing.assert_array_equal(back.rgb, points.rgb)
    np.testing.assert_array_equal(back.confidence, points.confidence)


def make_scene(photo_dir: Path) -> Scene:
    photo_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for k in range(3):
        photo = photo_dir / f"p{k}.jpg"
        photo.write_bytes(bytes([k]) * 100)
        images.append(Image(k + 1, f"p{k}.jpg", 1, make_transform(quat_to_rotation(RNG.standard_normal(4)),
                                                                    RNG.standard_normal(3)), path=photo))
    return Scene({1: Camera(1, "PINHOLE", 64, 48, [50.0, 50.0, 32.0, 24.0])}, images,
                 Points(RNG.standard_normal((10, 3)), RNG.integers(0, 256, (10, 3))),
                 provenance={"tool": "test"}, extras={"note": "kept"})


def test_write_read_round_trip(tmp_path):
    scene = make_scene(tmp_path / "photos")
    write_bundle(scene, tmp_path / "b")
    back = read_bundle(tmp_path / "b")
    doc = json.loads((tmp_path / "b" / "scene.json").read_text())
    assert [i["path"] for i in doc["images"]] == ["../photos/p0.jpg", "../photos/p1.jpg", "../photos/p2.jpg"]
    assert back.extras == {"note": "kept"} and back.provenance == {"tool": "test"}
    for a, b in zip(scene.images, back.images):
        assert (a.id, a.name, a.camera_id, a.path.resolve()) == (b.id, b.name, b.camera_id, b.path)
        np.testing.assert_array_equal(a.cam_from_world, b.cam_from_world)
    np.testing.assert_array_equal(back.points.xyz, scene.points.xyz)


def test_failed_write_leaves_existing_bundle_intact(tmp_path):
    scene = make_scene(tmp_path / "photos")
    write_bundle(scene, tmp_path / "b")
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    changed = copy.deepcopy(scene)
    changed.units = "meters"
    with pytest.raises(FileNotFoundError):  # the failure happens mid-write, inside the staging folder
        write_bundle(changed, tmp_path / "b", extra_files={"splats.ply": tmp_path / "no-such-file.ply"})
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "photos"]  # no staging or backup folder left
    changed.images[0].cam_from_world = np.diag([1.0, 1.0, 1.0, 2.0])  # invalid: refused before anything is written
    with pytest.raises(BundleError, match=r"image 'p0.jpg': cam_from_world: last row"):
        write_bundle(changed, tmp_path / "b")
    assert read_bundle(tmp_path / "b").units == "unknown"


def test_rewriting_a_bundle_keeps_photos_inside_it(tmp_path):
    scene = make_scene(tmp_path / "b" / "photos")
    write_bundle(scene, tmp_path / "b")
    assert (tmp_path / "b" / "photos" / "p1.jpg").is_file()
    again = read_bundle(tmp_path / "b")
    again.units = "meters"
    write_bundle(again, tmp_path / "b")
    back = read_bundle(tmp_path / "b")  # checks every photo exists
    assert back.units == "meters"
    for k, img in enumerate(back.images):
        assert img.path == (tmp_path / "b" / "photos" / f"p{k}.jpg").resolve()
        assert img.path.read_bytes() == bytes([k]) * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
