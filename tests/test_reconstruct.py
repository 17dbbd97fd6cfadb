# SPDX-License-Identifier: GPL-3.0-or-later
"""engine.reconstruct and `engine reconstruct`: the COLMAP backend against a rendered scene's true cameras, the
pointmap backend's plumbing with a tiny network, the pair graph, video frames, and bad input (clear errors, no
output left behind).

The rendered scene (scenegen's textured scene, 8 views at 320x240) is made once per session; the
operator tests (test_reconstruct_operator.py) use it too.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT
from engine.bundle import read_bundle
from engine.errors import EngineError
from engine.progress import Progress
from engine.reconstruct.colmap_backend import ColmapError, ColmapOptions
from engine.reconstruct.compare import compare
from engine.reconstruct.images import ImageInputError, extract_frames, find_photos
from engine.reconstruct.pipeline import Input, ReconstructOptions, choose_backend, pair_graph, reconstruct

COLMAP = ReconstructOptions(backend="colmap", colmap=ColmapOptions(threads=1))  # one thread: repeatable
_RENDERS: dict[str, Path] = {}  # shared with test_reconstruct_operator.py (which imports the fixture)


@pytest.fixture(scope="session")
def truth(addon, tmp_path_factory) -> Path:
    """Ground-truth bundle of 8 rendered views (images/view_00N.png), rendered once per session."""
    if "truth" not in _RENDERS:
        from bench.bench_colmap import render_truth

        _RENDERS["truth"] = render_truth(tmp_path_factory.mktemp("reconstruct") / "truth", "textured", seed=0)
    return _RENDERS["truth"]


def _views(truth: Path) -> list[Path]:
    return sorted((truth / "images").glob("view_*.png"))


def _linked(folder: Path, files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.symlink(f, folder / f.name)
    return folder


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _nothing_left(out: Path) -> None:
    """No bundle and no staging folder at or beside `out`."""
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ------------------------------------------------------------------------------------------------ COLMAP backend

def test_colmap_backend_recovers_the_true_cameras(truth, tmp_path):
    photos = _linked(tmp_path / "photos", _views(truth))
    (photos / "notes.txt").write_text("not a photo")
    stream = io.StringIO()
    summary = reconstruct(Input(images=[photos]), tmp_path / "out", COLMAP, Progress("jsonl", stream))
    scene = read_bundle(tmp_path / "out")
    errors = compare(scene, read_bundle(truth))
    assert errors.missing == [] and summary["images"] == summary["photos"] == 8
    assert errors.rotation_deg.max() < 1.0, errors.rotation_deg
    assert errors.centre.max() < 0.03 * errors.radius, errors.centre
    assert errors.focal.max() < 0.02, errors.focal
    (camera,) = scene.cameras.values()  # one folder of same-size photos: one camera
    assert (camera.model, camera.width, camera.height) == ("SIMPLE_RADIAL", 320, 240)
    assert len(scene.points) > 150 and scene.points.rgb.std() > 10  # coloured from the photos
    assert [im.name for im in scene.images] == [p.name for p in _views(truth)]
    assert all(im.path == (truth / "images" / im.name).resolve() for im in scene.images)  # referenced in place
    events = _events(stream)
    assert [e["name"] for e in events if e["event"] == "stage"] == [
        "read photos", "extract features", "match features", "register photos", "write bundle"]
    warnings = [e["message"] for e in events if e["event"] == "log" and e["level"] == "warning"]
    assert any("notes.txt" in w for w in warnings), warnings


def test_two_photos(truth, tmp_path):
    views = _views(truth)[2:4]
    reconstruct(Input(images=views), tmp_path / "out", COLMAP)
    scene = read_bundle(tmp_path / "out")
    errors = compare(scene, read_bundle(truth))
    assert len(errors.names) == 2 and errors.rotation_deg.max() < 1.0
    assert len(scene.points) > 30


def test_rotated_jpeg_and_a_larger_photo(truth, tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 gets an upright copy in the bundle and shares the camera of
    the other 320x240 photos; a photo given at twice the size gets a camera of its own."""
    from PIL import Image

    views = _views(truth)
    photos = _linked(tmp_path / "photos", views[:6])
    upright = cv2.imread(str(views[6]))[:, :, ::-1]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": store it turned the other way
    exif.get_ifd(0x8769)[0xA405] = 30  # FocalLengthIn35mmFilm, mm
    Image.fromarray(np.rot90(upright).copy()).save(photos / "view_006.jpg", quality=98, exif=exif.tobytes())
    photo = find_photos([photos / "view_006.jpg", photos / "view_000.png"], Progress("none"))[0]
    assert (photo.width, photo.height, photo.orientation) == (320, 240, 6)
    assert photo.exif_focal == pytest.approx(30 / 43.27 * 400)  # 35 mm equivalent over the 400 px diagonal
    cv2.imwrite(str(photos / "view_007.png"), cv2.resize(cv2.imread(str(views[7])), (640, 480),
                                                        interpolation=cv2.INTER_CUBIC))
    out = tmp_path / "out"
    reconstruct(Input(images=[photos]), out, COLMAP)
    scene = read_bundle(out)
    errors = compare(scene, read_bundle(truth))
    assert errors.missing == [] and errors.rotation_deg.max() < 1.0, errors.rotation_deg
    assert errors.focal.max() < 0.03, errors.focal
    by_name = {im.name: im for im in scene.images}
    rotated = by_name["view_006.jpg"]
    assert rotated.path.parent == out / "photos"  # the upright copy lives in the bundle
    assert cv2.imread(str(rotated.path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION).shape[:2] == (240, 320)
    assert rotated.camera_id == by_name["view_000.png"].camera_id
    large = scene.camera_of(by_name["view_007.png"])
    assert (large.width, large.height) == (640, 480) and len(scene.cameras) == 2


def test_video_frames(truth, tmp_path):
    """Every second frame of a video holding each view twice; frames are stored in the bundle."""
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (320, 240))  # lossless
    for view in _views(truth):
        for _ in range(2):
            writer.write(cv2.imread(str(view)))
    writer.release()
    out = tmp_path / "out"
    summary = reconstruct(Input(video=video, step=2), out, COLMAP)
    scene = read_bundle(out)
    assert summary["photos"] == 8 and len(scene.images) == 8
    assert [im.name for im in scene.images] == [f"clip_{f:06d}.jpg" for f in range(1, 16, 2)]
    assert all(im.path.parent == out / "photos" and im.path.is_file() for im in scene.images)
    truth_scene = read_bundle(truth)
    for image, view in zip(scene.images, truth_scene.images):  # compare() matches by name: rename to the views'
        image.name = view.name
    assert compare(scene, truth_scene).rotation_deg.max() < 1.0


