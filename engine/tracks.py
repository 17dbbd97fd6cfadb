# SPDX-License-Identifier: GPL-3.0-or-later
"""Feature tracks across views: the observations of one scene point in several photos, and that point.

Tracks tie the cameras together independently of the splats (the reprojection loss of track-constrained
self-calibration, `engine.splats.track_loss`). Two sources:

- `find_tracks`: SIFT features extracted, matched exhaustively and verified two-view-geometrically by pycolmap
  in a temporary database (the helpers of `engine.reconstruct.colmap_backend`). Verification is COLMAP's
  uncalibrated one (fundamental matrix / homography, no camera prior), so the tracks do not depend on the
  scene's possibly wrong cameras. Photos whose long side is below UPSAMPLE_BELOW are up-sampled 2x first
  (bicubic). Measured on scenegen rooms (16 views, true cameras): at 128x96, 137 tracks without up-sampling,
  278 at 2x, 272 at 4x, 222 at 8x; at 256x192, 246 / 385 / 345 / 199; the reprojection error stays ~0.15 px
  median, ~0.4 px at the 90th percentile throughout, while the time grows with the pixel count (COLMAP's SIFT
  already starts one octave up, so more than 2x adds only small-scale features that match poorly). cv2.resize
  samples source position (u' + 0.5) w / w' - 0.5 for target pixel u', so with COLMAP's pixel centres at +0.5 a
  keypoint at u' in the up-sampled photo is at u' w / w' in the original, exactly. (COLMAP's guided matching
  was measured too: 25 % more valid tracks but three times as many wrong ones, on repeated textures.)
- `tracks_from_pairs`: pointmap correspondences from a `pairs.npz` (`engine.pairs_file`): mutual nearest
  neighbours in 3D between the two pointmaps of each pair (both are in camera i's frame), taken on a grid of
  confident pixels and mapped to photo pixels through the file's pixel maps. Their pixels are those of the
  network's pixel grid, so they are quantised to the pointmap resolution.

Both join matches with union-find (`tracks_from_matches`); a track that holds two different features of one image
is ambiguous and dropped, as are tracks seen in fewer than `min_views` images. `triangulate` then places each
track's point as the least-squares intersection of its observation rays (any camera model, fisheye included) and
says which points are trustworthy (`valid`).
"""
from __future__ import annotations

import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_file
from .bundle import Camera, Scene
from .errors import EngineError
from .progress import Progress

UPSAMPLE_BELOW = 1024  # photos with a shorter long side are up-sampled 2x before SIFT extraction
PEAK_THRESHOLD = 0.002  # SIFT contrast threshold (COLMAP: 0.0067; the reconstruction backend: 0.003)
MAX_ERROR_PX = 4.0  # largest reprojection error (photo pixels) of any observation of a valid track
ERROR_SPREAD = 3.0  # find_tracks' reprojection limit widens to this many times the typical track error
MIN_ANGLE_DEG = 1.0  # smallest largest angle between two observation rays of a valid track (COLMAP: 1.5)
MIN_TRACKS = 16  # fewer valid tracks than this is an error: too little to constrain cameras with
FORMAT = "unposed-tracks"
VERSION = 1


class TracksError(EngineError):
    """Feature tracks cannot be found or read: missing photos, too few tracks, a malformed tracks file."""


