# SPDX-License-Identifier: GPL-3.0-or-later
"""Match Camera to Image: `unposed.match_camera` calibrates a camera from one photo (`engine calibrate` as a job)
and `unposed.match_camera_axes` turns its Manhattan frame without recomputing.

The photo is `filepath`, else the scene camera's background photo, else the image in an Image Editor. The scene
camera (or a new one, at eye height above the origin) gets the photo's resolution, lens, sensor and shift
(`bridge.camera.apply_camera`), the photo as its background, and, when vanishing points gave a rotation, an
orientation with the photo's vertical along Blender's +Z, keeping its location. The calibration is stored on the
camera data (`MATCH_KEY`, JSON) so the choice of which horizontal vanishing direction is +X can be changed later
(flip: half a turn about Z; swap: a quarter turn) by `unposed.match_camera_axes`.
Blender ignores EXIF orientation, and the calibration is for the photo as displayed: a photo with an orientation
tag is shown through an upright copy packed into the .blend file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..bridge import camera as camera_bridge
from ..bridge.scene_export import photo_path
from ..engine.calibrate.result import CalibrationError, CalibrationResult
from ..engine.errors import EngineError
from ..ui.preferences import get_preferences
from .job import EngineJobOperator, JobInputError

MATCH_KEY = "unposed_match"
EYE_HEIGHT_M = 1.6  # where a new camera stands (above the world origin)
_METHODS = [
    ('AUTO', "Auto", "DM-Calib when its weights are installed, else vanishing points when confident, else EXIF, "
                     "else an uncertain vanishing-point estimate, else a 50-degree prior"),
    ('VP', "Vanishing Points", "Straight lines of a Manhattan scene (buildings, rooms): focal, centre, rotation"),
    ('EXIF', "EXIF", "The photo's focal-length metadata"),
    ('DMCALIB', "DM-Calib", "The learned diffusion calibrator (needs its weights, see Preferences)"),
]


def stored_match(cam_obj: bpy.types.Object | None) -> dict[str, Any] | None:
    """The match stored on a camera: {"image", "result" (CalibrationResult JSON), "flip", "swap"}, or None."""
    if cam_obj is None or cam_obj.type != 'CAMERA' or not isinstance(cam_obj.data.get(MATCH_KEY), str):
        return None
    try:
        state = json.loads(cam_obj.data[MATCH_KEY])
    except json.JSONDecodeError:
        return None
    return state if isinstance(state, dict) and isinstance(state.get("result"), dict) else None


def match_target(context: bpy.types.Context) -> bpy.types.Object | None:
    """The camera `match_camera_axes` acts on: the active object if it is a matched camera, else the scene's."""
    active = context.active_object
    return active if stored_match(active) is not None else context.scene.camera


def _image_editor_photo(context: bpy.types.Context) -> bpy.types.Image | None:
    space = context.space_data
    if space is not None and space.type == 'IMAGE_EDITOR' and space.image is not None:
        return space.image
    for area in (context.screen.areas if context.screen is not None else ()):
        if area.type == 'IMAGE_EDITOR' and area.spaces.active.image is not None:
            return area.spaces.active.image
    return None


def _file_of(image: bpy.types.Image) -> Path:
    if image.source != 'FILE' or not image.filepath:
        raise JobInputError(f"image {image.name!r} is not a file on disk (generated or packed): save it first")
    return Path(os.path.abspath(bpy.path.abspath(image.filepath, library=image.library)))


def _upright_copy(image: bpy.types.Image, orientation: int) -> bpy.types.Image:
    """A packed copy of `image` with its EXIF orientation applied (Pillow's exif_transpose, on pixel rows stored
    top first): Blender shows photos as stored."""
    w, h = image.size
    pixels = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    a = pixels.reshape(h, w, 4)[::-1]  # Blender stores the bottom row first
    a = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
         5: lambda x: x.transpose(1, 0, 2), 6: lambda x: np.rot90(x, -1), 7: lambda x: x[::-1, ::-1].transpose(1, 0, 2),
         8: lambda x: np.rot90(x, 1)}[orientation](a)
    out = bpy.data.images.new(f"{image.name} (upright)", a.shape[1], a.shape[0], alpha=True)
    out.colorspace_settings.name = image.colorspace_settings.name
    out.pixels.foreach_set(np.ascontiguousarray(a[::-1]).reshape(-1))
    out.pack()
    out["unposed_source"] = image.filepath
    return out


