"""`python -m engine train BUNDLE [--iters N] [--calibrate focal,pp,pose,distortion] [--lens keep|pinhole|radial|
opencv|fisheye|field|auto] [--tracks auto|on|off] [--no-track-gaussians] [--cubemap auto|always|never]
[--device auto|cpu|cuda] [--out BUNDLE]`

Trains Gaussian splats on a bundle's photos while refining its cameras (engine.splats.train), then writes the bundle
(in place, or to --out) atomically with the trained cameras and poses, `splats.ply` (standard 3DGS layout; top-level
key `splats`) and the training curves (`training/curves.json`, `training/curves.csv`; key `training` also holds the
final metrics). A checkpoint beside the output (`<out>.train.pt`) is saved during training and kept when training
fails or is cancelled, so `--resume` can continue; it is removed after success unless --keep-checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..progress import Progress

SPLATS_FILE = "splats.ply"
CURVES_JSON = "training/curves.json"
CURVES_CSV = "training/curves.csv"


def _calibrate(text: str) -> tuple[str, ...]:
    from ..splats.cameras import CALIBRATABLE

    if text.strip().lower() in ("", "none"):
        return ()
    items = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in items if s not in CALIBRATABLE]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(CALIBRATABLE)} or none")
    return items


def _colour(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected R,G,B in [0, 1], got {text!r}")
    return values  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="scene bundle with photos, cameras and poses (points optional)")
    parser.add_argument("--out", type=Path, default=None, help="bundle to write (default: update BUNDLE in place)")
    parser.add_argument("--iters", type=int, default=7000, help="training steps (default 7000)")
    parser.add_argument("--calibrate", type=_calibrate, default=("focal", "pp", "pose", "distortion"),
                        help="camera quantities to refine: comma-separated focal,pp,pose,distortion, or none "
                             "(default: all)")
    parser.add_argument("--lens", choices=("keep", "pinhole", "radial", "opencv", "fisheye", "field", "auto"),
                        default="keep",
                        help="camera model to train with: keep the bundle's, or convert to pinhole, radial "
                             "(RADIAL/OPENCV), opencv, fisheye (OPENCV_FISHEYE) or field (LENS_FIELD, a learned "
                             "lens); auto: field for fisheye and wide lenses, else keep (default keep)")
    parser.add_argument("--cubemap", choices=("auto", "always", "never"), default="auto",
                        help="render through a cubemap (auto: lenses one perspective view cannot cover well)")
    parser.add_argument("--tracks", choices=("auto", "on", "off"), default="auto",
                        help="feature tracks constraining calibration: a bundle adjustment before training and a "
                             "fading reprojection loss during it (auto: when calibrating and tracks are found)")
    parser.add_argument("--intrinsics-after-tracks", type=float, default=0.0, metavar="FACTOR",
                        help="factor on the focal, principal point and distortion learning rates after a track "
                             "bundle adjustment that fits (default 0: keep the adjustment's intrinsics, refine "
                             "poses only; 1: refine them photometrically at full rate)")
    parser.add_argument("--rotations-after-tracks", type=float, default=0.0, metavar="FACTOR",
                        help="factor on the orientations' learning rate after a track bundle adjustment that fits "
                             "(default 0: keep the adjustment's orientations, refine camera centres only; 1: full "
                             "rate)")
    parser.add_argument("--track-gaussians", action=argparse.BooleanOptionalAction, default=True,
                        help="with tracks, one small splat on each track point, kept small by a scale loss "
                             "(default on)")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument("--shared-intrinsics", action="store_true",
                        help="one focal, principal point and distortion for all cameras (same model and size)")
    parser.add_argument("--sh-degree", type=int, choices=(0, 1, 2, 3), default=3, help="SH degree (default 3)")
    parser.add_argument("--batch-size", type=int, default=1, help="views per step (default 1)")
    parser.add_argument("--test-every", type=int, default=8,
                        help="hold out every n-th image for evaluation; 0 trains on all (default 8)")
    parser.add_argument("--eval-every", type=int, default=1000, help="evaluate every n steps (default 1000)")
    parser.add_argument("--eval-pose-steps", type=int, default=100,
                        help="pose refinement steps per held-out view before it is scored (default 100)")
    parser.add_argument("--max-gaussians", type=int, default=3_000_000, help="densification cap (default 3M)")
    parser.add_argument("--random-init", type=int, default=20000,
                        help="splats placed in the cameras' frusta when the bundle has no points (default 20000)")
    parser.add_argument("--background", type=_colour, default=(0.0, 0.0, 0.0),
                        help="background colour R,G,B in [0, 1] (default 0,0,0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--downscale", type=int, default=0,
                        help="train on photos this many times smaller (default 0: automatic, photos wider than 1600 "
                             "px shrink to 1600 or less; feature tracks always use the full size)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (default <out>.train.pt)")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="save a checkpoint every n steps")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint when there is one")
    parser.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint after success")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the command line asks for."""
    import torch

    from ..errors import EngineError
    from ..splats.densify import DensifyConfig
    from ..splats.train import TrainConfig

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ("iters", "batch_size"):
        if getattr(args, name) < 1:
            raise EngineError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return TrainConfig(iterations=args.iters, calibrate=args.calibrate, lens=args.lens,
                       shared_intrinsics=args.shared_intrinsics, device=device, sh_degree=args.sh_degree,
                       batch_size=args.batch_size, test_every=args.test_every, eval_every=args.eval_every,
                       eval_pose_steps=args.eval_pose_steps, random_init=args.random_init,
                       background=args.background, downscale=args.downscale, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, tracks=args.tracks,
                       track_gaussians=args.track_gaussians, cubemap=args.cubemap,
                       lr_intrinsics_after_tracks=args.intrinsics_after_tracks,
                       lr_rotations_after_tracks=args.rotations_after_tracks,
                       calib_start=args.iters // 10, calib_ramp=max(1, args.iters // 20),
                       densify=DensifyConfig(max_gaussians=args.max_gaussians))