@dataclass
class Tracks:
    xyz: np.ndarray  # (T, 3) float64 world points (NaN where not triangulated)
    track: np.ndarray  # (M,) int64 track index of each observation
    image: np.ndarray  # (M,) int64 index into scene.images of each observation
    pixels: np.ndarray  # (M, 2) float64 observed pixel positions (COLMAP convention, centres at +0.5)

    def __len__(self) -> int:
        return len(self.xyz)

    @property
    def views(self) -> np.ndarray:
        """(T,) number of observations of each track."""
        return np.bincount(self.track, minlength=len(self))

    def per_image(self, n_images: int) -> np.ndarray:
        """(n_images,) number of observations in each image."""
        return np.bincount(self.image, minlength=n_images)

    def subset(self, keep: np.ndarray) -> "Tracks":
        """The tracks where the (T,) boolean `keep` is True, renumbered in order, with their observations."""
        keep = np.asarray(keep, dtype=bool)
        new = np.cumsum(keep) - 1
        obs = keep[self.track]
        return Tracks(self.xyz[keep], new[self.track[obs]], self.image[obs], self.pixels[obs])

    def check(self, where: str) -> None:
        """Raise TracksError unless the arrays have the documented shapes, types and index ranges."""
        for name, ndim, cols, kind in (("xyz", 2, 3, "f"), ("track", 1, None, "iu"), ("image", 1, None, "iu"),
                                       ("pixels", 2, 2, "f")):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.ndim != ndim or (cols and a.shape[1] != cols) \
                    or a.dtype.kind not in kind:
                shape = "(N, 3)" if cols == 3 else "(M, 2)" if cols == 2 else "(M,)"
                got = f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise TracksError(f"{where}: {name!r} must be a {'float' if kind == 'f' else 'integer'} array of "
                                  f"shape {shape}, got {got}")
        m = len(self.track)
        if len(self.image) != m or len(self.pixels) != m:
            raise TracksError(f"{where}: 'track', 'image' and 'pixels' must have one entry per observation, got "
                              f"{m}, {len(self.image)} and {len(self.pixels)}")
        if m and (self.track.min() < 0 or self.track.max() >= len(self.xyz)):
            raise TracksError(f"{where}: 'track' holds indices outside 0..{len(self.xyz) - 1} (the rows of 'xyz')")
        if m and self.image.min() < 0:
            raise TracksError(f"{where}: 'image' holds a negative image index ({int(self.image.min())})")
        if not np.isfinite(self.pixels).all():
            raise TracksError(f"{where}: 'pixels' contains NaN or infinite values")


# --- linking matches into tracks -----------------------------------------------------------------------------

def _components(edges: np.ndarray, n: int) -> np.ndarray:
    """Connected-component label (its smallest node) of each of `n` nodes joined by `edges` (E, 2).

    Vectorised union-find: every round hooks the larger root of each edge onto the smaller one, then pointer
    jumping sends every node to its root. Parents never exceed their node, so no cycle can form."""
    parent = np.arange(n)
    a, b = edges[:, 0], edges[:, 1]
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        np.minimum.at(parent, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up


def tracks_from_matches(node_image: np.ndarray, node_pixels: np.ndarray, matches: np.ndarray,
                        min_views: int = 2) -> Tracks:
    """Tracks (not yet triangulated: xyz NaN) from matched features.

    `node_image` (N,) and `node_pixels` (N, 2) describe each feature (a distinct position in one image); `matches`
    (E, 2) holds pairs of features seen as the same point. Connected features form a track; a track holding two
    features of one image is dropped (the matches contradict each other), as is one seen in fewer than
    `min_views` images. Observations come sorted by track, then image."""
    node_image = np.asarray(node_image, dtype=np.int64)
    node_pixels = np.asarray(node_pixels, dtype=np.float64)
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    matches = matches[matches[:, 0] != matches[:, 1]]
    empty = Tracks(np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)))
    if len(matches) == 0:
        return empty
    nodes, local = np.unique(matches, return_inverse=True)
    _, track = np.unique(_components(local.reshape(-1, 2), len(nodes)), return_inverse=True)
    image = node_image[nodes]
    n_tracks, n_images = int(track.max()) + 1, int(image.max()) + 1
    per_pair = np.bincount(track * n_images + image, minlength=n_tracks * n_images).reshape(n_tracks, n_images)
    keep = (per_pair.max(1) == 1) & ((per_pair > 0).sum(1) >= min_views)
    if not keep.any():
        return empty
    new = np.cumsum(keep) - 1
    obs = np.nonzero(keep[track])[0]
    order = obs[np.lexsort((image[obs], track[obs]))]
    return Tracks(np.full((int(keep.sum()), 3), np.nan), new[track[order]], image[order],
                  node_pixels[nodes[order]])


