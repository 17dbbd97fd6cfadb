"""Interchange with other tools: COLMAP models (`colmap.py`) and nerfstudio `transforms.json` (`nerfstudio.py`).

This module holds what both formats share: their error type, the provenance record, the rule for which output
folders may be replaced, and the copying of photos into an exported `images/` folder.
"""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from .. import __version__
from ..bundle import Scene
from ..errors import EngineError
from ..progress import Progress

# Written into every exported folder; its presence marks a folder that a later export may replace.
EXPORT_MARKER = "unposed_export.json"


class InteropError(EngineError):
    """A COLMAP model or transforms.json is missing, malformed, or cannot express the scene."""


def provenance(command: str, source: str | os.PathLike, **details: Any) -> dict[str, Any]:
    """The `provenance` record of a written bundle or export: tool, version, command, source, UTC time."""
    return {"tool": "unposed", "version": __version__, "command": command, "source": str(Path(source).resolve()),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}


def check_replaceable(path: Path, marker: str, what: str) -> None:
    """Refuse to replace an existing, non-empty folder unless it holds `marker` (i.e. we wrote it).

    Outputs are written atomically by swapping a whole folder into place, so writing to a folder that holds
    the user's own files would delete them.
    """
    if not path.exists():
        return
    if not path.is_dir():
        raise InteropError(f"{path}: exists and is not a folder; choose another output path")
    if any(path.iterdir()) and not (path / marker).is_file():
        raise InteropError(f"{path}: folder exists and is not {what} (no {marker}); refusing to replace it, "
                           f"choose a new or empty folder")


def image_relpath(name: str, where: str) -> PurePosixPath:
    """An image name as a relative path that stays inside the folder it is written under."""
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts or name != rel.as_posix():
        raise InteropError(f"{where}: image name {name!r} is not a plain relative path; it cannot be written "
                           f"as a file under images/")
    return rel


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (cheap, same filesystem), falling back to a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_photos(scene: Scene, images_dir: Path, progress: Progress | None = None) -> int:
    """Put each image's photo at `images_dir/<name>` (the layout COLMAP and nerfstudio expect); returns the count.

    Images without a photo file are left out with a warning (their cameras are still exported).
    """
    for image in scene.images:  # check every name before writing anything
        image_relpath(image.name, f"image {image.id}")
    with_photo = [image for image in scene.images if image.path is not None]
    if progress is not None:
        if len(with_photo) < len(scene.images):
            progress.log(f"{len(scene.images) - len(with_photo)} image(s) have no photo file; only their cameras "
                         f"are exported", level="warning")
        progress.stage("photos", len(with_photo))
    for image in with_photo:
        if not image.path.is_file():
            raise InteropError(f"image {image.name!r}: photo {image.path} not found")
        link_or_copy(image.path, images_dir / image_relpath(image.name, f"image {image.id}"))
        if progress is not None:
            progress.advance()
    return len(with_photo)
