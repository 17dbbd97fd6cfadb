"""`python -m engine [--progress tty|jsonl|none] <command> ...`

Each command lives in its own module under engine/commands/ with `add_arguments(parser)` and
`run(args, progress) -> dict`; modules are imported only when their command runs, so `--help` and light
commands never import torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import CancelledError, EngineError
from .progress import Progress

# command name -> (module under engine.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "import": ("import_cmd", "convert a COLMAP model or nerfstudio transforms.json into a scene bundle"),
    "export": ("export_cmd", "write a scene bundle as a COLMAP model or a nerfstudio transforms.json"),
    "align": ("align_cmd", "globally align pairwise pointmaps (pairs.npz) into cameras, depth maps and points"),
    "pairs": ("pairs_cmd", "predict DUSt3R/MASt3R pointmaps for an image pair graph into pairs.npz"),
    "reconstruct": ("reconstruct_cmd", "cameras and points from unposed photos or a video (COLMAP or pointmaps)"),
    "calibrate": ("calibrate_cmd", "calibrate cameras from single photos (EXIF, vanishing points, DM-Calib)"),
    "train": ("train_cmd", "train Gaussian splats while refining focal, principal point, poses and distortion"),
    "project": ("project_cmd", "project camera-frame rays (.npy) to pixels through a bundle camera's lens"),
    "unproject": ("unproject_cmd", "unit camera-frame rays (.npy) through pixels of a bundle camera, any lens"),
    "undistort": ("undistort_cmd", "rewrite a bundle as PINHOLE cameras with photos resampled through the lens"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Unposed engine")
    parser.add_argument("--progress", choices=("tty", "jsonl", "none"), default="tty",
                        help="progress output: bars on stderr (tty), JSON lines on stdout (jsonl), or none")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are declared by the command module; importing it here must stay cheap.
        importlib.import_module(f".commands.{module}", __package__).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = Progress(args.progress)
    module = importlib.import_module(f".commands.{args._module}", __package__)
    try:
        result = module.run(args, progress)
    except KeyboardInterrupt:
        progress.error("cancelled", "cancelled by the user")
        return 130
    except CancelledError as exc:
        progress.error("cancelled", str(exc))
        return 130
    except EngineError as exc:
        progress.error(type(exc).__name__, str(exc))
        return 2
    progress.result(result or {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