# --- triangulation -------------------------------------------------------------------------------------------

def _sum_by(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Sums of `values` (M, ...) grouped by `index` (M,) into n rows."""
    flat = values.reshape(len(values), int(np.prod(values.shape[1:])))
    out = np.stack([np.bincount(index, weights=flat[:, k], minlength=n) for k in range(flat.shape[1])], -1)
    return out.reshape(n, *values.shape[1:])


def _observation_rays(tracks: Tracks, cameras: Sequence[Camera], image_cameras: np.ndarray):
    """Unit camera-frame rays (M, 3) through the observed pixels, and their validity (M,)."""
    import torch

    from .projection import unproject_directions

    rays = np.zeros((len(tracks.track), 3))
    ok = np.zeros(len(tracks.track), dtype=bool)
    cam_of = image_cameras[tracks.image]
    for c, cam in enumerate(cameras):
        sel = np.nonzero(cam_of == c)[0]
        if len(sel):
            d, v = unproject_directions(cam.model, torch.tensor(cam.params, dtype=torch.float64),
                                        torch.from_numpy(tracks.pixels[sel]))
            rays[sel], ok[sel] = d.numpy(), v.numpy()
    return rays, ok & np.isfinite(rays).all(1)


def reprojection_errors(tracks: Tracks, cameras: Sequence[Camera], poses: np.ndarray,
                        image_cameras: Sequence[int]) -> np.ndarray:
    """(M,) pixel distance between each observation and its track's point projected into the image; inf where
    the point does not project (behind a perspective camera, beyond a lens's limit, or not triangulated)."""
    import torch

    from .projection import project

    poses, image_cameras = _check_cameras(tracks, cameras, poses, image_cameras)
    points = tracks.xyz[tracks.track]
    pose = poses[tracks.image]
    cam_points = np.einsum("mij,mj->mi", pose[:, :3, :3], points) + pose[:, :3, 3]
    errors = np.full(len(points), np.inf)
    cam_of = image_cameras[tracks.image]
    for c, cam in enumerate(cameras):
        sel = np.nonzero((cam_of == c) & np.isfinite(cam_points).all(1))[0]
        if len(sel):
            px, ok = project(cam.model, torch.tensor(cam.params, dtype=torch.float64),
                             torch.from_numpy(cam_points[sel]))
            err = np.linalg.norm(px.numpy() - tracks.pixels[sel], axis=1)
            errors[sel] = np.where(ok.numpy() & np.isfinite(err), err, np.inf)
    return errors


def _check_cameras(tracks: Tracks, cameras: Sequence[Camera], poses: np.ndarray, image_cameras: Sequence[int]):
    poses = np.asarray(poses, dtype=np.float64)
    image_cameras = np.asarray(image_cameras, dtype=np.int64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(image_cameras) != len(poses):
        raise TracksError(f"poses must be (n_images, 4, 4) with one camera index per image; got poses of shape "
                          f"{poses.shape} and {len(image_cameras)} camera indices")
    if len(image_cameras) and (image_cameras.min() < 0 or image_cameras.max() >= len(cameras)):
        raise TracksError(f"image camera indices must lie in 0..{len(cameras) - 1}, got {image_cameras.tolist()}")
    if len(tracks.image) and tracks.image.max() >= len(poses):
        raise TracksError(f"tracks observe image {int(tracks.image.max())} but only {len(poses)} poses are given")
    return poses, image_cameras


def triangulate(tracks: Tracks, cameras: Sequence[Camera], poses: np.ndarray, image_cameras: Sequence[int], *,
                max_error: float = MAX_ERROR_PX, min_angle_deg: float = MIN_ANGLE_DEG
                ) -> tuple[np.ndarray, np.ndarray]:
    """World points (T, 3) of the tracks and their validity (T,), from `cameras`, `poses` (n_images, 4, 4)
    cam_from_world and `image_cameras[i]` (index into `cameras` of image i).

    Each point minimises the summed squared distance to its observation rays (rays from
    `projection.unproject_directions`, so any camera model works): with unit world directions d and centres c,
    sum (I - d d^T)(x - c) = 0, a 3x3 linear system per track (the midpoint method, for any number of rays). The
    point is NaN where fewer than two rays unproject or they are parallel. `valid` additionally
    needs: the point ahead along every ray, a largest angle between rays seen from the point of at least
    `min_angle_deg`, and every observation reprojecting (`projection.project`) within `max_error` pixels.
    """
    poses, image_cameras = _check_cameras(tracks, cameras, poses, image_cameras)
    n = len(tracks)
    rays, ok = _observation_rays(tracks, cameras, image_cameras)
    rot, trans = poses[tracks.image, :3, :3], poses[tracks.image, :3, 3]
    centres = -np.einsum("mji,mj->mi", rot, trans)
    dirs = np.einsum("mji,mj->mi", rot, rays)  # R^T d: world directions
    proj = (np.eye(3) - dirs[:, :, None] * dirs[:, None, :]) * ok[:, None, None]
    a = _sum_by(tracks.track, proj, n)
    b = _sum_by(tracks.track, np.einsum("mij,mj->mi", proj, centres), n)
    n_rays = np.bincount(tracks.track, weights=ok, minlength=n)
    # two rays at angle t give a smallest eigenvalue 1 - cos t: below 1e-12 the rays are parallel to ~1e-4 deg
    solvable = (n_rays >= 2) & (np.linalg.eigvalsh(a)[:, 0] > 1e-12) if n else np.zeros(0, bool)
    xyz = np.full((n, 3), np.nan)
    if solvable.any():
        xyz[solvable] = np.linalg.solve(a[solvable], b[solvable][..., None])[..., 0]
    # checks per observation, gathered per track
    to_point = xyz[tracks.track] - centres
    ahead = ~ok | (np.einsum("mi,mi->m", dirs, to_point) > 0)
    errors = reprojection_errors(Tracks(xyz, tracks.track, tracks.image, tracks.pixels), cameras, poses,
                                 image_cameras)
    good = ahead & np.isfinite(errors) & (errors <= max_error)
    valid = solvable & (np.bincount(tracks.track, weights=good, minlength=n) == np.bincount(tracks.track,
                                                                                            minlength=n))
    return xyz, valid & (_largest_angle(tracks.track, to_point, ok, n) >= math.radians(min_angle_deg))


def _largest_angle(track: np.ndarray, vectors: np.ndarray, use: np.ndarray, n: int) -> np.ndarray:
    """(n,) largest angle (radians) between two of each track's `vectors` (M, 3) where `use` (M,)."""
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.where(use[:, None] & (norm > 0), vectors / np.where(norm > 0, norm, 1.0), 0.0)
    order = np.argsort(track, kind="stable")
    counts = np.bincount(track, minlength=n)
    slot = np.arange(len(track)) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.zeros((n, int(counts.max(initial=0)), 3))
    padded[track[order], slot] = unit[order]
    present = np.linalg.norm(padded, axis=2) > 0
    smallest_cos = np.ones(n)
    for k in range(padded.shape[1]):  # one slot against all: memory stays (n, L)
        cos = np.einsum("ti,tli->tl", padded[:, k], padded)
        cos = np.where(present & present[:, k:k + 1], cos, 1.0)
        smallest_cos = np.minimum(smallest_cos, cos.min(1))
    return np.arccos(np.clip(smallest_cos, -1.0, 1.0))


def scene_cameras(scene: Scene) -> tuple[list[Camera], np.ndarray, list[int]]:
    """`triangulate`'s camera arguments for a scene: cameras, poses (n_images, 4, 4), image -> camera index."""
    cameras = list(scene.cameras.values())
    index = {cam.id: k for k, cam in enumerate(cameras)}
    poses = np.stack([im.cam_from_world for im in scene.images]) if scene.images else np.zeros((0, 4, 4))
    return cameras, poses, [index[im.camera_id] for im in scene.images]


def _keep_valid(tracks: Tracks, scene: Scene, *, max_error: float = MAX_ERROR_PX, min_tracks: int = MIN_TRACKS,
               what: str = "") -> Tracks:
    """The tracks that triangulate validly with the scene's cameras (TracksError below `min_tracks`).

    The scene's cameras may be a rough start (focal 20 % and rotations 2 deg off leave correct tracks 3 to 6 px
    off at 128x96), so the reprojection limit is max(`max_error`, ERROR_SPREAD x the median over tracks of their
    worst observation's error): `max_error` for accurate cameras, wider as they are worse, and still below the
    errors of mismatched tracks as long as most linked tracks are right (measured on a 128x96 room where a quarter
    of the linked tracks are wrong: from focal 20 % / rotations 2 deg off it keeps every right track and 3 % wrong
    ones)."""
    cameras, poses, image_cameras = scene_cameras(scene)
    xyz, valid = triangulate(tracks, cameras, poses, image_cameras, max_error=math.inf)
    tracks = Tracks(xyz, tracks.track, tracks.image, tracks.pixels)
    worst = np.zeros(len(tracks))
    np.maximum.at(worst, tracks.track, reprojection_errors(tracks, cameras, poses, image_cameras))
    limit = max(max_error, ERROR_SPREAD * float(np.median(worst[valid]))) if valid.any() else max_error
    out = tracks.subset(valid & (worst <= limit))
    if len(out) < min_tracks:
        raise TracksError(f"only {len(out)} feature tracks {what}triangulate consistently with the bundle's cameras "
                          f"({len(tracks)} linked, at least {min_tracks} needed); try more overlapping or more "
                          f"textured photos, more features (max_features) or fewer views per track (min_views)")
    return out


# --- SIFT tracks (pycolmap) ----------------------------------------------------------------------------------

def _check_photos(scene: Scene, photos: list[np.ndarray] | None) -> list[np.ndarray]:
    if photos is None:
        from .splats.train import load_photos  # reads every photo, naming any that is missing or mis-sized

        return load_photos(scene)
    if len(photos) != len(scene.images):
        raise TracksError(f"{len(photos)} photos given for {len(scene.images)} images")
    for image, photo in zip(scene.images, photos):
        cam = scene.camera_of(image)
        if not isinstance(photo, np.ndarray) or photo.dtype != np.uint8 or photo.ndim not in (2, 3) \
                or photo.shape[:2] != (cam.height, cam.width):
            got = f"{photo.dtype} array of shape {photo.shape}" if isinstance(photo, np.ndarray) else type(photo)
            raise TracksError(f"image {image.name!r}: its photo must be a uint8 array of shape ({cam.height}, "
                              f"{cam.width}[, 3]) like its camera {cam.id}, got {got}")
    return photos


def upsample_factor(width: int, height: int) -> int:
    """The default up-sampling before SIFT: 2 for photos whose long side is below UPSAMPLE_BELOW, else 1."""
    return 2 if max(width, height) < UPSAMPLE_BELOW else 1


def find_tracks(scene: Scene, photos: list[np.ndarray] | None = None, *, max_features: int = 4096,
                min_views: int = 3, upsample: float | None = None, peak_threshold: float = PEAK_THRESHOLD,
                max_error: float = MAX_ERROR_PX, min_tracks: int = MIN_TRACKS, threads: int = 0, seed: int = 0,
                progress: Progress | None = None) -> Tracks:
    """SIFT tracks seen in at least `min_views` of the scene's images, triangulated with the scene's cameras
    (only tracks that `triangulate` finds valid are kept). `photos` (H, W[, 3]) uint8 RGB per image default to
    the bundle's files; `threads=1` makes runs repeat exactly. Raises TracksError for a missing photo or fewer than
    `min_tracks` tracks."""
    import cv2
    import pycolmap

    from .reconstruct.colmap_backend import (ColmapOptions, cancellable, colmap_image_name, extract_features,
                                             thread_count)
    from .reconstruct.images import Photo

    progress = progress or Progress("none")
    if upsample is not None and not upsample >= 1:
        raise TracksError(f"upsample must be a factor of at least 1, got {upsample}")
    photos = _check_photos(scene, photos)
    if len(photos) < 2:
        raise TracksError(f"feature tracks need at least 2 images, the bundle has {len(photos)}")
    pycolmap.logging.minloglevel = 1
    pycolmap.set_random_seed(seed)
    with tempfile.TemporaryDirectory(prefix="unposed-tracks-") as work:
        work = Path(work)
        image_dir, database = work / "images", work / "database.db"
        image_dir.mkdir()
        entries, scales = [], []
        for k, (image, photo) in enumerate(zip(scene.images, photos)):
            h, w = photo.shape[:2]
            factor = upsample_factor(w, h) if upsample is None else upsample
            size = (round(w * factor), round(h * factor))
            entry = Photo(image.name, image_dir / f"{k:06d}.png", size[0], size[1], f"camera {image.camera_id}")
            big = photo if size == (w, h) else cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(image_dir / colmap_image_name(k, entry)),
                        cv2.cvtColor(big, cv2.COLOR_RGB2BGR) if big.ndim == 3 else big)
            entries.append(entry)
            scales.append((w / size[0], h / size[1]))
        options = ColmapOptions(max_image_size=max(64, *(max(e.width, e.height) for e in entries)),
                                max_features=max_features, peak_threshold=peak_threshold, threads=threads, seed=seed)
        extract_features(entries, image_dir, database, options, progress)
        progress.stage("match features", None)
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = thread_count(options)
        verification = pycolmap.TwoViewGeometryOptions()
        verification.ransac.random_seed = seed
        cancellable(pycolmap.match_exhaustive, database_path=database, matching_options=matching,
                    verification_options=verification, device=pycolmap.Device.cpu)
        node_image, node_pixels, matches = _read_matches(database, entries, scales)
    progress.stage("link tracks", None)
    linked = tracks_from_matches(node_image, node_pixels, matches, min_views)
    tracks = _keep_valid(linked, scene, max_error=max_error, min_tracks=min_tracks)
    _log_counts(tracks, scene, progress)
    return tracks


def _read_matches(database: Path, entries: list, scales: list[tuple[float, float]]):
    """Features (image, original-photo pixels) and verified inlier matches between them from COLMAP's database.
    Keypoints at one position (SIFT's second orientation) become one feature."""
    import pycolmap

    from .reconstruct.colmap_backend import colmap_image_name

    db = pycolmap.Database.open(database)
    try:
        node_image, node_pixels, node_of, offset, index = [], [], [], 0, {}
        for k, entry in enumerate(entries):
            record = db.read_image_with_name(colmap_image_name(k, entry))
            index[record.image_id] = k
            xy = db.read_keypoints(record.image_id)[:, :2].astype(np.float64) if db.exists_keypoints(
                record.image_id) else np.zeros((0, 2))
            unique, inverse = np.unique(xy, axis=0, return_inverse=True)
            node_image.append(np.full(len(unique), k))
            node_pixels.append(unique * scales[k])
            node_of.append(offset + inverse.reshape(-1))
            offset += len(unique)
        matches = [np.zeros((0, 2), np.int64)]
        for pair_id, geometry in zip(*db.read_two_view_geometries()):
            inliers = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
            if len(inliers):
                id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
                k1, k2 = index[id1], index[id2]
                matches.append(np.stack([node_of[k1][inliers[:, 0]], node_of[k2][inliers[:, 1]]], 1))
    finally:
        db.close()
    return np.concatenate(node_image), np.concatenate(node_pixels), np.concatenate(matches)


def _log_counts(tracks: Tracks, scene: Scene, progress: Progress) -> None:
    per_image = tracks.per_image(len(scene.images))
    progress.log(f"{len(tracks)} feature tracks, {len(tracks.track)} observations ({int(per_image.min())} to "
                 f"{int(per_image.max())} per image, {tracks.views.mean():.1f} views per track)")
    missing = [scene.images[k].name for k in np.nonzero(per_image == 0)[0]]
    if missing:
        from .reconstruct.images import listing

        progress.log(f"no feature track is seen in {len(missing)} image(s): {listing(missing)}", "warning")


# --- pointmap tracks (pairs.npz) -----------------------------------------------------------------------------

def _nearest(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of the nearest of `points` (P, 3) to each of `queries` (Q, 3): exact k-d tree search (FLANN)."""
    import cv2

    index = cv2.flann_Index(np.ascontiguousarray(points, dtype=np.float32), {"algorithm": 4})  # KDTREE_SINGLE
    found, _ = index.knnSearch(np.ascontiguousarray(queries, dtype=np.float32), 1, params={})
    return found[:, 0].astype(np.int64)


def _pointmap_spacing(points: np.ndarray) -> np.ndarray:
    """(H, W) distance from each pointmap pixel to its nearer right/down neighbour: the local pixel footprint."""
    dx = np.linalg.norm(np.diff(points, axis=1), axis=2)
    dy = np.linalg.norm(np.diff(points, axis=0), axis=2)
    dx = np.concatenate([dx, dx[:, -1:]], 1)
    dy = np.concatenate([dy, dy[-1:]], 0)
    return np.minimum(dx, dy)


def mutual_matches(pts_i: np.ndarray, pts_j: np.ndarray, conf_i: np.ndarray, conf_j: np.ndarray, *,
                   min_conf: float, stride: int, max_offset: int = 1, max_spacing: float = 2.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices (K,) in view i and (K,) in view j of mutual nearest neighbours in 3D between the two
    pointmaps (H, W, 3) of one pair (same frame), among pixels with confidence >= `min_conf`.

    Queries are view i's pixels on a `stride` grid. A query's partner is its nearest point in view j; the pair is
    kept when the partner's own nearest point in view i lies within `max_offset` pixels of the query (exact
    mutuality, 0, keeps few: neighbouring samples of one surface are rarely each other's nearest in both
    directions) and the two points are closer than `max_spacing` times the local pixel footprint of view i."""
    h, w = conf_i.shape
    grid = np.zeros((h, w), dtype=bool)
    grid[stride // 2::stride, stride // 2::stride] = True
    cand_i = np.flatnonzero(conf_i.reshape(-1) >= min_conf)
    cand_j = np.flatnonzero(conf_j.reshape(-1) >= min_conf)
    queries = np.flatnonzero(grid.reshape(-1) & (conf_i.reshape(-1) >= min_conf))
    if len(queries) == 0 or len(cand_j) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat_i, flat_j = pts_i.reshape(-1, 3), pts_j.reshape(-1, 3)
    partner = cand_j[_nearest(flat_j[cand_j], flat_i[queries])]
    back = cand_i[_nearest(flat_i[cand_i], flat_j[partner])]
    offset = np.maximum(np.abs(back % w - queries % w), np.abs(back // w - queries // w))
    close = np.linalg.norm(flat_i[queries] - flat_j[partner], axis=1) \
        <= max_spacing * _pointmap_spacing(pts_i).reshape(-1)[queries]
    keep = (offset <= max_offset) & close
    return queries[keep], partner[keep]


def tracks_from_pairs(pairs_path: str | os.PathLike | Sequence[str | os.PathLike], scene: Scene, *,
                      min_conf: float = 3.0, stride: int = 4, min_views: int = 3, max_error: float = MAX_ERROR_PX,
                      min_tracks: int = MIN_TRACKS, progress: Progress | None = None) -> Tracks:
    """Tracks from the pointmap correspondences of a pairs file (or its shards), matched to the scene's images by
    name and triangulated with the scene's cameras (valid tracks only). Correspondences are `mutual_matches` of
    each pair; their network pixels (u, v) go to photo pixels ((u + ox) sx, (v + oy) sy) by the file's pixel maps.
    Images of the file that the scene lacks are skipped."""
    from .pairs_file import open_pairs

    progress = progress or Progress("none")
    with open_pairs(pairs_path) as pf:
        where = str(pf.paths[0])
        by_name = {image.name: k for k, image in enumerate(scene.images)}
        to_scene = np.array([by_name.get(name, -1) for name in pf.names])
        if (to_scene >= 0).sum() < 2:
            raise TracksError(f"{where}: at most one of its {pf.num_images} image names is in the bundle "
                              f"(bundle images: {', '.join(sorted(by_name)[:5])}...)")
        maps = np.zeros((pf.num_images, 4))
        for k in np.nonzero(to_scene >= 0)[0]:
            cam = scene.camera_of(scene.images[to_scene[k]])
            if pf.original_sizes is not None and tuple(pf.original_sizes[k]) != (cam.width, cam.height):
                w, h = pf.original_sizes[k]
                raise TracksError(f"{where}: image {pf.names[k]!r} is {w}x{h} pixels in the pairs file "
                                  f"(original_sizes) but its camera {cam.id} in the bundle is {cam.width}x{cam.height}")
            maps[k] = pf.pixel_map(k, (cam.width, cam.height))
        edges = np.nonzero((to_scene[pf.pairs] >= 0).all(1))[0]
        size = pf.width * pf.height
        progress.stage("match pointmaps", len(edges))
        matches = [np.zeros((0, 2), np.int64)]
        for start in range(0, len(edges), 8):
            batch = pf.load(edges[start:start + 8])
            for k in range(len(batch)):
                i, j = batch.pairs[k]
                qi, qj = mutual_matches(batch.pts3d_i[k], batch.pts3d_j[k], batch.conf_i[k], batch.conf_j[k],
                                        min_conf=min_conf, stride=stride)
                matches.append(np.stack([i * size + qi, j * size + qj], 1))
            progress.advance(len(batch))
        width = pf.width
    progress.stage("link tracks", None)
    matches = np.concatenate(matches)
    nodes = np.unique(matches)  # only matched pixels become features
    k, flat = nodes // size, nodes % size
    u, v = flat % width + 0.5, flat // width + 0.5
    pixels = np.stack([(u + maps[k, 0]) * maps[k, 2], (v + maps[k, 1]) * maps[k, 3]], 1)
    linked = tracks_from_matches(to_scene[k], pixels, np.searchsorted(nodes, matches), min_views)
    tracks = _keep_valid(linked, scene, max_error=max_error, min_tracks=min_tracks, what="from pointmaps ")
    _log_counts(tracks, scene, progress)
    return tracks


# --- file ----------------------------------------------------------------------------------------------------

def save_tracks(path: str | os.PathLike, tracks: Tracks) -> Path:
    """Write `tracks` as an .npz (format marker, xyz, track, image, pixels), atomically."""
    path = Path(path)
    tracks.check(str(path))
    with atomic_file(path) as f:
        np.savez(f, format=np.array(FORMAT), version=np.array(VERSION), xyz=tracks.xyz.astype(np.float64),
                 track=tracks.track.astype(np.int64), image=tracks.image.astype(np.int64),
                 pixels=tracks.pixels.astype(np.float64))
    return path


def load_tracks(path: str | os.PathLike) -> Tracks:
    """Read a file written by `save_tracks`, validating it (TracksError naming the problem)."""
    path = Path(path)
    if not path.is_file():
        raise TracksError(f"{path}: tracks file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise TracksError(f"{path}: not a readable tracks .npz file ({exc})") from None
    if str(arrays.get("format", "")) != FORMAT:
        raise TracksError(f"{path}: not a tracks file (field 'format' must be {FORMAT!r})")
    version = arrays.get("version")
    if version is None or version.shape != () or version.dtype.kind not in "iu" or not 1 <= int(version) <= VERSION:
        raise TracksError(f"{path}: unsupported 'version' {version!r} (this engine reads 1..{VERSION})")
    missing = [k for k in ("xyz", "track", "image", "pixels") if k not in arrays]
    if missing:
        raise TracksError(f"{path}: missing array(s) {', '.join(missing)}")
    tracks = Tracks(*(arrays[k] for k in ("xyz", "track", "image", "pixels")))
    tracks.check(str(path))
    return Tracks(tracks.xyz.astype(np.float64), tracks.track.astype(np.int64), tracks.image.astype(np.int64),
                  tracks.pixels.astype(np.float64))
