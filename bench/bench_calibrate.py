# SPDX-License-Identifier: GPL-3.0-or-later
"""Single-image calibration accuracy and speed on generated Manhattan rooms (`python -m bench calibrate`).

`manhattan_cases` renders views of scenegen rooms with known cameras: horizontal field of view uniform in
25-100 degrees, pitch uniform in [-20, 10] degrees, roll in [-12, 12], every fourth view portrait, the camera
standing in the outer part of the room (70-100 % of scenegen's camera ring) and looking towards its middle +-30
degrees. Renders are cached under out/ (keyed by
their settings), so only the first run pays for Cycles.

Accuracy per method (median / 90th percentile of the hFoV error in degrees and of the focal's relative error):
`vp`; `auto` without DM-Calib weights; `exif` from 35 mm-equivalent tags rounded to whole millimetres as cameras
write them; `prior`, the fixed field of view `auto` falls back to (a baseline). DM-Calib needs its weights (see
bench_dmcalib). Speed: `vp` seconds per megapixel on one CPU core.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ROOT, Report, Row

CACHE = ROOT / "out" / "bench_calibrate"
N_CASES = 60
SIZE = (640, 480)
SAMPLES = 16
FOV_RANGE = (25.0, 100.0)
PITCH_RANGE = (-20.0, 10.0)
ROLL_MAX = 12.0
YAW_SPREAD = 30.0
RING_RANGE = (0.7, 1.0)
VERSION = 2  # of the case distribution: part of the cache key


@dataclass
class Case:
    path: Path
    params: list[float]  # PINHOLE fx, fy, cx, cy
    width: int
    height: int
    hfov_deg: float
    cam_from_world: np.ndarray  # (4, 4), world +Z up

    @property
    def focal(self) -> float:
        return self.params[0]


def _load(meta: Path) -> Case:
    doc = json.loads(meta.read_text())
    return Case(meta.with_suffix(".png"), doc["params"], doc["width"], doc["height"], doc["hfov_deg"],
                np.array(doc["cam_from_world"]))


def manhattan_cases(out_dir: str | Path, n: int, *, width: int = SIZE[0], height: int = SIZE[1],
                    samples: int = SAMPLES, seed: int = 0) -> list[Case]:
    """`n` rendered room views with their true cameras (PNG + JSON per case in `out_dir`, reused when present
    with the same settings). Needs bpy (Blender as a module) for the cases not yet rendered."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        meta = out_dir / f"v{VERSION}_seed{seed}_{i:03d}_{width}x{height}_s{samples}.json"
        if not (meta.is_file() and meta.with_suffix(".png").is_file()):
            _render_case(meta, i, width, height, samples, seed)
        cases.append(_load(meta))
    return cases


def _render_case(meta: Path, i: int, width: int, height: int, samples: int, seed: int) -> None:
    from scenegen.addon import package

    package()  # the add-on must be enabled before scenegen's modules reach engine/bridge through it
    import bpy

    from engine.atomic import atomic_file
    from scenegen import View, build_scene, camera_objects, configure, intrinsics, look_at, render_view

    rng = np.random.default_rng([seed, i])
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    built = build_scene("room", seed * 1000 + i, scene)
    angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(*RING_RANGE)
    centre = built.target + [built.ring[0] * radius * np.cos(angle), built.ring[1] * radius * np.sin(angle), 0]
    centre[2] = rng.uniform(*built.heights)
    towards = built.target - centre
    yaw = math.atan2(towards[1], towards[0]) + math.radians(rng.uniform(-YAW_SPREAD, YAW_SPREAD))
    pitch, roll = math.radians(rng.uniform(*PITCH_RANGE)), rng.uniform(-ROLL_MAX, ROLL_MAX)
    direction = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    hfov = rng.uniform(*FOV_RANGE)
    w, h = (width, height) if i % 4 != 3 else (height, width)
    camera = intrinsics("PINHOLE", w, h, hfov_deg=hfov)
    view = View(meta.stem, camera, look_at(centre, centre + direction, roll))
    configure(scene, samples=samples, seed=i)
    (obj,) = camera_objects(scene, [view])
    with tempfile.TemporaryDirectory(dir=meta.parent) as tmp:
        png = Path(tmp) / "photo.png"
        render_view(scene, obj, view, png)
        os.replace(png, meta.with_suffix(".png"))
    with atomic_file(meta, "w") as f:
        json.dump({"params": list(camera.params), "width": w, "height": h, "hfov_deg": hfov,
                   "cam_from_world": view.cam_from_world.tolist()}, f)


def _errors(pairs: list[tuple[float, float, float]]) -> tuple[float, float, float, float]:
    """median and 90th percentile of |hFoV error| (degrees) and of |focal relative error| over
    (true hfov, estimated hfov, estimated/true focal) triples."""
    dh = np.abs([est - true for true, est, _ in pairs])
    df = np.abs([ratio - 1 for _, _, ratio in pairs])
    return float(np.median(dh)), float(np.percentile(dh, 90)), float(np.median(df)), float(np.percentile(df, 90))


def _exif_copy(case: Case, folder: Path) -> Path:
    """The case's photo as a JPEG with the 35 mm-equivalent focal rounded to whole millimetres, as cameras write it."""
    from PIL import Image

    f35 = round(case.focal * 43.27 / math.hypot(case.width, case.height))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = f35
    path = folder / f"{case.path.stem}.jpg"
    Image.open(case.path).convert("RGB").save(path, exif=exif.tobytes(), quality=95)
    return path