def _show_background(cam_data: bpy.types.Camera, path: Path, result: CalibrationResult) -> None:
    """Show the photo (upright, at the calibrated size) as the camera's background, in place of any background
    entries already showing it."""
    image = bpy.data.images.load(str(path), check_existing=True)
    shown = image
    orientation = int(result.extras.get("orientation", 1))
    if orientation != 1:
        shown = next((im for im in bpy.data.images if im.get("unposed_source") == image.filepath
                      and tuple(im.size) == (result.width, result.height)), None) or _upright_copy(image, orientation)
    same = [bg for bg in cam_data.background_images if bg.source == 'IMAGE' and bg.image in (image, shown)]
    entry = same[0] if same else cam_data.background_images.new()
    entry.source, entry.image = 'IMAGE', shown
    for bg in same[1:]:
        cam_data.background_images.remove(bg)
    if shown != image and image.users == 0:
        bpy.data.images.remove(image)
    entry.frame_method = 'STRETCH'  # the photo covers the camera frame exactly
    entry.show_background_image = True
    cam_data.show_background_images = True


def apply_rotation(cam_obj: bpy.types.Object, result: CalibrationResult, flip: bool, swap: bool) -> bool:
    """Orient the camera by the calibration's Manhattan frame (turned by flip/swap) keeping its location; False
    when the calibration has no rotation."""
    pose = result.yawed(int(swap) + 2 * int(flip))
    if pose is None:
        return False
    centre = np.array(cam_obj.matrix_world.translation)
    pose[:3, 3] = -pose[:3, :3] @ centre
    camera_bridge.apply_pose(cam_obj, pose)
    return True


