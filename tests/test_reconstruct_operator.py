# SPDX-License-Identifier: GPL-3.0-or-later
"""`unposed.reconstruct` from a script: the real engine job on photos and on a movie clip, its import into the
scene, and bad input (reported, scene untouched, nothing written)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from test_reconstruct import truth  # noqa: F401  (the session's rendered scene, shared with those tests)


def _views(truth: Path) -> list[Path]:
    return sorted((truth / "images").glob("view_*.png"))


def _check_import(addon, out: Path, n: int):
    """The collection imported from the bundle at `out`: n cameras placed as the bundle says, its points."""
    import bpy

    scene = addon.engine.bundle.read_bundle(out)
    collection = addon.bridge.scene_import.find_imported(str(out.resolve()))
    assert collection is not None and collection.name in bpy.context.scene.collection.children
    cameras = {o.name: o for o in collection.objects if o.type == 'CAMERA'}
    assert sorted(cameras) == sorted(im.name for im in scene.images) and len(cameras) == n
    for image in scene.images:
        obj = cameras[image.name]
        expected = addon.engine.pose.world_from_glcam(image.cam_from_world)
        assert np.allclose(np.array(obj.matrix_world), expected, atol=1e-5)
        (background,) = [bg for bg in obj.data.background_images if bg.source == 'MOVIE_CLIP']  # SIMPLE_RADIAL
        assert Path(bpy.path.abspath(background.clip.filepath)).resolve() == image.path.resolve()
    (cloud,) = [o for o in collection.objects if o.type != 'CAMERA']
    assert len(cloud.data.vertices) == len(scene.points) > 100
    assert bpy.context.scene.camera == cameras[scene.images[0].name]
    return scene


def test_reconstruct_photos(addon, empty_scene, truth, tmp_path):  # noqa: F811
    import bpy

    out = tmp_path / "bundle"
    result = bpy.ops.unposed.reconstruct(directory=str(truth / "images"), backend='COLMAP', output=str(out),
                                         files=[{"name": p.name} for p in _views(truth)])
    assert result == {'FINISHED'}
    scene = _check_import(addon, out, 8)
    assert scene.provenance["backend"] == "colmap"


def test_reconstruct_movie_clip(addon, empty_scene, truth, tmp_path):  # noqa: F811
    import bpy

    video = tmp_path / "walk.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (320, 240))  # lossless
    for view in _views(truth):
        for _ in range(2):
            writer.write(cv2.imread(str(view)))
    writer.release()
    clip = bpy.data.movieclips.load(str(video))
    assert bpy.ops.unposed.reconstruct(clip=clip.name, frame_step=2, backend='COLMAP') == {'FINISHED'}
    out = tmp_path / "walk_unposed"  # the default: beside the clip, named after it
    scene = _check_import(addon, out, 8)
    assert [im.name for im in scene.images] == [f"walk_{f:06d}.jpg" for f in range(1, 16, 2)]
    assert all(im.path.parent == out / "photos" for im in scene.images)  # the frames are kept in the bundle


def test_bad_input_is_reported_and_changes_nothing(addon, empty_scene, tmp_path):
    import bpy

    folder = tmp_path / "one"
    folder.mkdir()
    cv2.imwrite(str(folder / "only.png"), np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(RuntimeError, match="at least 2 images"):  # the engine's error, from the job
        bpy.ops.unposed.reconstruct(directory=str(folder), backend='COLMAP')
    assert not (folder / "unposed").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's")
    with pytest.raises(RuntimeError, match="not a scene bundle"):  # refused before any job starts
        bpy.ops.unposed.reconstruct(directory=str(folder), output=str(mine))
    with pytest.raises(RuntimeError, match="no photos chosen"):
        bpy.ops.unposed.reconstruct()
    with pytest.raises(RuntimeError, match="no movie clip named 'gone'"):
        bpy.ops.unposed.reconstruct(clip="gone")
    assert len(bpy.data.objects) == 0 and len(bpy.data.collections) == 0
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]