def _single_core():
    """Pin this process to one CPU (and OpenCV to one thread); returns a function undoing it."""
    import cv2

    cpus, threads = os.sched_getaffinity(0), cv2.getNumThreads()
    os.sched_setaffinity(0, {min(cpus)})
    cv2.setNumThreads(1)

    def undo() -> None:
        os.sched_setaffinity(0, cpus)
        cv2.setNumThreads(threads)
    return undo


def _cpu_seconds(fn, repeats: int = 3) -> float:
    """Median CPU time of `fn()` (process time: on a shared machine, waiting for the core does not count)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def run() -> Report:
    from engine.calibrate import auto, dmcalib
    from engine.calibrate.exif import calibrate_exif
    from engine.calibrate.result import CalibrationError
    from engine.calibrate.vanishing import calibrate_vp

    cases = manhattan_cases(CACHE, N_CASES)
    report = Report("single-image calibration on generated Manhattan rooms (engine.calibrate)")
    scores: dict[str, list[tuple[float, float, float]]] = {"vp": [], "vp, confidence >= 0.5": [], "auto": [],
                                                           "exif (rounded 35 mm tag)": [], "prior": []}
    failures, vp_seconds, worst = 0, [], []
    with tempfile.TemporaryDirectory(prefix="unposed-bench-calibrate-") as tmp:
        for case in cases:
            start = time.perf_counter()
            try:
                vp = calibrate_vp(case.path)
            except CalibrationError:
                failures += 1
                vp = None
            vp_seconds.append(time.perf_counter() - start)
            results = {"auto": auto.calibrate(case.path), "exif (rounded 35 mm tag)": calibrate_exif(
                _exif_copy(case, Path(tmp))), "prior": auto.prior(case.width, case.height, "")}
            if vp is not None:
                results["vp"] = vp
                if vp.confidence >= auto.VP_MIN:
                    results["vp, confidence >= 0.5"] = vp
                worst.append((abs(vp.hfov_deg - case.hfov_deg), vp.confidence, case.path.name))
            for name, result in results.items():
                scores[name].append((case.hfov_deg, result.hfov_deg, result.params[0] / case.focal))
    lines = ["| method | images | median hFoV error (deg) | p90 hFoV error | median focal error | p90 focal error |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, pairs in scores.items():
        med, p90, fmed, fp90 = _errors(pairs)
        lines.append(f"| {name} | {len(pairs)} | {med:.2f} | {p90:.2f} | {100 * fmed:.1f}% | {100 * fp90:.1f}% |")
    found = dmcalib.find_weights()
    lines.append(f"| dmcalib | 0 | not run: {'see bench_dmcalib' if found else 'no DM-Calib weights on this machine'} "
                 f"| | | |")
    vp_med, vp_p90, _, _ = _errors(scores["vp"])
    verdict = "met" if vp_med < 1.0 and vp_p90 < 3.0 else "NOT met"
    worst.sort(reverse=True)
    report.notes += [
        f"Accuracy on {len(cases)} rooms rendered by scenegen ({SIZE[0]}x{SIZE[1]}, every fourth portrait, "
        f"{SAMPLES} samples): hFoV uniform in {FOV_RANGE[0]:g}-{FOV_RANGE[1]:g} deg, pitch {PITCH_RANGE[0]:g} to "
        f"{PITCH_RANGE[1]:g} deg, roll +-{ROLL_MAX:g} deg. Errors are absolute; focal error is |f_est / f_true - 1|.",
        "", *lines, "",
        f"VP targets (median < 1 deg, p90 < 3 deg): {verdict}. VP refused {failures} image(s) (too few lines); "
        f"auto (no DM-Calib weights, no EXIF in these PNGs) used VP when its confidence was >= {auto.VP_MIN}, else "
        f"its uncertain estimate when >= {auto.VP_FALLBACK_MIN}, else the {auto.PRIOR_HFOV_DEG:g}-degree prior. "
        f"Worst VP cases (error deg, confidence): "
        + ", ".join(f"{n} ({e:.1f}, {c:.2f})" for e, c, n in worst[:5]) + ".",
        f"VP seconds per {SIZE[0]}x{SIZE[1]} image (wall clock, median): {statistics.median(vp_seconds):.3f}. "
        "Speed rows: CPU seconds (process time, pinned to one core, OpenCV single-threaded) per megapixel of the "
        "input, loading included; photos are measured on a copy downscaled to 1024 px.",
    ]
    (big,) = manhattan_cases(CACHE, 1, width=1280, height=960, seed=1)
    undo = _single_core()
    try:
        mp = big.width * big.height / 1e6
        report.rows.append(Row(f"vp per megapixel, {big.width}x{big.height} PNG ({mp:.2f} MP), one core",
                               _cpu_seconds(lambda: calibrate_vp(big.path)) / mp, 0.5))
        with tempfile.TemporaryDirectory(prefix="unposed-bench-calibrate-") as tmp:
            from PIL import Image

            photo = Path(tmp) / "12mp.jpg"
            Image.open(big.path).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(photo, quality=92)
            report.rows.append(Row("vp per megapixel, 4000x3000 JPEG (12 MP), one core",
                                   _cpu_seconds(lambda: calibrate_vp(photo)) / 12.0, 0.5))
    finally:
        undo()
    return report