def test_photos_that_do_not_overlap(truth, tmp_path):
    rng = np.random.default_rng(0)
    noise = []
    for k in range(3):
        noise.append(tmp_path / f"noise_{k}.png")
        cv2.imwrite(str(noise[-1]), cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (320, 240)))
    with pytest.raises(ColmapError, match="registered none of the 3 photos"):
        reconstruct(Input(images=noise), tmp_path / "out", COLMAP)
    _nothing_left(tmp_path / "out")
    # With the scene's photos, the unrelated ones are left out with a warning naming them.
    stream = io.StringIO()
    reconstruct(Input(images=[*_views(truth), *noise[:2]]), tmp_path / "out", COLMAP, Progress("jsonl", stream))
    assert len(read_bundle(tmp_path / "out").images) == 8
    warnings = [e["message"] for e in _events(stream) if e["event"] == "log" and e["level"] == "warning"]
    assert any("registered 8 of 10" in w and "noise_0.png" in w and "noise_1.png" in w for w in warnings)
    # Asking for all of them to register fails, naming what was left out.
    strict = ReconstructOptions(backend="colmap", colmap=ColmapOptions(min_registered=1.0))
    with pytest.raises(ColmapError, match=r"only 8 of 10 photos .*left out: noise_0.png, noise_1.png"):
        reconstruct(Input(images=[*_views(truth), *noise[:2]]), tmp_path / "strict", strict)
    _nothing_left(tmp_path / "strict")


