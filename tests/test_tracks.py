"""Feature tracks (engine.tracks): SIFT tracks on a generated room against its true cameras and depth, union-find,
triangulation through a fisheye lens, pointmap tracks from a synthetic pairs file, and the tracks file."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.bench_splats import generate_scene
from bench.synthetic_pairs import make_scene, write_synthetic_pairs
from engine import tracks as T
from engine.bundle import Camera, Image, Scene, read_bundle
from engine.errors import BundleError
from engine.projection import project


@pytest.fixture(scope="module")
def room(tmp_path_factory, addon):
    """The splat benchmark's scene at 128x96: a room, 16 views on an orbit, RADIAL lens; depth maps beside it."""
    return generate_scene(tmp_path_factory.mktemp("tracks") / "room", views=16, size=(128, 96), model="RADIAL",
                          extra=(-0.06, 0.01), point_step=8)


@pytest.fixture(scope="module")
def room_tracks(room):
    return T.find_tracks(read_bundle(room), threads=1)


def depth_errors(tracks: T.Tracks, scene: Scene, raw: Scene) -> np.ndarray:
    """|z / depth - 1| of every observation: the camera depth of its track's point against the rendered depth map
    (at twice the resolution) under its pixel."""
    out = []
    for k, image in enumerate(scene.images):
        depth = np.load(raw.images[k].path.parent.parent / raw.images[k].extras["depth"])
        sel = tracks.image == k
        z = (tracks.xyz[tracks.track[sel]] @ image.cam_from_world[2, :3]) + image.cam_from_world[2, 3]
        scale = depth.shape[1] / scene.camera_of(image).width
        u, v = np.floor(tracks.pixels[sel] * scale).astype(int).T
        out.append(np.abs(z / depth[v, u] - 1))
    return np.concatenate(out)


def test_sift_tracks_agree_with_the_true_cameras_and_surfaces(room, room_tracks):
    scene = read_bundle(room)
    tracks = room_tracks
    per_image = tracks.per_image(len(scene.images))
    errors = T.reprojection_errors(tracks, *T.scene_cameras(scene))
    depth = depth_errors(tracks, scene, read_bundle(room.parent / "room_raw"))
    print(f"{len(tracks)} tracks, {len(tracks.track)} observations, per image {per_image.tolist()}; reprojection "
          f"median {np.median(errors):.3f} p90 {np.percentile(errors, 90):.3f} px; depth error median "
          f"{np.median(depth):.4f}")
    assert len(tracks) >= 250 and (tracks.views >= 3).all() and (per_image >= 3).all()  # tracks in every view
    assert np.median(errors) < 0.25 and np.percentile(errors, 90) < 0.8 and errors.max() <= T.MAX_ERROR_PX
    assert np.median(depth) < 0.01  # the points lie on the rendered surfaces
    assert set(np.unique(tracks.image)) <= set(range(len(scene.images)))
    xyz, valid = T.triangulate(tracks, *T.scene_cameras(scene))
    assert valid.all() and np.allclose(xyz, tracks.xyz)


def test_upsampling_small_photos_finds_more_tracks(room, room_tracks):
    plain = T.find_tracks(read_bundle(room), upsample=1, threads=1, min_tracks=0)
    assert T.upsample_factor(128, 96) == 2 and T.upsample_factor(1024, 768) == 1
    assert len(room_tracks) > 1.6 * len(plain)  # measured 348 against 160


