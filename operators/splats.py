# SPDX-License-Identifier: GPL-3.0-or-later
"""Gaussian splats: `unposed.import_splats`, `unposed.export_splats` (3DGS .ply, in Blender's process) and
`unposed.train_splats` (the engine's `train` command as a job: cameras of the bundle's collection updated in place,
the splat object created or replaced). On any failure the error is reported and the scene is left as it was.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..bridge import camera as camera_bridge
from ..bridge import scene_import
from ..bridge import splats as splats_bridge
from ..engine.bundle import SCENE_FILE, Scene, read_bundle
from ..engine.errors import EngineError
from ..engine.splats.ply import Splats, read_splats, write_splats
from .job import BrowseThenRunOperator, EngineJobOperator, JobInputError

SPLATS_SOURCE_PROP = "unposed_splats_source"  # on a trained splat object: the bundle it was trained from


def _abspath(path: str) -> Path:
    return Path(EngineJobOperator.abspath(path))


def _add_splats(context: bpy.types.Context, obj: bpy.types.Object, collection: bpy.types.Collection) -> list[str]:
    """Link `obj` into `collection`, make it the active, only selected object; the render settings it needed."""
    collection.objects.link(obj)
    for other in context.view_layer.objects:
        other.select_set(False)
    try:
        obj.select_set(True)
    except RuntimeError:  # the collection is excluded from the view layer
        pass
    else:
        context.view_layer.objects.active = obj
    return splats_bridge.prepare_render_settings(context.scene)


def _summary(splats: Splats) -> str:
    return f"{len(splats):,} splats (SH degree {splats.sh_degree})"


class UNPOSED_OT_import_splats(bpy.types.Operator, ImportHelper):
    """Import Gaussian splats from a 3D Gaussian Splatting .ply file (from any trainer)"""

    bl_idname = "unposed.import_splats"
    bl_label = "Import Splats"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={'HIDDEN'})
    display_limit: IntProperty(name="Display Limit", default=splats_bridge.DISPLAY_LIMIT, min=1,
                               description="Most splats drawn in the viewport (renders draw all of them)")

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not self.filepath:
            self.report({'ERROR'}, f"{self.bl_label}: no file to import (filepath is empty)")
            return {'CANCELLED'}
        path = _abspath(self.filepath)
        try:
            splats = read_splats(path)
            if len(splats) == 0:
                raise EngineError(f"{path}: the file holds no splats")
        except EngineError as exc:
            self.report({'ERROR'}, f"{self.bl_label}: {exc}")
            return {'CANCELLED'}
        obj = splats_bridge.splats_object(path.stem, splats, self.display_limit)
        notes = _add_splats(context, obj, context.collection)
        self.report({'INFO'}, "; ".join([f"Imported {_summary(splats)} as {obj.name!r}", *notes]))
        return {'FINISHED'}


class UNPOSED_OT_export_splats(bpy.types.Operator, ExportHelper):
    """Export the active splat object, with its transform applied, as a 3D Gaussian Splatting .ply file"""

    bl_idname = "unposed.export_splats"
    bl_label = "Export Splats"
    bl_options = {'REGISTER'}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={'HIDDEN'})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not splats_bridge.is_splats(context.active_object):
            cls.poll_message_set("The active object is not a splat object")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not self.filepath:
            self.report({'ERROR'}, f"{self.bl_label}: no file to write (filepath is empty)")
            return {'CANCELLED'}
        path = _abspath(self.filepath)
        try:
            splats = splats_bridge.splats_from_object(context.active_object)
            write_splats(path, splats)
        except (ValueError, EngineError, OSError) as exc:
            self.report({'ERROR'}, f"{self.bl_label}: {exc}")
            return {'CANCELLED'}
        self.report({'INFO'}, f"Exported {_summary(splats)} to {path}")
        return {'FINISHED'}


_CALIBRATE = [
    ('FOCAL', "Focal Length", "Refine the focal lengths"),
    ('PP', "Principal Point", "Refine the principal points"),
    ('POSE', "Poses", "Refine the camera poses"),
    ('DISTORTION', "Distortion", "Refine the lens distortion"),
]
_LENSES = [
    ('KEEP', "Keep", "Keep each camera's model"),
    ('PINHOLE', "Pinhole", "No distortion"),
    ('RADIAL', "Radial", "Radial distortion (k1, k2)"),
    ('OPENCV', "OpenCV", "Radial and tangential distortion (k1, k2, p1, p2)"),
    ('FISHEYE', "Fisheye", "OpenCV fisheye (equidistant with k1..k4)"),
]


class UNPOSED_OT_train_splats(BrowseThenRunOperator, bpy.types.Operator):
    """Train Gaussian splats on a scene bundle's photos while refining its cameras; the bundle's cameras in the
    scene are updated in place and the splats are added (replacing those trained before from the same bundle)"""

    bl_idname = "unposed.train_splats"
    bl_label = "Train Splats"
    bl_options = {'REGISTER'}

    filepath: StringProperty(name="Scene Bundle", subtype='FILE_PATH',
                             description="Scene bundle folder or its scene.json (default: the bundle the active "
                                         "object was imported from)")
    filter_glob: StringProperty(default="*.json", options={'HIDDEN'})
    iterations: IntProperty(name="Iterations", default=3000, min=1, description="Training steps")
    calibrate: EnumProperty(name="Calibrate", items=_CALIBRATE, options={'ENUM_FLAG'},
                            default={'FOCAL', 'PP', 'POSE', 'DISTORTION'},
                            description="Camera parameters refined while training")
    lens: EnumProperty(name="Lens", items=_LENSES, default='KEEP', description="Camera model to train with")
    hold_out: IntProperty(name="Hold Out Every", default=8, min=0,
                          description="Hold out every n-th photo to measure the quality on views not trained on "
                                      "(0: train on all photos)")
    downscale: IntProperty(name="Downscale", default=0, min=0, max=64,
                           description="Train on photos this many times smaller (0: automatic, photos wider than "
                                       "1600 px shrink to 1600 or less); cameras come back at full size")
    intrinsics_after_tracks: FloatProperty(
        name="Intrinsics After Tracks", default=0.0, min=0.0, max=1.0,
        description="When feature tracks calibrate the cameras first, how fast the photos may still refine focal, "
                    "principal point and distortion (0: keep the tracks' intrinsics, refine poses only; 1: full "
                    "rate)")
    rotations_after_tracks: FloatProperty(
        name="Rotations After Tracks", default=0.0, min=0.0, max=1.0,
        description="When feature tracks calibrate the cameras first, how fast the photos may still refine the "
                    "cameras' orientations (0: keep the tracks' orientations, refine camera positions only; 1: full "
                    "rate)")
    out_path: StringProperty(name="Output Bundle", subtype='DIR_PATH',
                             description="Folder for the trained bundle (default: update the input bundle)")
    display_limit: IntProperty(name="Display Limit", default=splats_bridge.DISPLAY_LIMIT, min=1,
                               description="Most splats drawn in the viewport (renders draw all of them)")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.filepath or _imported_bundle(context) is not None:  # options first, then the job in the background
            self._browsed = True
            return context.window_manager.invoke_props_dialog(self)
        return super().invoke(context, event)  # a file browser first

    def _bundle_path(self, context: bpy.types.Context) -> Path:
        if self.filepath:
            path = _abspath(self.filepath)
            return path.parent if path.name == SCENE_FILE else path
        bundle = _imported_bundle(context)
        if bundle is None:
            raise JobInputError("no scene bundle: choose one, or make an object imported from a bundle active")
        return bundle

    def job_prepare(self, context: bpy.types.Context) -> None:
        bundle = self._bundle_path(context)
        if not (bundle / SCENE_FILE).is_file():
            raise JobInputError(f"{bundle}: not a scene bundle (no {SCENE_FILE})")
        self._bundle = bundle.resolve()
        self._out = _abspath(self.out_path).resolve() if self.out_path else self._bundle

    def job_argv(self, context: bpy.types.Context) -> list[str]:
        calibrate = ",".join(key.lower() for key, *_ in _CALIBRATE if key in self.calibrate) or "none"
        return ["train", str(self._bundle), "--iters", str(self.iterations), "--calibrate", calibrate,
                "--lens", self.lens.lower(), "--test-every", str(self.hold_out), "--downscale", str(self.downscale),
                "--intrinsics-after-tracks", repr(self.intrinsics_after_tracks),
                "--rotations-after-tracks", repr(self.rotations_after_tracks), "--out", str(self._out)]

    def job_finished(self, context: bpy.types.Context, result: dict[str, Any]) -> set[str]:
        try:
            scene = read_bundle(self._out)
            splats_name = scene.extras.get("splats")
            if not isinstance(splats_name, str):
                raise EngineError(f"{self._out}: the trained bundle names no splats file")
            splats = read_splats(self._out / splats_name)
            scene_import.validate(scene)
        except EngineError as exc:
            self.report({'ERROR'}, f"{self.bl_label}: {exc}")
            return {'CANCELLED'}
        source = str(self._bundle)
        obj = splats_bridge.splats_object("splats", splats, self.display_limit)
        obj[SPLATS_SOURCE_PROP] = source
        collection = scene_import.find_imported(source)
        try:
            if collection is None:  # not in the scene yet: import the trained bundle (under the input's name)
                collection = scene_import.import_bundle(context, scene, self._bundle.name, source,
                                                        stmap_dir=self._out / "stmaps")
                updated = len(scene.images)
            else:  # validated above, so this does not fail part way
                updated = _update_cameras(context, collection, scene)
        except (EngineError, ValueError, OSError) as exc:
            mesh = obj.data
            bpy.data.objects.remove(obj)
            bpy.data.meshes.remove(mesh)
            self.report({'ERROR'}, f"{self.bl_label}: {exc}")
            return {'CANCELLED'}
        old = [o for o in bpy.data.objects if o.get(SPLATS_SOURCE_PROP) == source and o != obj]
        meshes = [o.data for o in old]
        bpy.data.batch_remove(old)
        bpy.data.batch_remove([m for m in meshes if m.users == 0])
        obj.name = obj.data.name = f"{collection.name} splats"
        notes = _add_splats(context, obj, collection)
        metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
        quality = "".join(f", {label} PSNR {metrics[key]:.2f} dB"
                          for key, label in (("test_psnr", "held-out"), ("train_psnr", "training"))
                          if isinstance(metrics.get(key), (int, float)))
        for note in result.get("notes") or ():
            self.report({'INFO'}, str(note))
        self.report({'INFO'}, "; ".join([f"Trained {_summary(splats)}{quality}; {updated} cameras updated in "
                                         f"{collection.name!r}", *notes]))
        return {'FINISHED'}


def _imported_bundle(context: bpy.types.Context) -> Path | None:
    """The scene bundle the active object was imported from, if it was."""
    obj = context.active_object
    source = obj.get(scene_import.SOURCE_PROP) if obj is not None else None
    if isinstance(source, str) and (Path(source) / SCENE_FILE).is_file():
        return Path(source)
    return None


def _update_cameras(context: bpy.types.Context, collection: bpy.types.Collection, scene: Scene) -> int:
    """Give the cameras imported into `collection` the trained intrinsics, lens and pose of their image."""
    by_id = {image.id: image for image in scene.images}
    count = 0
    for obj in collection.objects:
        image = by_id.get(obj.get(scene_import.IMAGE_ID_PROP)) if obj.type == "CAMERA" else None
        if image is None:
            continue
        camera = scene.camera_of(image)
        camera_bridge.apply_camera(context.scene, obj, camera, set_resolution=obj == context.scene.camera,
                                   image_path=image.path)
        camera_bridge.apply_pose(obj, image.cam_from_world)
        obj[scene_import.CAMERA_ID_PROP] = int(camera.id)
        count += 1
    return count


classes: tuple = (UNPOSED_OT_import_splats, UNPOSED_OT_export_splats, UNPOSED_OT_train_splats)