def test_command_line(truth, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine", "--progress", "jsonl", "reconstruct", "--backend", "colmap",
           "--images", *map(str, _views(truth)), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {"extract features", "match features", "register photos"} <= {e["name"] for e in events
                                                                          if e["event"] == "stage"}
    result = events[-1]["result"]
    assert (result["backend"], result["images"], result["photos"], result["pairs"]) == ("colmap", 8, 8, 28)
    assert len(read_bundle(out).images) == 8
    # Bad input: exit status 2, an error event naming the problem, nothing written.
    bad = [*cmd[:-4], "--images", str(_views(truth)[0]), "--out", str(tmp_path / "bad")]
    proc = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    error = json.loads(proc.stdout.splitlines()[-1])
    assert error["event"] == "error" and "at least 2 images" in error["message"]
    _nothing_left(tmp_path / "bad")


def test_cancel_stops_colmap_and_leaves_nothing(truth, tmp_path):
    """SIGINT (the job runner's cancel) while COLMAP extracts features: exit status 130, a "cancelled" error
    event, and neither the bundle, its staging folder nor the work folder left behind."""
    big = tmp_path / "big"
    big.mkdir()
    for view in _views(truth):  # large enough that extraction is still running when the signal arrives
        cv2.imwrite(str(big / view.name), cv2.resize(cv2.imread(str(view)), (1600, 1200)))
    temp = tmp_path / "temp"
    temp.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "engine", "--progress", "jsonl", "reconstruct", "--backend",
                             "colmap", "--images", str(big), "--out", str(out)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(temp)})
    for line in proc.stdout:
        if json.loads(line).get("name") == "extract features":
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert json.loads(rest.splitlines()[-1]) == {"event": "error", "kind": "cancelled",
                                                 "message": "cancelled by the user"}
    _nothing_left(out)
    # COLMAP's own log files (glog writes them to TMPDIR) are not ours to clean up.
    assert [p for p in temp.iterdir() if ".log." not in p.name] == []


# ------------------------------------------------------------------------------------------------ bad input

def _fails(tmp_path: Path, images, match: str) -> None:
    with pytest.raises(EngineError, match=match):
        reconstruct(Input(images=images), tmp_path / "out", COLMAP)
    _nothing_left(tmp_path / "out")


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return path