class UNPOSED_OT_match_camera(EngineJobOperator, bpy.types.Operator):
    """Calibrate the scene camera from one photo (focal length, principal point, level rotation) and show the photo
    as its background"""

    bl_idname = "unposed.match_camera"
    bl_label = "Match Camera to Image"
    bl_options = {'REGISTER', 'UNDO'}

    filepath: StringProperty(name="Photo", subtype='FILE_PATH',
                             description="Photo to match (empty: the scene camera's background photo, or the image "
                                         "in the Image Editor)")
    filter_glob: StringProperty(default="*.jpg;*.jpeg;*.png;*.tif;*.tiff;*.webp;*.bmp;*.heic", options={'HIDDEN'})
    method: EnumProperty(name="Method", items=_METHODS, default='AUTO')

    _browsed = False

    @staticmethod
    def implicit_photo(context: bpy.types.Context) -> Path | None:
        """The photo used when no file is given: the scene camera's background, else the Image Editor's image."""
        camera = context.scene.camera
        path = photo_path(camera.data) if camera is not None and camera.type == 'CAMERA' else None
        if path is None:
            image = _image_editor_photo(context)
            path = _file_of(image) if image is not None else None
        return path

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        """From the UI: a file browser first when there is no photo to take, then the job in the background."""
        try:
            found = bool(self.filepath) or self.implicit_photo(context) is not None
        except JobInputError:
            found = False
        if found:
            return EngineJobOperator.invoke(self, context, event)
        self._browsed = True
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self._browsed and context.window is not None:  # called by the file browser: run the job modally
            self._browsed = False
            return EngineJobOperator.invoke(self, context, None)
        return EngineJobOperator.execute(self, context)

    def job_prepare(self, context: bpy.types.Context) -> None:
        path = Path(self.abspath(self.filepath)) if self.filepath else self.implicit_photo(context)
        if path is None:
            raise JobInputError("no photo: give a file, set a background image on the scene camera, or open the "
                                "photo in an Image Editor")
        if not path.is_file():
            raise JobInputError(f"{path}: photo not found")
        self._photo = path

    def job_argv(self, context: bpy.types.Context) -> list[str]:
        prefs = get_preferences(context)
        argv = ["calibrate", str(self._photo), "--method", self.method.lower(), "--device", prefs.device]
        for flag, value in (("--weights", prefs.dmcalib_weights), ("--base", prefs.dmcalib_base)):
            if value:  # a folder (Blender-relative paths allowed) or a Hub id
                argv += [flag, self.abspath(value) if os.path.exists(self.abspath(value)) else value]
        return argv

    def job_finished(self, context: bpy.types.Context, result: dict[str, Any]) -> set[str]:
        try:
            (found,) = result["results"]
            calibration = CalibrationResult.from_json(found, f"calibration of {self._photo}")
        except (KeyError, TypeError, ValueError, CalibrationError) as exc:
            self.report({'ERROR'}, f"{self.bl_label}: unexpected engine result ({exc})")
            return {'CANCELLED'}
        scene = context.scene
        cam_obj = scene.camera
        created = cam_obj is None or cam_obj.type != 'CAMERA'
        if created:
            cam_obj = bpy.data.objects.new("Matched Camera", bpy.data.cameras.new("Matched Camera"))
            cam_obj.location = (0.0, 0.0, EYE_HEIGHT_M)
        try:
            camera_bridge.apply_camera(scene, cam_obj, calibration.camera())
        except (EngineError, ValueError) as exc:
            if created:
                data = cam_obj.data
                bpy.data.objects.remove(cam_obj)
                bpy.data.cameras.remove(data)
            self.report({'ERROR'}, f"{self.bl_label}: {exc}")
            return {'CANCELLED'}
        if created:
            scene.collection.objects.link(cam_obj)
            scene.camera = cam_obj
            context.view_layer.update()  # matrix_world (read by apply_rotation) follows the location
        previous = stored_match(cam_obj) or {}
        flip, swap = bool(previous.get("flip", False)), bool(previous.get("swap", False))
        rotated = apply_rotation(cam_obj, calibration, flip, swap)
        _show_background(cam_obj.data, self._photo, calibration)
        cam_obj.data[MATCH_KEY] = json.dumps({"image": str(self._photo), "result": calibration.to_json(),
                                              "flip": flip, "swap": swap})
        level = 'INFO' if calibration.confidence >= 0.5 else 'WARNING'
        self.report({level}, f"{cam_obj.name}: {calibration.method}, horizontal FoV {calibration.hfov_deg:.1f} deg, "
                             f"confidence {calibration.confidence:.2f}"
                             + ("" if rotated else "; no rotation found (orientation unchanged)"))
        return {'FINISHED'}


class UNPOSED_OT_match_camera_axes(bpy.types.Operator):
    """Choose which horizontal vanishing direction of the matched photo is +X (the vertical stays +Z), without
    recomputing the calibration"""

    bl_idname = "unposed.match_camera_axes"
    bl_label = "Match Camera Axes"
    bl_options = {'REGISTER', 'UNDO'}

    flip: BoolProperty(name="Flip X/Y", description="Half a turn about Z: +X and +Y point the other way")
    swap: BoolProperty(name="Swap X/Y", description="A quarter turn about Z: the other horizontal direction is +X")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = stored_match(match_target(context))
        if state is None or state["result"].get("cam_from_world") is None:
            cls.poll_message_set("The camera has no matched photo with a rotation (use Match Camera to Image)")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        cam_obj = match_target(context)
        state = stored_match(cam_obj)
        try:
            calibration = CalibrationResult.from_json(state["result"], f"camera {cam_obj.name!r}")
        except CalibrationError as exc:
            self.report({'ERROR'}, f"{self.bl_label}: {exc}")
            return {'CANCELLED'}
        apply_rotation(cam_obj, calibration, self.flip, self.swap)
        state["flip"], state["swap"] = bool(self.flip), bool(self.swap)
        cam_obj.data[MATCH_KEY] = json.dumps(state)
        return {'FINISHED'}


classes: tuple = (UNPOSED_OT_match_camera, UNPOSED_OT_match_camera_axes)