def test_find_tracks_names_bad_input(room, tmp_path):
    scene = read_bundle(room)
    blank = [np.full((96, 128, 3), 128, np.uint8) for _ in scene.images]
    with pytest.raises(T.TracksError, match=r"only 0 feature tracks .* at least 16 needed\); try more overlapping"):
        T.find_tracks(scene, blank, threads=1)
    with pytest.raises(T.TracksError, match=r"image 'view_003.png': its photo must be a uint8 array of shape "
                                            r"\(96, 128\[, 3\]\)"):
        T.find_tracks(scene, blank[:3] + [np.zeros((48, 64, 3), np.uint8)] + blank[4:])
    with pytest.raises(T.TracksError, match="15 photos given for 16 images"):
        T.find_tracks(scene, blank[1:])
    scene.images[2].path = None
    with pytest.raises(BundleError, match=r"image 'view_002.png' has no photo \(path is null\)"):
        T.find_tracks(scene)
    with pytest.raises(T.TracksError, match="upsample must be a factor of at least 1, got 0.5"):
        T.find_tracks(scene, blank, upsample=0.5)


def test_union_find_drops_a_track_holding_two_features_of_one_image():
    # features: image, pixel; matches chain 0-1-2-3 where 0 and 3 are different features of image 0
    image = np.array([0, 1, 2, 0, 0, 1, 2, 3, 1, 2])
    pixels = np.arange(20, dtype=float).reshape(10, 2)
    matches = np.array([[0, 1], [1, 2], [2, 3],  # conflict: dropped
                        [6, 4], [4, 5], [7, 6],  # a clean 4-view track
                        [8, 9]])  # two views only: dropped at min_views=3
    tracks = T.tracks_from_matches(image, pixels, matches, min_views=3)
    assert len(tracks) == 1 and np.isnan(tracks.xyz).all()
    assert tracks.image.tolist() == [0, 1, 2, 3] and tracks.track.tolist() == [0, 0, 0, 0]
    assert tracks.pixels.tolist() == pixels[[4, 5, 6, 7]].tolist()
    both = T.tracks_from_matches(image, pixels, matches, min_views=2)
    assert len(both) == 2 and both.image[both.track == 1].tolist() == [1, 2]


def test_components_match_a_reference_union_find():
    rng = np.random.default_rng(3)
    n = 300
    edges = rng.integers(0, n, size=(260, 2))
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x
    for a, b in edges:
        parent[find(a)] = find(b)
    reference = np.array([find(x) for x in range(n)])
    labels = T._components(edges, n)
    for x in range(n):  # same partition
        assert np.array_equal(labels == labels[x], reference == reference[x])


def _ring_cameras(angles_deg: list[float], radius: float = 3.0) -> np.ndarray:
    """cam_from_world of cameras on a ring around the origin at `angles_deg`, looking at it (OpenCV axes)."""
    poses = []
    for k, angle in enumerate(np.radians(angles_deg)):
        centre = np.array([radius * math.sin(angle), -0.1 * k, -radius * math.cos(angle)])
        z = -centre / np.linalg.norm(centre)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        rot = np.stack([x, np.cross(z, x), z])
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = rot, -rot @ centre
        poses.append(pose)
    return np.stack(poses)


