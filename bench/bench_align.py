# SPDX-License-Identifier: GPL-3.0-or-later
"""Global alignment (engine.align) on synthetic pairs: speed, memory and accuracy, optionally against DUSt3R's.

For each N it writes a pairs file from known cameras (bench/synthetic_pairs.py: 1% noise, 5% outliers; complete
graph up to N = 20, logwin-4 above), then runs each aligner in a process of its own (so peak memory is that
run's) and reports wall and CPU time of the alignment, peak resident memory (and GPU memory on CUDA), median/max
rotation error and camera-centre error after a Sim(3) fit of the centres (centre errors as a fraction of the
camera ring's radius), and median/max focal error.

Settings come from the environment, since `python -m bench align` takes none:
    UNPOSED_BENCH_ALIGN_SIZES   image counts, each optionally with its own pointmap size, e.g. "8 20 200@512x384"
                                (default "8 20 50 100")
    UNPOSED_BENCH_ALIGN_RES     pointmap size where none is given (default "128x96")
    UNPOSED_BENCH_DEVICE        torch device (default cpu); UNPOSED_BENCH_THREADS torch CPU threads (default 1)
    UNPOSED_BENCH_WORK          folder for the pairs files (default: the temp folder)
    UNPOSED_DUST3R              a naver/dust3r checkout (the folder holding the `dust3r` package); when set, the
                                official aligner runs on the same pairs files: PointCloudOptimizer, MST init, 300
                                iterations, lr 0.01, cosine schedule. It is not part of this repository.
    UNPOSED_DUST3R_PATH         extra PYTHONPATH entries for DUSt3R's dependencies (roma, scipy)
    UNPOSED_DUST3R_REUSE        "1": keep DUSt3R's results from an earlier run on the same pairs files (it is slow)
    UNPOSED_DUST3R_MAX_N        largest N that DUSt3R runs for (default 100)
DUSt3R's time excludes reading the pairs file; ours includes reading it, fusing full-resolution depth maps and the
point cloud. The target at N = 20: at least 5x faster than DUSt3R (wall time) with errors no worse.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import ROOT, Report, Row

COMPLETE_MAX = 20  # larger N use GRAPH (a complete graph of 100 images is 9,900 pairs)
GRAPH = "logwin-4"
TARGET_N, TARGET_SPEEDUP = 20, 5.0


def _run_ours(pairs: Path, device: str, iterations: int):
    from engine.align.aligner import AlignOptions, align
    from engine.pairs_file import open_pairs

    with open_pairs(pairs) as pf:
        result = align(pf, AlignOptions(device=device, iterations=iterations))
    return result.cam_from_world, result.focal


def _run_dust3r(pairs: Path, device: str, iterations: int):
    import torch
    from dust3r.cloud_opt import GlobalAlignerMode, global_aligner  # the official code, outside this repository

    from engine.pairs_file import open_pairs

    with open_pairs(pairs) as pf:
        batch = pf.load(np.arange(pf.num_edges))
    output = {"view1": {"idx": batch.pairs[:, 0].tolist()}, "view2": {"idx": batch.pairs[:, 1].tolist()},
              "pred1": {"pts3d": torch.from_numpy(batch.pts3d_i), "conf": torch.from_numpy(batch.conf_i)},
              "pred2": {"pts3d_in_other_view": torch.from_numpy(batch.pts3d_j), "conf": torch.from_numpy(batch.conf_j)}}
    wall, cpu = time.perf_counter(), time.process_time()  # reading the file is not timed
    scene = global_aligner(output, device=device, mode=GlobalAlignerMode.PointCloudOptimizer, verbose=False)
    scene.compute_global_alignment(init="mst", niter=iterations, schedule="cosine", lr=0.01)
    with torch.no_grad():
        cam2world = scene.get_im_poses().detach().cpu().double().numpy()
        focals = scene.get_focals().detach().cpu().double().numpy().reshape(-1)
    return np.linalg.inv(cam2world), focals, time.perf_counter() - wall, time.process_time() - cpu


def _child(which: str, pairs: Path, out: Path, device: str, threads: int, iterations: int) -> None:
    """One aligner run in this process; writes cameras, times and peak memory to `out` (npz)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    if which == "ours":
        cams, focals = _run_ours(pairs, device, iterations)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    else:
        cams, focals, wall, cpu = _run_dust3r(pairs, device, iterations)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else -1.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.savez(out, cam_from_world=cams, focals=focals, wall=wall, cpu=cpu, peak_rss_mb=rss, peak_gpu_mb=gpu)


