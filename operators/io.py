# SPDX-License-Identifier: GPL-3.0-or-later
"""Import and export of whole scenes: `unposed.import_scene` and `unposed.export_scene`.

Scene bundles are read and written in Blender's process; COLMAP and nerfstudio go through the engine
(`engine import` / `engine export`) as jobs. From the UI both open a file browser first; from scripts `execute()`
runs everything before returning. On any failure the error is reported and the scene is left as it was.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..bridge import scene_export, scene_import
from ..engine.bundle import SCENE_FILE, read_bundle, write_bundle
from ..engine.errors import EngineError
from ..engine.interop import check_replaceable
from .job import BrowseThenRunOperator, JobInputError

# Files of a COLMAP model folder: choosing one in the file browser means its folder.
_COLMAP_FILES = {f"{stem}.{ext}" for stem in ("cameras", "images", "points3D", "rigs", "frames")
                 for ext in ("bin", "txt")}


class _SceneIO(BrowseThenRunOperator):
    """Import/export: both may stage a temporary bundle."""

    def _remove_temp(self) -> None:
        temp = getattr(self, "_temp", None)
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
            self._temp = None


def _display_name(path: Path) -> str:
    """A collection name for an imported path: its folder's name (the project's for COLMAP sparse/N)."""
    folder = path.parent if path.is_file() else path
    if folder.name.isdigit() and folder.parent.name == "sparse":
        folder = folder.parent.parent
    return folder.name or "Unposed scene"


class UNPOSED_OT_import_scene(_SceneIO, bpy.types.Operator):
    """Import cameras with their photos and the point cloud from a scene bundle, a COLMAP project or model, or a
    nerfstudio transforms.json (importing the same source again replaces its collection)"""

    bl_idname = "unposed.import_scene"
    bl_label = "Import Scene"
    bl_options = {'REGISTER', 'UNDO'}

    filepath: StringProperty(name="File Path", subtype='FILE_PATH',
                             description="Scene bundle folder or scene.json, COLMAP project or model folder "
                                         "(or a file in it), or transforms.json")
    filter_glob: StringProperty(default="*.json;*.bin;*.txt", options={'HIDDEN'})
    images_dir: StringProperty(name="Images Folder", subtype='DIR_PATH',
                               description="Folder holding the photos, for COLMAP and nerfstudio input "
                                           "(default: found next to the model)")

    def job_prepare(self, context: bpy.types.Context) -> None:
        if not self.filepath:
            raise JobInputError("no file or folder to import (filepath is empty)")
        path = Path(self.abspath(self.filepath))
        if not path.exists():
            raise JobInputError(f"{path}: not found")
        if path.is_file() and path.name in _COLMAP_FILES:
            path = path.parent
        if self.images_dir and not Path(self.abspath(self.images_dir)).is_dir():
            raise JobInputError(f"images folder {self.abspath(self.images_dir)}: not found")
        self._source = path.parent if path.name == SCENE_FILE else path
        self._is_bundle = path.name == SCENE_FILE or (path / SCENE_FILE).is_file()
        self._temp = None if self._is_bundle else Path(tempfile.mkdtemp(prefix="unposed-import-"))

    def job_argv(self, context: bpy.types.Context) -> list[str] | None:
        if self._is_bundle:
            return None  # read in-process
        argv = ["import", str(self._source), "--out", str(self._temp / "bundle")]
        if self.images_dir:
            argv += ["--images", self.abspath(self.images_dir)]
        return argv

    def job_finished(self, context: bpy.types.Context, result: dict[str, Any]) -> set[str]:
        bundle = self._source if self._is_bundle else self._temp / "bundle"
        try:
            scene = read_bundle(bundle)  # photos stay where they are: the temporary bundle can go afterwards
            # ST-maps of lenses Blender cannot show go next to what was imported
            stmaps = (self._source if self._source.is_dir() else self._source.parent) / "stmaps"
            collection = scene_import.import_bundle(context, scene, _display_name(self._source),
                                                    str(self._source.resolve()), stmap_dir=stmaps)
        except (EngineError, ValueError, OSError) as exc:
            self.report({'ERROR'}, f"{self.bl_label}: {exc}")
            return {'CANCELLED'}
        finally:
            self._remove_temp()
        points = f" and {len(scene.points):,} points" if scene.points is not None else ""
        lens = scene_import.lens_summary(collection)
        self.report({'INFO'}, f"Imported {len(scene.images)} cameras{points} into {collection.name!r}"
                              + (f"; {lens}" if lens else ""))
        return {'FINISHED'}

    def job_cleanup(self, context: bpy.types.Context) -> None:
        self._remove_temp()


_FORMATS = [
    ('BUNDLE', "Scene Bundle", "Unposed scene bundle folder (scene.json, points.ply; photos referenced)"),
    ('COLMAP', "COLMAP", "COLMAP project folder: sparse/0 model and images/"),
    ('NERFSTUDIO', "nerfstudio", "nerfstudio folder: transforms.json, images/ and points.ply"),
]


class UNPOSED_OT_export_scene(_SceneIO, bpy.types.Operator):
    """Export cameras (with lens distortion and photos) and the point cloud as a scene bundle, a COLMAP project
    or a nerfstudio dataset folder"""

    bl_idname = "unposed.export_scene"
    bl_label = "Export Scene"
    bl_options = {'REGISTER'}

    filepath: StringProperty(name="Output Folder", subtype='FILE_PATH',
                             description="Folder to write (new, empty, or an earlier export of the same kind)")
    format: EnumProperty(name="Format", items=_FORMATS, default='BUNDLE')
    selected_only: BoolProperty(name="Selected Only", default=False,
                                description="Export only the selected cameras (and point clouds)")
    colmap_binary: BoolProperty(name="Binary COLMAP", default=False,
                                description="Write the COLMAP model in binary instead of text")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if not self.filepath:  # a new folder beside the .blend file, named after it
            stem = Path(bpy.data.filepath).stem if bpy.data.filepath else "scene"
            self.filepath = f"//{stem}_{self.format.lower()}"
        return super().invoke(context, event)

    def job_prepare(self, context: bpy.types.Context) -> None:
        if not self.filepath:
            raise JobInputError("no output folder (filepath is empty)")
        self._out = Path(self.abspath(self.filepath))
        objects = context.selected_objects if self.selected_only else context.scene.objects
        self._scene = scene_export.scene_from_blender(context, objects)  # BundleError is reported
        self._temp = None
        if self.format == 'BUNDLE':
            check_replaceable(self._out, SCENE_FILE, "a scene bundle")
        else:
            self._temp = Path(tempfile.mkdtemp(prefix="unposed-export-"))
            try:
                write_bundle(self._scene, self._temp / "bundle")
            except OSError as exc:
                raise JobInputError(f"cannot write the scene for the engine: {exc}") from None

    def job_argv(self, context: bpy.types.Context) -> list[str] | None:
        if self.format == 'BUNDLE':
            return None  # written in-process
        argv = ["export", str(self._temp / "bundle"), "--format", self.format.lower(), "--out", str(self._out)]
        return argv + (["--binary"] if self.colmap_binary and self.format == 'COLMAP' else [])

    def job_finished(self, context: bpy.types.Context, result: dict[str, Any]) -> set[str]:
        if self.format == 'BUNDLE':
            try:
                write_bundle(self._scene, self._out)
            except (EngineError, OSError) as exc:
                self.report({'ERROR'}, f"{self.bl_label}: {exc}")
                return {'CANCELLED'}
        self._remove_temp()
        scene = self._scene
        points = f" and {len(scene.points):,} points" if scene.points is not None else ""
        self.report({'INFO'}, f"Exported {len(scene.images)} cameras{points} to {self._out}")
        return {'FINISHED'}

    def job_cleanup(self, context: bpy.types.Context) -> None:
        self._remove_temp()


classes: tuple = (UNPOSED_OT_import_scene, UNPOSED_OT_export_scene)
