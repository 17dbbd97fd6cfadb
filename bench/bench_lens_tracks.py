# SPDX-License-Identifier: GPL-3.0-or-later
"""Wide lenses from a hard start (`python -m bench lens_tracks`): the learned lens calibrated from focal +20 % and
rotations 2 deg off, with and without the feature tracks, the track Gaussians and their scale loss (issue #7).

The textured 180 deg equidistant room of bench_lens (1536x1536 photos trained at 96x96, same training settings,
`bench_lens._training_config`). Runs, two single-threaded at a time: the true lens and poses without calibration
(the PSNR reference); then from an equidistant OPENCV_FISHEYE guess with focal +20 % and every view turned 2 deg
about a random axis through its centre, `--lens field` calibrating focal, pp, distortion and poses: with tracks
and track Gaussians (the default), with tracks but no track Gaussians (so no scale loss either), with the track
Gaussians but no scale loss (`scale_weight` 0), and photometric only (`--tracks off`). Reported: the lens error
(`bench_lens.lens_angular_error_deg`, median / p99 / max, inf where the trained lens has no ray), the orientation
error after the best common rotation (mean / max over the views), held-out PSNR, and the track adjustment.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from . import Report, Row
from .bench_lens import (TRAIN_SIZE, _train_steps, _training_config, _training_lenses, _training_scenes,
                         lens_angular_error_deg)

FOCAL = 1.2  # the start's focal factor
ROTATION_DEG = 2.0  # and its orientation error
LENS = "equidistant_180"


def _angles(err: np.ndarray) -> str:
    """median / p99 / max of lens errors (inf: a pixel without a ray), and the share of such pixels."""
    lost = 100 * float(np.isinf(err).mean())
    return (f"{np.median(err):.3f} / {np.percentile(err, 99, method='higher'):.3f} / {err.max():.3f}"
            + (f" ({lost:.1f} % of the pixels without a ray)" if lost else ""))


def _run(args):
    """One run in a worker process (one torch thread): (name, bundle, true camera, config, hard start?) ->
    (name, results, seconds)."""
    import torch

    from engine.bundle import read_bundle
    from engine.splats.train import Trainer

    from .bench_splats import camera_errors, perturb

    name, bundle, true, config, hard = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    truth = read_bundle(bundle)
    scene = perturb(truth, focal=FOCAL, rotation_deg=ROTATION_DEG, model="OPENCV_FISHEYE", seed=1) if hard else truth
    trainer = Trainer(scene, config)
    _train_steps(trainer)
    row = trainer.evaluate()
    result = trainer.result()
    cam = result.cameras[true.id]
    out = {"angles": lens_angular_error_deg(true, cam.model, cam.params, n=TRAIN_SIZE),
           "rotation": camera_errors(result.cameras, result.poses, truth) if hard else None,
           "test_psnr": row["test_psnr"], "tracks": trainer.track_report}
    return name, out, time.perf_counter() - t0


def run() -> Report:
    from concurrent.futures import ProcessPoolExecutor

    from engine.bundle import read_bundle

    from .bench_splats import camera_errors, perturb

    report = Report("wide lenses from focal +20 % and rotations 2 deg: the learned lens with and without tracks, "
                    "track Gaussians and scale loss (CPU)")
    key, description, true = next(lens for lens in _training_lenses() if lens[0] == LENS)
    bundle, _ = _training_scenes(key, true)
    truth = read_bundle(bundle)
    start = perturb(truth, focal=FOCAL, rotation_deg=ROTATION_DEG, model="OPENCV_FISHEYE", seed=1)
    guess = start.cameras[true.id]
    err = lens_angular_error_deg(true, guess.model, guess.params, n=TRAIN_SIZE)
    rot = camera_errors(start.cameras, {im.id: im.cam_from_world for im in start.images}, truth)
    lines = [f"| the start | {_angles(err)} | "
             f"{rot['rot_aligned_mean']:.3f} / {rot['rot_aligned_max']:.3f} | | |"]
    field = _training_config("field")
    runs = [("true lens and poses, not calibrated (reference)", dataclasses.replace(field, calibrate=()), False),
            ("tracks and track Gaussians (default)", field, True),
            ("tracks, no track Gaussians (`--no-track-gaussians`: no scale loss either)",
             dataclasses.replace(field, track_gaussians=False), True),
            ("tracks and track Gaussians, no scale loss (`scale_weight` 0)",
             dataclasses.replace(field, scale_weight=0.0), True),
            ("photometric only (`--tracks off`)", dataclasses.replace(field, tracks="off"), True)]
    with ProcessPoolExecutor(2) as pool:  # two single-threaded runs at a time
        for name, out, seconds in pool.map(_run, [(name, bundle, true, config, hard)
                                                  for name, config, hard in runs]):
            report.rows.append(Row(f"{field.iterations} CPU steps (one thread) + scoring, {name}", seconds))
            a, r, ba = out["angles"], out["rotation"], out["tracks"]
            lens = "-" if r is None else _angles(a)
            lines.append(f"| {name} | {lens} | "
                         + ("-" if r is None else f"{r['rot_aligned_mean']:.3f} / {r['rot_aligned_max']:.3f}")
                         + f" | {out['test_psnr']:.2f} | "
                         + (f"{ba['tracks']} / {ba['rms_before_px']:.2f} -> {ba['rms_after_px']:.2f}" if ba
                            else "-") + " |")
    report.notes += [
        f"{key}: {description}; the textured room of bench_lens, photos {true.width}x{true.height} trained at "
        f"{TRAIN_SIZE}x{TRAIN_SIZE}, {field.iterations} steps, `--lens field` with the cubemap, calibrating focal, "
        f"pp, distortion and poses. Start: equidistant OPENCV_FISHEYE with focal +{100 * (FOCAL - 1):.0f} %, every "
        f"view turned {ROTATION_DEG:g} deg. Lens error: degrees between the trained and true lens's rays at the "
        f"centre of every training pixel after the best common rotation (inf: no ray). Orientation error: degrees, "
        f"after the best common rotation of all views. Held-out PSNR after test-pose refinement. Track adjustment "
        f"RMS in training pixels.", "",
        "| run | lens error deg median / p99 / max | orientation error deg mean / max | held-out PSNR | "
        "tracks / BA RMS px |", "|---|---|---|---:|---|", *lines, ""]
    return report