def errors(cam_from_world: np.ndarray, focals: np.ndarray, truth) -> dict[str, float]:
    """Median/max rotation (deg), centre (fraction of the ring radius) and focal (%) errors of all cameras."""
    from .synthetic_pairs import camera_errors

    rot, cen, foc, _ = camera_errors(truth, range(len(cam_from_world)), cam_from_world, focals)
    foc = foc * 100
    return {"rot_med": float(np.median(rot)), "rot_max": float(np.max(rot)), "centre_med": float(np.median(cen)),
            "centre_max": float(np.max(cen)), "focal_med": float(np.median(foc)), "focal_max": float(np.max(foc))}


def run() -> Report:
    from .synthetic_pairs import make_scene, write_synthetic_pairs

    res = os.environ.get("UNPOSED_BENCH_ALIGN_RES", "128x96")
    cases = [(int(n), *map(int, (size or res).split("x"))) for n, _, size in
             (entry.partition("@") for entry in os.environ.get("UNPOSED_BENCH_ALIGN_SIZES", "8 20 50 100").split())]
    device = os.environ.get("UNPOSED_BENCH_DEVICE", "cpu")
    threads = int(os.environ.get("UNPOSED_BENCH_THREADS", "1"))
    work = Path(os.environ.get("UNPOSED_BENCH_WORK") or tempfile.gettempdir()) / "unposed_bench_align"
    dust3r = os.environ.get("UNPOSED_DUST3R")
    reuse = os.environ.get("UNPOSED_DUST3R_REUSE") == "1"
    dust3r_max_n = int(os.environ.get("UNPOSED_DUST3R_MAX_N", "100"))
    work.mkdir(parents=True, exist_ok=True)
    aligners = [("ours", [])] + ([("dust3r", [dust3r, *filter(None, os.environ.get("UNPOSED_DUST3R_PATH", "")
                                                                 .split(os.pathsep))])] if dust3r else [])
    report = Report("global alignment of synthetic pairs with 1% noise and 5% outliers")
    table = ["| aligner | N | size | graph (pairs) | wall s | CPU s | peak RSS MB | peak GPU MB | "
             "rotation med / max deg | centre med / max | focal med / max % |",
             "|---|---:|---|---|---:|---:|---:|---:|---|---|---|"]
    for n, width, height in cases:
        mode = "complete" if n <= COMPLETE_MAX else GRAPH
        truth = make_scene(n, width, height, seed=0)
        pairs = work / f"pairs_{n}_{width}x{height}_{mode}.npz"
        if not pairs.exists():
            write_synthetic_pairs(pairs, truth, mode, seed=0)
        num_pairs = len(np.load(pairs)["pairs"])
        results = {}
        for which, path in aligners:
            if which == "dust3r" and n > dust3r_max_n:
                continue
            out = work / f"result_{which}_{n}_{width}x{height}_{device}_{threads}.npz"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
            cmd = [sys.executable, "-m", "bench.bench_align", "--child", which, str(pairs), str(out), device,
                   str(threads), "300"]
            fresh = out.exists() and out.stat().st_mtime > pairs.stat().st_mtime
            if not (which == "dust3r" and reuse and fresh):
                proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
                if proc.returncode != 0:
                    report.notes.append(f"{which} at N={n} failed: `{proc.stderr.strip().splitlines()[-1]}`")
                    continue
            with np.load(out) as res:
                res = dict(res)
            results[which] = res
            err = errors(res["cam_from_world"], res["focals"], truth)
            gpu = f"{res['peak_gpu_mb']:.0f}" if res["peak_gpu_mb"] >= 0 else "-"
            table.append(f"| {which} | {n} | {width}x{height} | {mode} ({num_pairs}) | {res['wall']:.1f} | "
                         f"{res['cpu']:.1f} | {res['peak_rss_mb']:.0f} | {gpu} | "
                         f"{err['rot_med']:.3f} / {err['rot_max']:.3f} | {err['centre_med']:.4f} / "
                         f"{err['centre_max']:.4f} | {err['focal_med']:.3f} / {err['focal_max']:.3f} |")
        for which, res in results.items():
            target = None
            if which == "ours" and n == TARGET_N and "dust3r" in results:
                target = float(results["dust3r"]["wall"]) / TARGET_SPEEDUP
            report.rows.append(Row(f"{which}: N={n}, {width}x{height}, {mode} graph ({num_pairs} pairs)",
                                   float(res["wall"]), target))
    report.notes += ["", *table, "",
                     f"Device {device}, {threads} torch thread(s) per run; the target is DUSt3R's wall time / "
                     f"{TARGET_SPEEDUP:g} at N = {TARGET_N}. DUSt3R's time excludes reading the pairs file; ours "
                     f"includes it and the full-resolution depth maps and point cloud."]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one aligner run (used by run())")
    parser.add_argument("--child", nargs=6, metavar=("WHICH", "PAIRS", "OUT", "DEVICE", "THREADS", "ITERATIONS"),
                        required=True)
    which, pairs, out, device, threads, iterations = parser.parse_args(argv).child
    _child(which, Path(pairs), Path(out), device, int(threads), int(iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
