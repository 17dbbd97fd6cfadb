# SPDX-License-Identifier: GPL-3.0-or-later
"""Global alignment (engine/align, `python -m engine align`) on synthetic pairs from known cameras."""
import contextlib
import io
import json

import numpy as np
import pytest

from bench.synthetic_pairs import ROOM_HI, ROOM_LO, SPHERES, camera_errors, make_scene, write_synthetic_pairs
from engine.align.aligner import AlignOptions, align
from engine.align.graph import connected_components, make_pairs
from engine.align.state import Known
from engine.bundle import read_bundle
from engine.cli import main
from engine.errors import EngineError
from engine.pairs_file import open_pairs
from engine.pose import rotation_angle_deg
from engine.progress import Progress
from engine.ply import read_points

W, H = 64, 48


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The suite runs on 2 shared cores: a second OpenMP thread mostly spins waiting for the first."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _synthetic(tmp_path, n, seed=0, pairs=None, **scene_kw):
    scene = make_scene(n, W, H, seed=seed, **scene_kw)
    return scene, write_synthetic_pairs(tmp_path / f"pairs{n}_{seed}.npz", scene, seed=seed, pairs=pairs)


def _surface_distance(points):
    """Distance of world points to the synthetic room's nearest surface (walls or spheres)."""
    walls = np.minimum(np.abs(points - ROOM_LO), np.abs(ROOM_HI - points)).min(1)
    spheres = [np.abs(np.linalg.norm(points - np.asarray(c), axis=1) - r) for c, r in SPHERES]
    return np.minimum(walls, np.min(spheres, axis=0))


def test_make_pairs_modes():
    assert len(make_pairs(5, "complete")) == 20
    assert len(make_pairs(6, "swin-2")) == 24 and len(make_pairs(6, "swin-2-noncyclic")) == 18
    assert len(make_pairs(8, "logwin-2")) == 32
    pairs = make_pairs(5, "oneref-3")
    assert sorted(pairs) == sorted([(3, k) for k in (0, 1, 2, 4)] + [(k, 3) for k in (0, 1, 2, 4)])
    for n, mode in [(5, "complete"), (7, "swin-3"), (9, "logwin-3")]:  # both directions of every pair
        pairs = make_pairs(n, mode)
        assert set(pairs) == {(j, i) for i, j in pairs} and len(set(pairs)) == len(pairs)
    for mode, message in [("foo", "unknown pair graph mode"), ("swin-x", "not an integer"),
                          ("oneref-9", "reference image 9")]:
        with pytest.raises(EngineError, match=message):
            make_pairs(5, mode)
    with pytest.raises(EngineError, match="at least 2 images"):
        make_pairs(1)
    assert connected_components(6, np.array([[0, 1], [4, 3], [1, 2]])) == [[0, 1, 2], [3, 4], [5]]