def _curves_csv(curves: dict[str, list[dict[str, float]]]) -> str:
    """One row per logged step: the training columns, with the evaluation columns on evaluation steps."""
    rows: dict[int, dict[str, float]] = {}
    for row in curves["train"]:
        rows.setdefault(int(row["step"]), {}).update(row)
    for row in curves["eval"]:
        rows.setdefault(int(row["step"]), {}).update({("eval_" + k if k in ("gaussians",) else k): v
                                                      for k, v in row.items()})
    columns = ["step"] + sorted({k for r in rows.values() for k in r} - {"step"})
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue()


def _carried_files(source: Path, skip: set[Path]) -> dict[str, Path]:
    """Files of the source bundle folder that the new bundle must keep (depth maps etc.), by relative name."""
    out = {}
    for root, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = (Path(root) / name).resolve()
            if not name.startswith(".") and path not in skip:
                out[path.relative_to(source).as_posix()] = path
    return out


def write_outputs(scene, source: Path, out: Path, result) -> Path:
    """The input `scene` with the trained cameras, poses, splats and curves, written atomically as a bundle."""
    from ..bundle import POINTS_FILE, SCENE_FILE, write_bundle
    from ..lens_field import save_network
    from ..splats.ply import write_splats

    for image in scene.images:
        image.cam_from_world = result.poses[image.id]
    scene.cameras = {cid: result.cameras[cid] for cid in scene.cameras}
    scene.extras["splats"] = SPLATS_FILE
    scene.extras["training"] = {"curves": CURVES_JSON, "curves_csv": CURVES_CSV, "metrics": result.metrics,
                                "notes": result.notes}
    source = source.resolve()
    skip = {source / SCENE_FILE, source / POINTS_FILE, source / SPLATS_FILE, source / CURVES_JSON, source / CURVES_CSV}
    skip |= {Path(im.path).resolve() for im in scene.images if im.path is not None}
    extra = _carried_files(source, skip) if source.is_dir() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".train-out", dir=out.parent) as tmp:
        tmp = Path(tmp)
        write_splats(tmp / "splats.ply", result.splats)
        for cid, field in result.lens_fields.items():  # write_bundle copies them into the bundle's lens/ folder
            scene.cameras[cid].lens_network = save_network(tmp / f"camera_{cid}.npz", field)
        (tmp / "curves.json").write_text(json.dumps(result.curves, indent=1), encoding="utf-8")
        (tmp / "curves.csv").write_text(_curves_csv(result.curves), encoding="utf-8")
        extra.update({SPLATS_FILE: tmp / "splats.ply", CURVES_JSON: tmp / "curves.json",
                      CURVES_CSV: tmp / "curves.csv"})
        return write_bundle(scene, out, extra_files=extra)


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    import torch

    from ..bundle import read_bundle
    from ..splats.train import train

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    source = args.bundle.parent if args.bundle.name == "scene.json" else args.bundle
    scene = read_bundle(source)
    out = (args.out or source).absolute()
    checkpoint = (args.checkpoint or Path(f"{out}.train.pt")).absolute()
    result = train(scene, config, progress, checkpoint=checkpoint, resume=args.resume)
    bundle = write_outputs(scene, source, out, result)
    if not args.keep_checkpoint:
        checkpoint.unlink(missing_ok=True)
    return {"bundle": str(bundle), "splats": str(bundle / SPLATS_FILE), "curves": str(bundle / CURVES_JSON),
            "metrics": result.metrics, "notes": result.notes,
            "cameras": [{"id": c.id, "model": c.model, "params": c.params} for c in result.cameras.values()],
            "checkpoint": str(checkpoint) if args.keep_checkpoint else None}
