"""Validate and build the extension zip with Blender's own tool, as `blender --command extension validate|build`.

The tool (`bl_pkg/cli/blender_ext.py`) and Blender's list of valid tags ship inside the bpy wheel, so no Blender
install is needed. What goes into the zip is decided by the manifest's `[build] paths_exclude_pattern`.

    python -m devtools.extension validate [--source DIR]
    python -m devtools.extension build --out dist [--source DIR]     -> dist/<id>-<version>.zip
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


class ExtensionToolError(Exception):
    """Blender's extension tool refused the manifest or the build; the message is its output."""


def _bpy_dir() -> Path:
    spec = importlib.util.find_spec("bpy")  # locate the wheel without importing Blender
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionToolError("the bpy package (Blender as a Python module) is not installed in "
                                 f"{sys.executable}; run `make venv` first")
    return Path(spec.submodule_search_locations[0])


def _shipped(relative: str) -> Path:
    """A file Blender ships under bpy/<major.minor>/scripts/."""
    found = sorted(_bpy_dir().glob(f"*/scripts/{relative}"))
    if not found:
        raise ExtensionToolError(f"{relative} not found in the bpy package at {_bpy_dir()}")
    return found[-1]


def blender_ext() -> Path:
    """Blender's extension command-line tool."""
    return _shipped("addons_core/bl_pkg/cli/blender_ext.py")


def valid_tags() -> Path:
    """The tag list Blender validates manifests against (what `blender --command extension` passes)."""
    return _shipped("modules/_bpy_internal/extensions/tags.py")


def _tool(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(blender_ext()), *args], capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise ExtensionToolError(output or f"blender_ext.py {args[0]} failed with status {proc.returncode}")
    return output


def validate(path: str | os.PathLike = ROOT) -> str:
    """Validate the manifest of an extension folder or zip; returns the tool's report, raises if invalid."""
    return _tool("validate", str(path), "--valid-tags", str(valid_tags()))


def build(out_dir: str | os.PathLike, source: str | os.PathLike = ROOT) -> Path:
    """Build the extension zip of `source` into `out_dir` (named `<id>-<version>.zip` by the tool), then
    validate the zip itself; returns its path. The zip appears complete or not at all."""
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".extension-build-", dir=out_dir))
    try:
        _tool("build", "--source-dir", str(Path(source).absolute()), "--output-dir", str(stage),
              "--valid-tags", str(valid_tags()))
        zips = list(stage.glob("*.zip"))
        if len(zips) != 1:
            raise ExtensionToolError(f"expected one zip from the build, found {[z.name for z in zips]}")
        validate(zips[0])
        target = out_dir / zips[0].name
        os.replace(zips[0], target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.extension", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_validate = sub.add_parser("validate", help="check the manifest with Blender's validator")
    p_validate.add_argument("--source", type=Path, default=ROOT, help="extension folder or zip (default: the repo)")
    p_build = sub.add_parser("build", help="build the installable extension zip")
    p_build.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    p_build.add_argument("--source", type=Path, default=ROOT, help="extension folder (default: the repository)")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            print(validate(args.source))
            print(f"{args.source}: valid")
        else:
            print(f"built {build(args.out, args.source)}")
    except ExtensionToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
