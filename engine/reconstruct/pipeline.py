# SPDX-License-Identifier: GPL-3.0-or-later
"""Photos or a video to a scene bundle: input, backend choice, pair graph, reconstruction, bundle.

Backends: "pointmap" (pairwise pointmaps from the DUSt3R-compatible network, then the global aligner: dense
points, needs weights) and "colmap" (SIFT + incremental mapping: sparse points, no weights). "auto" takes the
pointmap backend when its weights are on this machine and COLMAP otherwise.

Pair graph: "complete" (every pair) for small photo sets; "sequential" (each image with its 10 successors and
with those 2, 4, 8, ... places on, like COLMAP's sequential matching with quadratic overlap) for video frames
and large sets, where every pair would cost too much; or any engine.align.graph mode.

The bundle is written atomically; photos that needed an upright copy and decoded video frames are stored in it
(`photos/`), all other photos are referenced where they are. Nothing is left at the output path on failure.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..align.graph import make_pairs
from ..atomic import atomic_dir
from ..bundle import SCENE_FILE, write_bundle
from ..errors import EngineError
from ..interop import check_replaceable, provenance
from ..progress import Progress
from . import colmap_backend, pointmap_backend
from .colmap_backend import ColmapOptions
from .images import Photo, extract_frames, find_photos, make_upright

BACKENDS = ("auto", "colmap", "pointmap")
DEFAULT_WEIGHTS = "DUSt3R_ViTLarge_BaseDecoder_512_dpt"  # looked for in the Hugging Face cache by "auto"
COMPLETE_MAX = {"colmap": 100, "pointmap": 24}  # largest photo set "auto" matches completely
SEQUENTIAL_WINDOW = 10
PHOTOS_DIR = "photos"


@dataclass
class ReconstructOptions:
    backend: str = "auto"
    weights: str | None = None  # pointmap weights (see engine.pointmap.checkpoint.find_weights)
    graph: str = "auto"  # auto, complete, sequential, or an engine.align.graph mode
    device: str = "auto"  # torch device for the pointmap backend
    iterations: int = 300  # global alignment steps of the pointmap backend
    colmap: ColmapOptions = field(default_factory=ColmapOptions)


@dataclass
class Input:
    """What to reconstruct: photo files and folders, or a video; every `step`-th image or frame."""
    images: Sequence[str | os.PathLike] = ()
    video: str | os.PathLike | None = None
    step: int = 1
    first_frame: int = 1  # video frames, 1-based, inclusive
    last_frame: int | None = None

    @property
    def source(self) -> str:
        return str(self.video if self.video is not None else self.images[0])


def choose_backend(backend: str, weights: str | None, progress: Progress) -> tuple[str, Path | None]:
    """(backend to use, weights for the pointmap backend) for the requested `backend`."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "colmap":
        return "colmap", None
    from ..pointmap.checkpoint import find_weights, resolve_weights

    if backend == "pointmap":
        return "pointmap", resolve_weights(weights or DEFAULT_WEIGHTS)  # says where it looked when not found
    found = find_weights(weights or DEFAULT_WEIGHTS)
    if found is not None:
        progress.log(f"pointmap weights found ({found}): using the pointmap backend")
        return "pointmap", found
    if weights:
        progress.log(f"pointmap weights {weights!r} not found: using the COLMAP backend", "warning")
    else:
        progress.log("no pointmap weights on this machine: using the COLMAP backend (sparse points)")
    return "colmap", None


def pair_graph(n: int, graph: str, backend: str, ordered: bool) -> list[tuple[int, int]]:
    """Unordered image pairs (i < j) to match. `ordered`: the images are a sequence (video frames)."""
    if graph == "auto":
        graph = "sequential" if ordered or n > COMPLETE_MAX[backend] else "complete"
    if graph == "sequential":
        modes = [f"swin-{SEQUENTIAL_WINDOW}-noncyclic", f"logwin-{max(1, math.ceil(math.log2(n)))}-noncyclic"]
    else:
        modes = [graph]
    return sorted({(i, j) for mode in modes for i, j in make_pairs(n, mode) if i < j})


