# SPDX-License-Identifier: GPL-3.0-or-later
"""The weights-free backend: SIFT features, matching and incremental mapping with pycolmap, on the CPU.

Cameras: one per group of photos that share a folder (or a video) and a size, model SIMPLE_RADIAL by default,
its focal length seeded from the first photo's EXIF when it has one (`images.Photo.exif_focal`).
Pairs to match come from the caller (every pair for a small set, neighbours in order for a video).

COLMAP's defaults are tuned for large photos; these options keep them except where small or weakly textured
images break them (measured in bench/bench_colmap.py): a lower SIFT peak threshold (more features in low
contrast), initial pairs accepted with fewer inliers and a smaller triangulation angle, photos registered with
fewer inliers, and, for two photos, points seen by both kept (COLMAP ignores two-view tracks). Sub-models of any
size are kept so that a failure can say how many photos did register.

Each pycolmap call runs on a worker thread with a cancellation token, so Ctrl+C (the job runner's SIGINT)
stops COLMAP within moments instead of after the whole stage.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..bundle import Scene
from ..camera_models import MODELS, get_model
from ..errors import CancelledError, EngineError
from ..interop import colmap as colmap_io
from ..interop import link_or_copy
from ..progress import Progress
from .images import Photo, listing

EXTRACT_CHUNK = 8  # photos per feature-extraction call at least (progress granularity), 2 per thread
MATCH_CHUNK = 100  # pairs per matching call
DATABASE = "database.db"


class ColmapError(EngineError):
    """COLMAP could not reconstruct the photos (unreadable photos, too few registered)."""


@dataclass
class ColmapOptions:
    camera_model: str = "SIMPLE_RADIAL"
    max_image_size: int = 3200  # longest side the features are extracted at (COLMAP's default)
    max_features: int = 8192
    peak_threshold: float = 0.003  # SIFT contrast threshold (COLMAP: 0.02 / 3)
    init_min_inliers: int = 50  # inliers an initial pair needs (COLMAP: 100)
    init_min_tri_angle: float = 8.0  # degrees (COLMAP: 16)
    abs_pose_min_inliers: int = 20  # inliers a photo needs to register (COLMAP: 30)
    min_registered: float = 0.5  # fail when fewer than this fraction of the photos register
    threads: int = 0  # 0: every core this process may use
    seed: int = 0

    def check(self) -> None:
        if self.camera_model not in MODELS:
            raise ColmapError(f"unknown camera model {self.camera_model!r}; known: {', '.join(MODELS)}")
        if not 0.0 <= self.min_registered <= 1.0:
            raise ColmapError(f"min_registered must be a fraction in [0, 1], got {self.min_registered}")
        if self.max_image_size < 64:
            raise ColmapError(f"max_image_size must be at least 64 pixels, got {self.max_image_size}")


@dataclass
class ColmapResult:
    scene: Scene  # registered images only, named as the photos, `path` the upright photo files
    registered: int
    models: list[int]  # images in each model COLMAP made, largest first
    verified_pairs: int


def thread_count(options: ColmapOptions) -> int:
    """The threads COLMAP runs with: `options.threads`, or every CPU this process may use."""
    if options.threads > 0:
        return options.threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cancellable(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """fn(**kwargs, cancellation_token=...) on a worker thread; Ctrl+C cancels it and raises CancelledError.

    Waits on an Event, not Thread.join: a join interrupted by Ctrl+C marks the thread finished while it still
    runs (CPython 3.11), and COLMAP would then go on reading photos that the cleanup is deleting.
    """
    import pycolmap

    token = pycolmap.CancellationToken()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = fn(**kwargs, cancellation_token=token)
        except BaseException as exc:  # handed to the calling thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="colmap", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        token.cancel()
        done.wait()
        raise CancelledError("cancelled by the user") from None
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _link(src: Path, dst: Path) -> None:
    """`dst` shows the file `src`: a symbolic link, else a hard link, else a copy."""
    try:
        os.symlink(src, dst)
    except OSError:
        link_or_copy(src, dst)


def colmap_image_name(k: int, photo: Photo) -> str:
    """The name photo k has inside COLMAP: its index (COLMAP's pair lists cannot hold names with spaces)."""
    return f"{k:06d}{photo.file.suffix.lower()}"


def _camera_groups(photos: Sequence[Photo]) -> list[list[int]]:
    """Photo indices grouped by (group, width, height), in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(photos):
        groups.setdefault((p.group, p.width, p.height), []).append(k)
    return list(groups.values())


def extract_features(photos: Sequence[Photo], image_dir: Path, database: Path, options: ColmapOptions,
                     progress: Progress) -> None:
    """SIFT features of `photos` (files `colmap_image_name` in `image_dir`) into `database`: one COLMAP camera
    per group of photos (`_camera_groups`). Raises ColmapError naming photos COLMAP cannot read; warns of photos
    without features."""
    _extract(photos, image_dir, database, options, progress)
    _check_features(photos, database, progress)


def _extract(photos: Sequence[Photo], image_dir: Path, database: Path, options: ColmapOptions,
             progress: Progress) -> None:
    import pycolmap

    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = thread_count(options)
    extraction.max_image_size = options.max_image_size
    extraction.sift.max_num_features = options.max_features
    extraction.sift.peak_threshold = options.peak_threshold
    model = get_model(options.camera_model)
    groups = _camera_groups(photos)
    progress.stage("extract features", len(photos))
    progress.log(f"{len(groups)} camera(s) ({options.camera_model}) for {len(photos)} photos")
    for members in groups:
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = options.camera_model
        first = photos[members[0]]
        f = first.exif_focal
        if f is not None:  # a prior COLMAP refines (has_prior_focal_length)
            reader.camera_params = ",".join(f"{v:.9g}" for v in model.join(f, f, first.width / 2, first.height / 2))
        size = max(EXTRACT_CHUNK, 2 * extraction.num_threads)
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            cancellable(pycolmap.extract_features, database_path=database, image_path=image_dir,
                        image_names=[colmap_image_name(k, photos[k]) for k in chunk],
                        camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                        extraction_options=extraction, device=pycolmap.Device.cpu)
            if start == 0:  # the chunk made this group's camera: the next chunks reuse it
                db = pycolmap.Database.open(database)
                image = db.read_image_with_name(colmap_image_name(members[0], first))
                db.close()
                if image is None:
                    raise ColmapError(f"{first.file}: COLMAP could not read this photo")
                reader.existing_camera_id = image.camera_id
            progress.advance(len(chunk))


def _check_features(photos: Sequence[Photo], database: Path, progress: Progress) -> None:
    import pycolmap

    db = pycolmap.Database.open(database)
    try:
        unread, featureless = [], []
        for k, photo in enumerate(photos):
            image = db.read_image_with_name(colmap_image_name(k, photo))
            if image is None:
                unread.append(str(photo.file))
            elif db.num_keypoints_for_image(image.image_id) == 0:
                featureless.append(photo.name)
    finally:
        db.close()
    if unread:
        raise ColmapError(f"COLMAP could not read {len(unread)} photo(s): {listing(unread)}")
    if featureless:
        progress.log(f"no features found in {len(featureless)} photo(s) (blank or blurred?): "
                     f"{listing(featureless)}", "warning")


def _match(photos: Sequence[Photo], pairs: Sequence[tuple[int, int]], work: Path, database: Path,
           options: ColmapOptions, progress: Progress) -> int:
    """Match and geometrically verify `pairs` in chunks; returns the number of verified pairs."""
    import pycolmap

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = thread_count(options)
    pairing = pycolmap.ImportedPairingOptions()
    pair_list = work / "pairs.txt"
    pairing.match_list_path = str(pair_list)
    progress.stage("match features", len(pairs))
    for start in range(0, len(pairs), MATCH_CHUNK):
        chunk = pairs[start:start + MATCH_CHUNK]
        pair_list.write_text("".join(f"{colmap_image_name(i, photos[i])} {colmap_image_name(j, photos[j])}\n"
                                     for i, j in chunk), encoding="utf-8")
        cancellable(pycolmap.match_image_pairs, database_path=database, matching_options=matching,
                    pairing_options=pairing, device=pycolmap.Device.cpu)
        progress.advance(len(chunk))
    db = pycolmap.Database.open(database)
    try:
        return db.num_verified_image_pairs()
    finally:
        db.close()


def _map(photos: Sequence[Photo], image_dir: Path, database: Path, sparse: Path, options: ColmapOptions,
         progress: Progress) -> dict:
    import pycolmap

    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.min_model_size = 2  # keep every sub-model: a failure reports how many photos registered
    mapping.num_threads = thread_count(options)
    mapping.random_seed = options.seed
    mapping.mapper.init_min_num_inliers = options.init_min_inliers
    mapping.mapper.init_min_tri_angle = options.init_min_tri_angle
    mapping.mapper.abs_pose_min_num_inliers = options.abs_pose_min_inliers
    # COLMAP skips points seen by only two photos (less reliable): with two photos there would be none.
    mapping.triangulation.ignore_two_view_tracks = len(photos) > 2
    progress.stage("register photos", len(photos))
    done = [0]

    def registered(n: int) -> None:
        step = min(n, len(photos) - done[0])  # later sub-models count again: keep the bar within its total
        if step > 0:
            done[0] += step
            progress.advance(step)

    sparse.mkdir(parents=True, exist_ok=True)
    return cancellable(pycolmap.incremental_mapping, database_path=database, image_path=image_dir,
                       output_path=sparse, options=mapping,
                       initial_image_pair_callback=lambda: registered(2), next_image_callback=lambda: registered(1))


def reconstruct(photos: Sequence[Photo], pairs: Sequence[tuple[int, int]], work: Path,
                options: ColmapOptions | None = None, progress: Progress | None = None) -> ColmapResult:
    """Reconstruct `photos` (each with its upright `file`) matching the unordered `pairs` (i < j), in the empty
    or new folder `work` (COLMAP's database, links to the photos and models). Raises ColmapError when fewer than
    `options.min_registered` of the photos (and fewer than 2) register, naming the ones left out."""
    import pycolmap

    options = options or ColmapOptions()
    progress = progress or Progress("none")
    options.check()
    pycolmap.logging.minloglevel = 1  # warnings and errors only (COLMAP logs every step at INFO)
    pycolmap.set_random_seed(options.seed)
    image_dir, database, sparse = work / "images", work / DATABASE, work / "sparse"
    image_dir.mkdir(parents=True, exist_ok=True)
    for k, photo in enumerate(photos):
        _link(photo.file.absolute(), image_dir / colmap_image_name(k, photo))

    extract_features(photos, image_dir, database, options, progress)
    verified = _match(photos, pairs, work, database, options, progress)
    models = _map(photos, image_dir, database, sparse, options, progress) or {}

    n = len(photos)
    sizes = sorted(((rec.num_reg_images(), idx) for idx, rec in models.items()), reverse=True)
    best = sizes[0][1] if sizes else None
    registered = sizes[0][0] if sizes else 0
    needed = max(2, math.ceil(options.min_registered * n))
    reg_names: set[str] = set()
    if best is not None:
        rec = models[best]
        reg_names = {rec.images[i].name for i in rec.reg_image_ids()}
    left_out = [p.name for k, p in enumerate(photos) if colmap_image_name(k, p) not in reg_names]
    groups = f" in {len(sizes)} separate groups of {', '.join(str(s) for s, _ in sizes)}" if len(sizes) > 1 else ""
    if registered < needed:
        why = ("the photos may not overlap enough, or have too little texture to match "
               f"({verified} of {len(pairs)} pairs matched)")
        got = f"only {registered} of {n} photos{groups}" if registered else f"none of the {n} photos"
        raise ColmapError(f"COLMAP registered {got} (at least {needed} needed): {why}"
                          + (f"; left out: {listing(left_out, 8)}" if registered else ""))
    if left_out:
        progress.log(f"COLMAP registered {registered} of {n} photos{groups}; left out: {listing(left_out, 8)}",
                     "warning")

    scene = colmap_io.read_model(sparse / str(best))  # unposed images are dropped; named as inside COLMAP
    index = {colmap_image_name(k, p): k for k, p in enumerate(photos)}
    scene.images.sort(key=lambda image: index[image.name])  # input order (COLMAP numbers them as it reads them)
    for image in scene.images:
        photo = photos[index[image.name]]
        image.name, image.path = photo.name, photo.file.absolute()
    return ColmapResult(scene, registered, [s for s, _ in sizes], verified)
