# SPDX-License-Identifier: GPL-3.0-or-later
"""The weights-free backend (engine.reconstruct, COLMAP) on generated scenes, next to plain pycolmap defaults.

`python -m bench colmap`. For each scene: photos registered, rotation error (median / max, degrees), camera
centre error (max, relative to the camera ring's radius) and focal error (max, %) after the Sim(3) that best
fits the true cameras (engine.reconstruct.compare), and wall time. "defaults" is pycolmap's extract_features,
match_exhaustive and incremental_mapping with every option at its default. Renders are cached under out/.

Scenes: scenegen's "textured" (every surface a multi-octave noise texture, which SIFT finds plenty of features
in), "object" and "room" (checkerboards, stripes and flat walls: repetitive or featureless, hard for SIFT). Cameras stand on an arc of
the scene's ring looking at its middle.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import ROOT, Report, Row

CACHE = ROOT / "out" / "bench_colmap"
# name, (kind, views, width, height, arc degrees, seed)
SCENES = {
    "textured 320x240, 120 deg, seed 0": ("textured", 8, 320, 240, 120.0, 0),
    "textured 320x240, 120 deg, seed 1": ("textured", 8, 320, 240, 120.0, 1),
    "textured 320x240, 120 deg, seed 2": ("textured", 8, 320, 240, 120.0, 2),
    "textured 640x480, 180 deg, 16 views": ("textured", 16, 640, 480, 180.0, 3),
    "scenegen object 640x480, 120 deg": ("object", 8, 640, 480, 120.0, 0),
    "scenegen room 320x240, 360 deg": ("room", 8, 320, 240, 360.0, 0),
}

def scene_truth(name: str) -> Path:
    """The cached ground-truth bundle of SCENES[name], rendered on first use."""
    kind, views, width, height, arc, seed = SCENES[name]
    folder = CACHE / f"{kind}_{views}v_{width}x{height}_arc{arc:g}_seed{seed}"
    if not (folder / "scene.json").is_file():
        render_truth(folder, kind, n_views=views, width=width, height=height, seed=seed, arc_deg=arc)
    return folder

def render_truth(out_dir: Path, kind: str = "textured", *, n_views: int = 8, width: int = 320, height: int = 240,
                 seed: int = 0, arc_deg: float = 120.0) -> Path:
    """Render a scenegen scene from cameras on an arc and write its ground-truth bundle (needs bpy)."""
    from scenegen.addon import package

    package()
    import bpy
    from scenegen import generate

    bpy.ops.wm.read_homefile(use_empty=True)
    return generate(out_dir, kind=kind, n_views=n_views, width=width, height=height, seed=seed, arc_deg=arc_deg,
                    samples=8, n_points=1000)

def run_ours(images: Path, out: Path):
    from engine.bundle import read_bundle
    from engine.errors import EngineError
    from engine.reconstruct.pipeline import Input, ReconstructOptions, reconstruct

    try:
        reconstruct(Input(images=[images]), out, ReconstructOptions(backend="colmap"))
    except EngineError as exc:
        return None, str(exc)
    return read_bundle(out), ""

def run_defaults(images: Path, work: Path):
    """pycolmap with every option at its default; the largest model as a Scene (None when there is none)."""
    import pycolmap

    from engine.interop.colmap import read_model

    pycolmap.logging.minloglevel = 2
    work.mkdir(parents=True)
    database = work / "database.db"
    pycolmap.extract_features(database, images)
    pycolmap.match_exhaustive(database)
    models = pycolmap.incremental_mapping(database, images, work / "sparse")
    if not models:
        return None, "no model"
    best = max(models, key=lambda k: models[k].num_reg_images())
    return read_model(work / "sparse" / str(best), images), ""

def _row(label: str, estimate, note: str, truth, seconds: float) -> str:
    from engine.reconstruct.compare import compare

    n = len(truth.images)
    if estimate is None:
        return f"| {label} | 0 / {n} | | | | | {seconds:.1f} | {note[:80]} |"
    e = compare(estimate, truth).summary()
    return (f"| {label} | {e['registered']} / {n} | {e['rotation_median_deg']:.2f} | {e['rotation_max_deg']:.2f} "
            f"| {e['centre_max_relative'] * 100:.2f} | {e['focal_max'] * 100:.2f} | {seconds:.1f} | {note[:80]} |")

def run() -> Report:
    from engine.bundle import read_bundle

    report = Report("weights-free reconstruction (COLMAP backend) on generated scenes, vs pycolmap defaults")
    table = ["| scene, method | registered | rot. median (deg) | rot. max (deg) | centre max (% radius) "
             "| focal max (%) | seconds | note |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in SCENES:
        truth_dir = scene_truth(name)
        truth = read_bundle(truth_dir)
        for method, fn in (("ours", run_ours), ("defaults", run_defaults)):
            with tempfile.TemporaryDirectory(prefix="bench-colmap-") as tmp:
                start = time.perf_counter()
                estimate, note = fn(truth_dir / "images", Path(tmp) / "out")
                seconds = time.perf_counter() - start
                table.append(_row(f"{name}, {method}", estimate, note, truth, seconds))
            report.rows.append(Row(f"{name}, {method}", seconds))
            print(table[-1], flush=True)
    report.notes = table + ["", "Errors after the Sim(3) fitted to the true camera centres and axes "
                                "(engine.reconstruct.compare); registered photos only. One run each (seconds: "
                                "wall time of that run, renders excluded); COLMAP's multi-threaded RANSAC makes "
                                "runs differ a little. Cameras: PINHOLE truth, SIMPLE_RADIAL "
                                "estimated. Where ours differs from the defaults: SIFT peak threshold 0.003 "
                                "(0.0067), initial pair with 50 inliers (100) and 8 degrees (16), 20 inliers to "
                                "register a photo (30); see engine/reconstruct/colmap_backend.py."]
    return report
