# SPDX-License-Identifier: GPL-3.0-or-later
"""`unposed.reconstruct`: cameras and points from photos (a folder, or files in it) or a movie clip's frames.

Runs `engine reconstruct` as a job, then imports the bundle it wrote (cameras with their photos as backgrounds,
the point cloud) through bridge.scene_import. The bundle is kept on disk (`output`; by default "unposed" beside
the photos, "<clip>_unposed" beside a clip): the cameras' backgrounds show its photos, and reconstructing again
into the same folder replaces the collection imported from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, StringProperty

from ..bridge import scene_import
from ..engine.bundle import SCENE_FILE, read_bundle
from ..engine.errors import EngineError
from ..engine.interop import check_replaceable
from ..ui.preferences import get_preferences
from ..ui.properties import RECONSTRUCT_BACKENDS
from .job import BrowseThenRunOperator, EngineJobOperator, JobInputError

DEFAULT_OUTPUT = "unposed"  # the bundle's folder beside the photos (for a clip: "<clip name>_unposed")


class UNPOSED_OT_reconstruct(BrowseThenRunOperator, bpy.types.Operator):
    """Reconstruct calibrated cameras and a point cloud from photos of a scene, or from a movie clip's frames"""

    bl_idname = "unposed.reconstruct"
    bl_label = "Reconstruct from Photos"
    bl_options = {'REGISTER', 'UNDO'}

    directory: StringProperty(name="Folder", subtype='DIR_PATH',
                              description="Folder of the photos (all its images when no files are chosen)")
    files: CollectionProperty(name="Files", type=bpy.types.OperatorFileListElement)
    filter_image: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})
    filter_folder: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})
    clip: StringProperty(name="Movie Clip", description="Reconstruct from this movie clip's frames instead")
    frame_step: IntProperty(name="Frame Step", min=1, default=1, description="Use every N-th frame or photo")
    backend: EnumProperty(name="Method", items=RECONSTRUCT_BACKENDS, default='AUTO')
    output: StringProperty(name="Output Folder", subtype='DIR_PATH',
                           description="Where the reconstruction is saved as a scene bundle (default: a folder "
                                       f"\"{DEFAULT_OUTPUT}\" beside the photos, \"<clip>_{DEFAULT_OUTPUT}\" beside "
                                       "a clip)")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.clip:  # nothing to browse for
            return EngineJobOperator.invoke(self, context, event)
        return super().invoke(context, event)

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "backend")
        layout.prop(self, "frame_step")
        layout.prop(self, "output")

    def _inputs(self) -> tuple[list[str], Path, str]:
        """(engine arguments naming the input, the default output folder, a display name)."""
        if self.clip:
            clip = bpy.data.movieclips.get(self.clip)
            if clip is None:
                raise JobInputError(f"no movie clip named {self.clip!r}")
            path = Path(self.abspath(clip.filepath))
            if not path.is_file():
                raise JobInputError(f"movie clip {clip.name!r}: file {path} not found")
            if clip.source == 'SEQUENCE':  # its frames are the image files of its folder, in order
                source = ["--images", str(path.parent), "--graph", "sequential"]
            else:
                source = ["--video", str(path)]
            return source, path.parent / f"{Path(clip.name).stem}_{DEFAULT_OUTPUT}", clip.name
        if not self.directory:
            raise JobInputError("no photos chosen (directory is empty)")
        folder = Path(self.abspath(self.directory))
        if not folder.is_dir():
            raise JobInputError(f"photo folder {folder} not found")
        names = [f.name for f in self.files if f.name]
        paths = [str(folder / name) for name in names] or [str(folder)]
        return ["--images", *paths], folder / DEFAULT_OUTPUT, folder.name or "Reconstruction"

    def job_prepare(self, context: bpy.types.Context) -> None:
        self._source, default_out, self._name = self._inputs()
        self._out = Path(self.abspath(self.output)) if self.output else default_out
        check_replaceable(self._out, SCENE_FILE, "a scene bundle")  # EngineError: reported, nothing runs

    def job_argv(self, context: bpy.types.Context) -> list[str]:
        prefs = get_preferences(context)
        argv = ["reconstruct", *self._source, "--out", str(self._out), "--backend", self.backend.lower(),
                "--frame-step", str(self.frame_step), "--device", prefs.device]
        if prefs.dust3r_checkpoint:  # a file or folder (maybe relative to the .blend file), or a Hub id
            path = self.abspath(prefs.dust3r_checkpoint)
            argv += ["--weights", path if Path(path).exists() else prefs.dust3r_checkpoint]
        return argv

    def job_finished(self, context: bpy.types.Context, result: dict[str, Any]) -> set[str]:
        try:
            scene = read_bundle(self._out)
            collection = scene_import.import_bundle(context, scene, self._name, str(self._out.resolve()),
                                                    stmap_dir=self._out / "stmaps")
        except (EngineError, ValueError, OSError) as exc:
            self.report({'ERROR'}, f"{self.bl_label}: the reconstruction in {self._out} cannot be imported: {exc}")
            return {'CANCELLED'}
        points = f" and {len(scene.points):,} points" if scene.points is not None else ""
        self.report({'INFO'}, f"Reconstructed {len(scene.images)} of {result.get('photos', len(scene.images))} "
                              f"cameras{points} ({result.get('backend', '?')}) into {collection.name!r}; "
                              f"saved in {self._out}"
                              + (f"; {scene_import.lens_summary(collection)}" if scene_import.lens_summary(collection)
                                 else ""))
        return {'FINISHED'}


classes: tuple = (UNPOSED_OT_reconstruct,)