def test_triangulate_through_a_fisheye_lens():
    fisheye = Camera(1, "OPENCV_FISHEYE", 400, 400, [110.0, 112.0, 203.0, 198.0, 0.05, -0.02, 0.004, -0.001])
    poses = _ring_cameras([0, 30, 60, 90])
    rng = np.random.default_rng(0)
    truth = rng.uniform(-2.5, 2.5, (200, 3))  # around the ring's centre: many seen > 60 deg off axis
    track, image, pixels = [], [], []
    for k, pose in enumerate(poses):
        cam_points = truth @ pose[:3, :3].T + pose[:3, 3]
        px, ok = project(fisheye.model, torch.tensor(fisheye.params, dtype=torch.float64), torch.from_numpy(cam_points))
        inside = ok.numpy() & (px.numpy() >= 0).all(1) & (px.numpy() <= 400).all(1)
        track.append(np.nonzero(inside)[0])
        image.append(np.full(inside.sum(), k))
        pixels.append(px.numpy()[inside])
    tracks = T.Tracks(np.full((len(truth), 3), np.nan), np.concatenate(track), np.concatenate(image),
                      np.concatenate(pixels))
    off_axis = [np.degrees(np.arccos(np.clip((truth[t] @ p[2, :3] + p[2, 3]) / np.linalg.norm(
        truth[t] @ p[:3, :3].T + p[:3, 3], axis=1), -1, 1))) for t, p in zip(track, poses)]
    assert max(a.max() for a in off_axis) > 90  # some observations lie behind the image plane (Z < 0)
    tracks.pixels[0] += [15.0, 0.0]  # one observation 15 px off: its track is not valid
    xyz, valid = T.triangulate(tracks, [fisheye], poses, [0, 0, 0, 0])
    views = tracks.views
    bad = tracks.track[0]
    good = (views >= 2) & (np.arange(len(truth)) != bad)
    assert good.sum() > 150
    assert np.abs(xyz[good] - truth[good]).max() < 1e-6 and valid[good].all()
    assert not valid[bad] and np.isnan(xyz[views < 2]).all() and not valid[views < 2].any()
    # rays from two nearby centres meet at a tiny angle: a point, but not a valid one
    near = T.Tracks(np.zeros((1, 3)), np.array([0, 0]), np.array([0, 1]), np.zeros((2, 2)))
    poses2 = np.stack([np.eye(4), np.eye(4)])
    poses2[1, 0, 3] = -0.01  # 1 cm baseline, point 10 m away: 0.06 deg
    point = np.array([0.3, -0.2, 10.0])
    for k in range(2):
        near.pixels[k] = project(fisheye.model, fisheye.params, torch.tensor(point + poses2[k, :3, 3]))[0].numpy()
    xyz, valid = T.triangulate(near, [fisheye], poses2, [0, 0])
    assert np.allclose(xyz[0], point, atol=1e-3) and not valid[0]


@pytest.fixture(scope="module")
def pairs_scene(tmp_path_factory):
    """Six views of the synthetic room as exact pointmaps at 128x96; the photos are (128 + 8) x 2 by (96 + 4) x 2
    pixels, the network's view a crop of them (pixel map (4, 2, 2, 2))."""
    synthetic = make_scene(6, 128, 96, seed=0, original_sizes=[(272, 200)] * 6, pixel_maps=[(4, 2, 2.0, 2.0)] * 6)
    path = write_synthetic_pairs(tmp_path_factory.mktemp("pairs") / "pairs.npz", synthetic, noise=0.0, outliers=0.0)
    intrinsics = synthetic.original_intrinsics()
    cameras = {k + 1: Camera(k + 1, "PINHOLE", 272, 200, list(intrinsics[k])) for k in range(6)}
    images = [Image(k + 1, name, k + 1, synthetic.cam_from_world[k]) for k, name in enumerate(synthetic.names)]
    return path, Scene(cameras, images), synthetic


def test_pointmap_tracks_project_onto_their_pixels(pairs_scene):
    path, scene, synthetic = pairs_scene
    tracks = T.tracks_from_pairs(path, scene)
    errors = T.reprojection_errors(tracks, *T.scene_cameras(scene))
    per_image = tracks.per_image(6)
    # true surface depth under each observation (network pixel = photo pixel / 2 - offset)
    depth = []
    for k, image in enumerate(scene.images):
        sel = tracks.image == k
        z = tracks.xyz[tracks.track[sel]] @ image.cam_from_world[2, :3] + image.cam_from_world[2, 3]
        u, v = np.floor(tracks.pixels[sel] / 2 - [4, 2]).astype(int).T
        depth.append(np.abs(z / synthetic.depths[k][v, u] - 1))
    depth = np.concatenate(depth)
    print(f"{len(tracks)} tracks, per image {per_image.tolist()}, reprojection median {np.median(errors):.3f} "
          f"p90 {np.percentile(errors, 90):.3f} photo px, depth error median {np.median(depth):.4f}")
    assert len(tracks) >= 200 and (per_image >= 30).all() and (tracks.views >= 3).all()
    # pointmap pixels are quantised to the network's grid: half a network pixel is one photo pixel here
    assert np.median(errors) < 0.8 and np.percentile(errors, 90) < 2.0
    assert np.median(depth) < 0.005