def _read_input(source: Input, photos_dir: Path, progress: Progress) -> tuple[list[Photo], bool]:
    if source.video is not None:
        if source.images:
            raise EngineError("give either images or a video, not both")
        return extract_frames(source.video, photos_dir, progress, source.step, source.first_frame,
                              source.last_frame), True
    if not source.images:
        raise EngineError("no images given")
    photos = find_photos(source.images, progress, source.step)
    return make_upright(photos, photos_dir, progress), False


def _record(source: Input, backend: str, photos: list[Photo]) -> dict[str, Any]:
    return provenance("reconstruct", source.source, backend=backend, images=len(photos))


def _colmap(photos: list[Photo], pairs: list[tuple[int, int]], stage: Path, work: Path, options: ColmapOptions,
            record: dict[str, Any], progress: Progress) -> dict[str, Any]:
    result = colmap_backend.reconstruct(photos, pairs, work, options, progress)
    scene = result.scene
    scene.provenance = {**record, "registered": result.registered, "models": result.models,
                        "verified_pairs": result.verified_pairs}
    progress.stage("write bundle")
    write_bundle(scene, stage)
    return {"images": len(scene.images), "cameras": len(scene.cameras),
            "points": 0 if scene.points is None else len(scene.points)}


@contextlib.contextmanager
def _work_dir(patience_s: float = 10.0) -> Iterator[str]:
    """A temporary work folder, removed afterwards. After a cancel COLMAP's reader threads can still write into it
    for a moment, so removal is retried for up to `patience_s` seconds."""
    tmp = tempfile.mkdtemp(prefix="unposed-reconstruct-")
    try:
        yield tmp
    finally:
        deadline = time.monotonic() + patience_s
        while True:
            try:
                shutil.rmtree(tmp)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)


def reconstruct(source: Input, out: str | os.PathLike, options: ReconstructOptions | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
    """Reconstruct `source` into a scene bundle at `out` (replaced only if it is a bundle); a summary dict.

    With backend "auto", photos the pointmap network cannot take together (different aspect ratios) go to COLMAP.
    """
    options = options or ReconstructOptions()
    progress = progress or Progress("none")
    out = Path(out).absolute()
    check_replaceable(out, SCENE_FILE, "a scene bundle")
    if options.graph not in ("auto", "sequential"):
        make_pairs(2, options.graph)  # an unknown mode fails here, before any work
    options.colmap.check()
    if options.iterations < 1:
        raise EngineError(f"iterations must be at least 1, got {options.iterations}")
    backend, weights = choose_backend(options.backend, options.weights, progress)
    with atomic_dir(out) as stage, _work_dir() as tmp:
        photos, ordered = _read_input(source, stage / PHOTOS_DIR, progress)
        summary = None
        if backend == "pointmap":
            pairs = pair_graph(len(photos), options.graph, backend, ordered)
            progress.log(f"{len(photos)} images, {len(pairs)} pairs, pointmap backend")
            try:
                summary = pointmap_backend.reconstruct(photos, pairs, weights, stage, Path(tmp), options.device,
                                                       options.iterations, _record(source, backend, photos),
                                                       progress)
            except pointmap_backend.InputSizeError as exc:
                if options.backend != "auto":
                    raise
                progress.log(f"{exc}: using the COLMAP backend instead", "warning")
        if summary is None:
            backend = "colmap"
            pairs = pair_graph(len(photos), options.graph, backend, ordered)
            progress.log(f"{len(photos)} images, {len(pairs)} pairs to match, COLMAP backend")
            summary = _colmap(photos, pairs, stage, Path(tmp), options.colmap, _record(source, backend, photos),
                              progress)
    return {"bundle": str(out), "backend": backend, "photos": len(photos), "pairs": len(pairs), **summary}