def test_folder_without_images(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    _fails(tmp_path, [tmp_path / "docs"], r"docs: no images in this folder \(it holds 1 other file\(s\): readme.txt")


def test_files_that_are_not_images(tmp_path):
    a, b = _png(tmp_path / "a.png"), tmp_path / "notes.txt"
    b.write_text("hello")
    _fails(tmp_path, [a, b], r"notes.txt: not an image file")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    _fails(tmp_path, [a, tmp_path / "broken.jpg"], r"broken.jpg: not an image file Pillow can read")
    _fails(tmp_path, [a, tmp_path / "missing.png"], r"missing.png: no such file or folder")


def test_duplicate_names(tmp_path):
    one, two = _png(tmp_path / "day1" / "IMG_1.png"), _png(tmp_path / "day2" / "IMG_1.png", 1)
    _png(tmp_path / "day1" / "IMG_2.png", 2)
    _fails(tmp_path, [tmp_path / "day1", tmp_path / "day2"], f"{two} and {one} have the same name")
    _fails(tmp_path, [one, one], "is given twice")


def test_one_image(tmp_path):
    _fails(tmp_path, [_png(tmp_path / "only.png")], r"at least 2 images; the input gave 1: .*only.png")
    with pytest.raises(EngineError, match="gave 1"):  # a frame step can leave one
        find_photos([_png(tmp_path / "b.png"), tmp_path / "only.png"], Progress("none"), frame_step=2)


def test_output_folder_that_is_not_a_bundle(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's file")
    with pytest.raises(EngineError, match="not a scene bundle"):
        reconstruct(Input(images=[_png(tmp_path / "a.png"), _png(tmp_path / "b.png", 1)]), mine, COLMAP)
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


def test_frame_selection(tmp_path):
    video = tmp_path / "count.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(10):
        writer.write(np.full((48, 64, 3), 20 * k, dtype=np.uint8))  # frame k+1 has grey level 20k
    writer.release()
    photos = extract_frames(video, tmp_path / "frames", Progress("none"), step=2, first=3, last=8)
    assert [p.name for p in photos] == ["count_000003.jpg", "count_000005.jpg", "count_000007.jpg"]
    levels = [cv2.imread(str(p.file)).mean() for p in photos]
    assert np.allclose(levels, [40, 80, 120], atol=3)
    with pytest.raises(ImageInputError, match="still.png: no frames could be read"):
        extract_frames(_png(tmp_path / "still.png"), tmp_path / "x", Progress("none"))
    with pytest.raises(ImageInputError, match=r"at least 2 images; .*count.avi \(frames 10 to"):
        extract_frames(video, tmp_path / "y", Progress("none"), first=10)


# ------------------------------------------------------------------------------------------------ choices

def test_pair_graph():
    assert len(pair_graph(8, "auto", "colmap", ordered=False)) == 28  # every pair
    assert pair_graph(3, "complete", "pointmap", ordered=False) == [(0, 1), (0, 2), (1, 2)]
    big = set(pair_graph(150, "auto", "colmap", ordered=False))  # too many for every pair: sequential
    assert (0, 10) in big and (0, 11) not in big and {(0, 16), (0, 32), (0, 64), (0, 128)} <= big
    assert set(pair_graph(30, "auto", "pointmap", ordered=False)) == set(pair_graph(30, "sequential", "colmap",
                                                                                    ordered=False))
    assert len(pair_graph(8, "auto", "colmap", ordered=True)) == 28  # a short video: 10 successors reach all
    assert pair_graph(5, "swin-1-noncyclic", "colmap", ordered=False) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(EngineError, match="unknown pair graph mode 'nearby'"):
        reconstruct(Input(images=["x"]), "/nonexistent/out", ReconstructOptions(graph="nearby"))


def test_backend_choice(tmp_path):
    from test_pointmap_checkpoint import save_pth

    progress = Progress("none")
    assert choose_backend("colmap", None, progress) == ("colmap", None)
    assert choose_backend("auto", str(tmp_path / "missing.pth"), progress) == ("colmap", None)
    weights = save_pth(tmp_path / "tiny.pth", "linear224")
    assert choose_backend("auto", str(weights), progress) == ("pointmap", weights)
    with pytest.raises(EngineError, match=r"pointmap weights .*missing.pth.* not found"):
        choose_backend("pointmap", str(tmp_path / "missing.pth"), progress)
    with pytest.raises(EngineError, match="unknown backend 'fast'"):
        choose_backend("fast", None, progress)


def test_pointmap_backend_writes_a_dense_bundle(truth, tmp_path):
    """The pointmap path end to end with a tiny random network (its geometry is meaningless; the plumbing is
    not): pair predictions, alignment, cameras in the photos' pixels, depth maps and points in the bundle."""
    import torch

    from test_pointmap_checkpoint import save_pth

    weights = save_pth(tmp_path / "tiny.pth", "linear224")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = reconstruct(Input(images=_views(truth)[:2]), tmp_path / "out",
                              ReconstructOptions(backend="auto", weights=str(weights), iterations=20))
    finally:
        torch.set_num_threads(threads)
    assert (summary["backend"], summary["images"], summary["pairs"]) == ("pointmap", 2, 1)
    scene = read_bundle(tmp_path / "out")
    assert [(c.width, c.height) for c in scene.cameras.values()] == [(320, 240)]
    assert len(scene.points) > 1000
    for image in scene.images:
        depth = np.load(tmp_path / "out" / image.extras["depth"])
        assert depth.shape == (224, 224) and np.isfinite(depth).all() and (depth > 0).all()


def test_auto_falls_back_to_colmap_for_mixed_aspect_ratios(truth, tmp_path):
    """A portrait photo among landscape ones gives the 512 network two input sizes: "auto" hands the set to
    COLMAP (with a warning), an explicit "pointmap" fails and writes nothing."""
    from test_pointmap_checkpoint import save_pth

    from engine.reconstruct.pointmap_backend import InputSizeError

    weights = save_pth(tmp_path / "tiny.pth", "linear")
    photos = _linked(tmp_path / "photos", _views(truth)[:7])
    cv2.imwrite(str(photos / "view_007.png"), cv2.imread(str(_views(truth)[7]))[:, 70:250])  # 180x240
    stream = io.StringIO()
    summary = reconstruct(Input(images=[photos]), tmp_path / "out",
                          ReconstructOptions(backend="auto", weights=str(weights)), Progress("jsonl", stream))
    assert summary["backend"] == "colmap" and summary["images"] >= 7
    warnings = [e["message"] for e in _events(stream) if e["event"] == "log" and e["level"] == "warning"]
    assert any("different sizes (384x512 (view_007.png), 512x384" in w and "using the COLMAP backend" in w
               for w in warnings), warnings
    with pytest.raises(InputSizeError, match="one aspect ratio"):
        reconstruct(Input(images=[photos]), tmp_path / "pm", ReconstructOptions(backend="pointmap",
                                                                                weights=str(weights)))
    _nothing_left(tmp_path / "pm")