def test_geometry_helpers_recover_known_values():
    import torch

    from engine.align.geometry import rotation_from_vector, weighted_similarity, weiszfeld_focal

    quarter = rotation_from_vector(torch.tensor([[0.0, 0.0, np.pi / 2], [0.0, 0.0, 0.0]], dtype=torch.float64))
    np.testing.assert_allclose(quarter[0].numpy(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_array_equal(quarter[1].numpy(), np.eye(3))
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(3, 400, 3, generator=gen, dtype=torch.float64)
    rot = rotation_from_vector(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    scale, trans = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    dst = scale[:, None, None] * src @ rot.transpose(1, 2) + trans[:, None]
    dst[:, :40] += 5 * torch.randn(3, 40, 3, generator=gen, dtype=torch.float64)  # 10% outliers
    s, r, t = weighted_similarity(src, dst, torch.ones(3, 400, dtype=torch.float64), irls=3)
    assert (s - scale).abs().max() < 1e-4 and (r - rot).abs().max() < 1e-4 and (t - trans).abs().max() < 1e-4
    # a pointmap seen with focal 80 about a centred principal point, 10% of its points wrong
    u, v = np.meshgrid(np.arange(32) + 0.5 - 16, np.arange(24) + 0.5 - 12)
    pix = torch.tensor(np.stack([u.ravel(), v.ravel()], -1))
    z = torch.rand(len(pix), generator=gen, dtype=torch.float64) + 1
    pts = torch.cat([pix / 80 * z[:, None], z[:, None]], 1)
    pts[::10, :2] *= 1.5
    assert abs(float(weiszfeld_focal(pts[None], pix)[0]) / 80 - 1) < 0.01


def test_aligns_noisy_pairs_with_outliers_accurately(tmp_path):
    scene, path = _synthetic(tmp_path, 8)  # 1% noise, 5% outliers, complete graph
    with open_pairs(path) as pf:
        result = align(pf, AlignOptions(), colours=pf.image)
    assert result.images == list(range(8)) and result.dropped == []
    rot, cen, foc, (s, r, t) = camera_errors(scene, result.images, result.cam_from_world, result.focal)
    assert rot.max() < 0.5 and foc.max() < 0.01 and cen.max() < 0.01, (rot, foc, cen)
    # full-resolution depth maps agree with the true depth once the scene scale is matched
    rel = np.abs(result.depth * s / scene.depths - 1)
    assert np.median(rel) < 0.01 and np.mean(rel < 0.05) > 0.9, (np.median(rel), np.mean(rel < 0.05))
    assert result.confidence.shape == (8, H, W) and result.confidence.min() >= 1
    # the fused cloud lies on the true surfaces and carries the images' colours
    pts = result.points
    assert len(pts) > 1000 and pts.rgb.std() > 20
    dist = _surface_distance(s * pts.xyz @ r.T + t)
    assert np.median(dist) < 0.01 and np.mean(dist < 0.05) > 0.95, (np.median(dist), np.mean(dist < 0.05))


def test_known_poses_and_focals_are_held(tmp_path):
    scene, path = _synthetic(tmp_path, 6, seed=1)
    known = Known(poses={k: scene.cam_from_world[k] for k in (0, 2, 4)}, focals={k: scene.focals[k] for k in (1, 2)})
    with open_pairs(path) as pf:
        result = align(pf, AlignOptions(), known)
    for k in (0, 2, 4):
        np.testing.assert_array_equal(result.cam_from_world[k], scene.cam_from_world[k])
    for k in (1, 2):
        assert result.focal[k] == scene.focals[k]
    # the known poses fix the frame and scale: the others land in the true frame, no Sim(3) needed
    rot, cen, foc, _ = camera_errors(scene, result.images, result.cam_from_world, result.focal, sim3=False)
    assert rot.max() < 0.5 and foc.max() < 0.01 and cen.max() < 0.01, (rot, foc, cen)
    rel = np.abs(result.depth / scene.depths - 1)  # metric depth, since the known poses carry the scale
    assert np.median(rel) < 0.01


def test_all_known_poses_and_focals(tmp_path):
    scene, path = _synthetic(tmp_path, 4, seed=2)
    known = Known(poses=dict(enumerate(scene.cam_from_world)), focals=dict(enumerate(scene.focals)))
    with open_pairs(path) as pf:
        result = align(pf, AlignOptions(iterations=100), known)
    np.testing.assert_array_equal(result.cam_from_world, scene.cam_from_world)
    np.testing.assert_array_equal(result.focal, scene.focals)
    assert np.median(np.abs(result.depth / scene.depths - 1)) < 0.01


@pytest.mark.parametrize("pairs", [[(0, 1), (1, 0)], [(0, 1)]], ids=["both-directions", "one-direction"])
def test_two_images(tmp_path, pairs):
    scene, path = _synthetic(tmp_path, 2, seed=3, pairs=pairs)
    with open_pairs(path) as pf:
        result = align(pf, AlignOptions(iterations=150))
    c = result.cam_from_world  # two centres leave the rotation about the baseline free: compare relative poses
    rel_est, rel_gt = c[1] @ np.linalg.inv(c[0]), scene.cam_from_world[1] @ np.linalg.inv(scene.cam_from_world[0])
    assert rotation_angle_deg(rel_est[:3, :3], rel_gt[:3, :3]) < 0.5
    t_est, t_gt = rel_est[:3, 3], rel_gt[:3, 3]
    assert np.degrees(np.arccos(t_est @ t_gt / np.linalg.norm(t_est) / np.linalg.norm(t_gt))) < 1.0
    assert np.abs(result.focal / scene.focals - 1).max() < 0.01, result.focal / scene.focals


def test_disconnected_graph_aligns_the_largest_group_or_fails(tmp_path):
    pairs = [(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0), (3, 4), (4, 3)]
    scene, path = _synthetic(tmp_path, 5, seed=4, pairs=pairs)
    stream = io.StringIO()
    with open_pairs(path) as pf:
        result = align(pf, AlignOptions(iterations=100), progress=Progress("jsonl", stream))
        with pytest.raises(EngineError, match=r"not connected: 2 groups .*\[img_0003.png, img_0004.png\]"):
            align(pf, AlignOptions(disconnected="fail"))
    assert result.images == [0, 1, 2] and result.dropped == ["img_0003.png", "img_0004.png"]
    warnings = [e["message"] for e in map(json.loads, stream.getvalue().splitlines())
                if e["event"] == "log" and e["level"] == "warning"]
    assert len(warnings) == 1 and "2 unconnected groups" in warnings[0] and "img_0004.png" in warnings[0]
    rot, _, foc, _ = camera_errors(scene, result.images, result.cam_from_world, result.focal)
    assert rot.max() < 0.5 and foc.max() < 0.01


@pytest.mark.parametrize("pixel_maps", [None, [(0.0, 1.0, 2.0, 2.1)] * 4], ids=["centred-crop", "pixel-maps"])
def test_cli_writes_a_bundle_in_photo_pixels(tmp_path, pixel_maps):
    import cv2

    # centred crop: 130x100 photos seen as 64x48 (scaled by 64/130, 0.6 px cropped top and bottom), square pixels;
    # pixel maps: 128x105 photos scaled by 1/2 across and 1/2.1 down, 1 px cropped at the top: PINHOLE cameras
    size = (130, 100) if pixel_maps is None else (128, 105)
    scene, path = _synthetic(tmp_path, 4, seed=5, shared_focal=True, original_sizes=[size] * 4,
                             pixel_maps=pixel_maps)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, img in zip(scene.names, scene.images):
        cv2.imwrite(str(photos / name), cv2.cvtColor(cv2.resize(img, size), cv2.COLOR_RGB2BGR))
    out = tmp_path / "bundle"
    stream = io.StringIO()
    with contextlib.redirect_stdout(stream):
        code = main(["--progress", "jsonl", "align", str(path), "--out", str(out), "--images", str(photos),
                     "--shared-intrinsics", "--optimize-pp", "--iterations", "200"])
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert code == 0, events[-1]
    assert events[-1]["event"] == "result" and events[-1]["result"]["images"] == 4
    bundle = read_bundle(out)
    assert len(bundle.cameras) == 1  # shared intrinsics: one camera
    cam = bundle.cameras[1]
    assert (cam.model, cam.width, cam.height) == ("SIMPLE_PINHOLE" if pixel_maps is None else "PINHOLE", *size)
    fx, fy, cx, cy, _ = cam.split()
    gx, gy, gcx, gcy = scene.original_intrinsics()[0]
    assert abs(fx / gx - 1) < 0.01 and abs(fy / gy - 1) < 0.01, (fx, fy, gx, gy)
    assert abs(cx - gcx) < 1 and abs(cy - gcy) < 1, (cx, cy, gcx, gcy)
    cams = np.stack([im.cam_from_world for im in bundle.images])
    rot, _, _, _ = camera_errors(scene, list(range(4)), cams, [scene.focals[0]] * 4)
    assert rot.max() < 0.5
    for im in bundle.images:
        assert im.path == (photos / im.name).resolve()
        depth, conf = np.load(out / im.extras["depth"]), np.load(out / im.extras["confidence"])
        assert depth.shape == conf.shape == (H, W) and depth.dtype == np.float32 and (depth > 0).all()
        assert im.extras["depth_camera"]["width"] == W and im.extras["depth_camera"]["model"] == "SIMPLE_PINHOLE"
    points = read_points(out / "points.ply")
    assert len(points) > 500 and points.rgb.std() > 20  # coloured from the photos
    assert bundle.provenance["command"] == "align"


def test_cli_known_cameras_from_a_bundle(tmp_path):
    from engine.bundle import Camera, Image, Scene, write_bundle

    size, maps = (128, 105), [(0.0, 1.0, 2.0, 2.1)] * 4
    scene, path = _synthetic(tmp_path, 4, seed=7, original_sizes=[size] * 4, pixel_maps=maps)
    intr = scene.original_intrinsics()
    known = Scene({k + 1: Camera(k + 1, "PINHOLE", *size, list(intr[k])) for k in (0, 1)},
                  [Image(k + 1, scene.names[k], k + 1, scene.cam_from_world[k]) for k in (0, 1)], units="meters")
    write_bundle(known, tmp_path / "known")
    out = tmp_path / "bundle"
    assert main(["--progress", "none", "align", str(path), "--out", str(out), "--known", str(tmp_path / "known"),
                 "--iterations", "150"]) == 0
    bundle = read_bundle(out)
    assert bundle.units == "meters"
    by_name = {im.name: im for im in bundle.images}
    for k in (0, 1):  # held exactly, and converted back to photo pixels unchanged
        im = by_name[scene.names[k]]
        np.testing.assert_array_equal(im.cam_from_world, scene.cam_from_world[k])
        np.testing.assert_allclose(bundle.camera_of(im).params, intr[k], rtol=1e-9)
    cams = np.stack([by_name[n].cam_from_world for n in scene.names])
    rot, cen, _, _ = camera_errors(scene, list(range(4)), cams, scene.focals, sim3=False)
    assert rot.max() < 0.5 and cen.max() < 0.02, (rot, cen)
    for k in (2, 3):
        fx, fy, _, _, _ = bundle.camera_of(by_name[scene.names[k]]).split()
        assert abs(fx / intr[k][0] - 1) < 0.01 and abs(fy / intr[k][1] - 1) < 0.01


def test_load_colours_follows_the_pixel_map(tmp_path):
    import cv2

    from engine.align.scene import load_colours

    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    # the photo: each pointmap pixel as a 2x2 block, below 2 rows that the crop removed (v0 = (v + 1) * 2)
    photo = np.concatenate([np.zeros((2, 2 * W, 3), np.uint8), img.repeat(2, 0).repeat(2, 1)])
    cv2.imwrite(str(tmp_path / "p.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    out = load_colours(tmp_path / "p.png", W, H, (0.0, 1.0, 2.0, 2.0), (2 * W, 2 * H + 2))
    np.testing.assert_array_equal(out, img)
    with pytest.raises(EngineError, match=r"the photo is 128x98 pixels but the pairs file says 128x96"):
        load_colours(tmp_path / "p.png", W, H, (0.0, 1.0, 2.0, 2.0), (2 * W, 2 * H))


def test_cli_failures_leave_no_output(tmp_path, capsys):
    scene, path = _synthetic(tmp_path, 3, seed=6)
    with np.load(path) as z:
        raw = {k: z[k] for k in z.files}
    raw["pts3d_j"][4, 2, 2, 1] = np.nan
    bad = tmp_path / "bad.npz"
    np.savez(bad, **raw)
    out = tmp_path / "out" / "bundle"
    assert main(["--progress", "none", "align", str(bad), "--out", str(out), "--iterations", "5"]) == 2
    assert "pair 4 [2, 0]: array 'pts3d_j' contains NaN" in capsys.readouterr().err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []

    single = tmp_path / "one.npz"
    np.savez(single, names=np.array(["a.png"]), pairs=np.zeros((0, 2), np.int64), width=np.array(W),
             height=np.array(H), **{k: raw[k][:0] for k in ("pts3d_i", "pts3d_j", "conf_i", "conf_j")})
    assert main(["--progress", "none", "align", str(single), "--out", str(out)]) == 2
    assert "at least 2 images, got 1" in capsys.readouterr().err
    assert not out.exists()

    # a failing run leaves an earlier bundle untouched
    assert main(["--progress", "none", "align", str(path), "--out", str(out), "--iterations", "20"]) == 0
    before = (out / "scene.json").read_text()
    assert main(["--progress", "none", "align", str(bad), "--out", str(out), "--iterations", "5"]) == 2
    assert (out / "scene.json").read_text() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]
