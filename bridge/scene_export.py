# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender cameras (with their lens clips and photos) and Unposed point clouds become an `engine.bundle.Scene`.

Each camera is read back at its own size and pixel aspect: a camera imported by Unposed records them in its stored
calibration, and the scene's render settings are switched to them (and restored) while it is read, since Blender
holds one render size per scene. Other cameras are read at the scene's render settings. Nothing in the file changes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import bpy
import numpy as np

from ..engine import interop
from ..engine.bundle import Camera, Image, Scene
from ..engine.camera_models import get_model
from ..engine.errors import BundleError, CameraModelError
from . import camera as camera_bridge
from . import pointcloud
from .scene_import import CAMERA_ID_PROP, IMAGE_ID_PROP, IMAGE_NAME_PROP, NO_PHOTO_PROP, UNITS_PROP

_RENDER_KEYS = ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y")


def _native_render(cam_data: bpy.types.Camera) -> dict | None:
    """Render settings the camera was calibrated at (size, pixel aspect per docs/CONVENTIONS.md), if known."""
    try:
        stored = json.loads(cam_data[camera_bridge.CALIBRATION_KEY])
        width, height = int(stored["width"]), int(stored["height"])
        fx, fy, *_ = get_model(stored["model"]).split(stored["params"])
    except (KeyError, TypeError, ValueError, CameraModelError):
        return None
    aspect = (1.0, fx / fy) if fx >= fy else (fy / fx, 1.0)
    return {"resolution_x": width, "resolution_y": height, "resolution_percentage": 100,
            "pixel_aspect_x": aspect[0], "pixel_aspect_y": aspect[1]}


def read_camera(scene: bpy.types.Scene, cam_obj: bpy.types.Object) -> tuple[Camera, np.ndarray]:
    """(Camera, cam_from_world) of a camera object at its own size (see the module docstring)."""
    native = _native_render(cam_obj.data)
    if native is None:
        return camera_bridge.camera_from_blender(scene, cam_obj)
    render = scene.render
    saved = {key: getattr(render, key) for key in _RENDER_KEYS}
    try:
        for key, value in native.items():
            setattr(render, key, value)
        return camera_bridge.camera_from_blender(scene, cam_obj)
    finally:
        for key, value in saved.items():
            setattr(render, key, value)


def photo_path(cam_data: bpy.types.Camera) -> Path | None:
    """The photo file shown as the camera's background (image or movie clip), if any."""
    for bg in cam_data.background_images:
        if bg.source == "IMAGE" and bg.image is not None and bg.image.source == "FILE":
            idb = bg.image
        elif bg.source == "MOVIE_CLIP" and bg.clip is not None and not bg.clip.get(NO_PHOTO_PROP):
            idb = bg.clip
        else:
            continue
        return Path(os.path.abspath(bpy.path.abspath(idb.filepath, library=idb.library)))
    return None


def _assign(wanted: list, fresh: Callable[[int, set], object]) -> list:
    """Each wanted value that is not None and not wanted by an earlier entry; `fresh(i, taken)` for the rest."""
    out, taken = [None] * len(wanted), set()
    for i, value in enumerate(wanted):
        if value is not None and value not in taken:
            out[i] = value
            taken.add(value)
    for i, value in enumerate(out):
        if value is None:
            out[i] = fresh(i, taken)
            taken.add(out[i])
    return out


def _next_id(_i: int, taken: set) -> int:
    return max(taken, default=0) + 1


def _unique_name(base: str, taken: set[str]) -> str:
    n = 0
    name = base
    while name in taken:
        n += 1
        name = f"{base}.{n:03d}"
    return name


def _int_prop(obj: bpy.types.Object, key: str) -> int | None:
    value = obj.get(key)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def scene_from_blender(context: bpy.types.Context, objects: Iterable[bpy.types.Object]) -> Scene:
    """A Scene from the camera objects among `objects` and the Unposed point clouds among them, or, when there
    are none, those in the cameras' collections. Cameras with identical intrinsics share one camera id; ids and
    names recorded at import are kept where they are still unique. Raises BundleError when there is no camera."""
    objects = list(objects)
    cams = [obj for obj in objects if obj.type == "CAMERA"]
    if not cams:
        raise BundleError("no camera objects to export (select cameras, or export all)")
    cams.sort(key=lambda o: (_int_prop(o, IMAGE_ID_PROP) is None, _int_prop(o, IMAGE_ID_PROP) or 0, o.name))
    collections = {coll for obj in cams for coll in obj.users_collection}
    clouds = [obj for obj in objects if pointcloud.is_point_cloud(obj)]
    if not clouds:
        clouds = [obj for coll in collections for obj in coll.objects if pointcloud.is_point_cloud(obj)]

    read = []
    for obj in cams:
        try:
            read.append(read_camera(context.scene, obj))
        except (ValueError, TypeError, CameraModelError) as exc:
            raise BundleError(f"camera {obj.name!r}: {exc}") from None

    # Group identical intrinsics; keep a recorded camera id when all members agree on it and no group before has it.
    groups: dict[tuple, list[int]] = {}
    def key(camera: Camera) -> tuple:
        network = None if camera.lens_network is None else str(camera.lens_network)
        return camera.model, camera.width, camera.height, tuple(camera.params), network

    for i, (camera, _) in enumerate(read):
        groups.setdefault(key(camera), []).append(i)
    recorded = [{_int_prop(cams[i], CAMERA_ID_PROP) for i in members} for members in groups.values()]
    ids = _assign([r.pop() if len(r) == 1 else None for r in recorded], _next_id)
    camera_ids = dict(zip(groups, ids))
    cameras = {camera_ids[key]: Camera(camera_ids[key], key[0], key[1], key[2], list(key[3]),
                                       lens_network=None if key[4] is None else Path(key[4])) for key in groups}

    stored_names = [obj.get(IMAGE_NAME_PROP) for obj in cams]
    names = _assign([n if isinstance(n, str) else None for n in stored_names],
                    lambda i, taken: _unique_name(cams[i].name, taken))
    image_ids = _assign([_int_prop(obj, IMAGE_ID_PROP) for obj in cams], _next_id)
    images = [Image(image_id, name, camera_ids[key(camera)],
                    pose, path=photo_path(obj.data))
              for obj, (camera, pose), name, image_id in zip(cams, read, names, image_ids)]

    units = {coll.get(UNITS_PROP) for coll in collections} - {None}
    # The source is the .blend file; an unsaved file has none.
    provenance = {**interop.provenance("blender export", bpy.data.filepath or "."),
                  "source": bpy.data.filepath or None}
    points = pointcloud.merge_points(pointcloud.points_from_object(obj) for obj in clouds)
    return Scene(cameras, images, points, units.pop() if len(units) == 1 else "unknown", provenance)