def test_pointmap_tracks_name_bad_input(pairs_scene):
    path, scene, _ = pairs_scene
    other = Scene(scene.cameras, [Image(im.id, f"other_{im.name}", im.camera_id, im.cam_from_world)
                                  for im in scene.images])
    with pytest.raises(T.TracksError, match=r"pairs.npz: at most one of its 6 image names is in the bundle"):
        T.tracks_from_pairs(path, other)
    resized = Scene({**scene.cameras, 2: Camera(2, "PINHOLE", 136, 100, scene.cameras[2].params)}, scene.images)
    with pytest.raises(T.TracksError, match=r"image 'img_0001.png' is 272x200 pixels in the pairs file "
                                            r"\(original_sizes\) but its camera 2 in the bundle is 136x100"):
        T.tracks_from_pairs(path, resized)


def test_tracks_file_round_trip_and_malformed_files(tmp_path):
    rng = np.random.default_rng(1)
    tracks = T.Tracks(rng.normal(size=(5, 3)), np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]),
                      rng.integers(0, 4, 11), rng.uniform(0, 100, (11, 2)))
    tracks.xyz[2] = np.nan  # not triangulated: allowed
    path = T.save_tracks(tmp_path / "tracks.npz", tracks)
    back = T.load_tracks(path)
    for name in ("xyz", "track", "image", "pixels"):
        assert np.array_equal(getattr(back, name), getattr(tracks, name), equal_nan=True)
    assert back.track.dtype == np.int64 and back.xyz.dtype == np.float64
    assert [p.name for p in tmp_path.iterdir()] == ["tracks.npz"]  # nothing staged left behind

    def write(name, **arrays):
        np.savez(tmp_path / name, **{"format": np.array(T.FORMAT), "version": np.array(1), **arrays})
        return tmp_path / name
    good = dict(xyz=tracks.xyz, track=tracks.track, image=tracks.image, pixels=tracks.pixels)
    with pytest.raises(T.TracksError, match=r"missing array\(s\) pixels"):
        T.load_tracks(write("a.npz", **{k: v for k, v in good.items() if k != "pixels"}))
    with pytest.raises(T.TracksError, match=r"'track' holds indices outside 0..4 \(the rows of 'xyz'\)"):
        T.load_tracks(write("b.npz", **{**good, "track": tracks.track + 1}))
    with pytest.raises(T.TracksError, match=r"'pixels' must be a float array of shape \(M, 2\), got float64 array "
                                            r"of shape \(11, 3\)"):
        T.load_tracks(write("c.npz", **{**good, "pixels": np.zeros((11, 3))}))
    with pytest.raises(T.TracksError, match="one entry per observation, got 11, 10 and 11"):
        T.load_tracks(write("d.npz", **{**good, "image": tracks.image[:10]}))
    (tmp_path / "e.npz").write_bytes(b"not a zip")
    with pytest.raises(T.TracksError, match="e.npz: not a readable tracks .npz file"):
        T.load_tracks(tmp_path / "e.npz")
    np.savez(tmp_path / "f.npz", **good)
    with pytest.raises(T.TracksError, match=r"f.npz: not a tracks file \(field 'format' must be 'unposed-tracks'\)"):
        T.load_tracks(tmp_path / "f.npz")
    with pytest.raises(T.TracksError, match="missing.npz: tracks file not found"):
        T.load_tracks(tmp_path / "missing.npz")
    with pytest.raises(T.TracksError, match="'pixels' contains NaN"):
        T.save_tracks(tmp_path / "g.npz", T.Tracks(tracks.xyz, tracks.track, tracks.image, tracks.pixels * np.nan))
    assert not (tmp_path / "g.npz").exists()
