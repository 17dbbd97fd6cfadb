# SPDX-License-Identifier: GPL-3.0-or-later
"""A scene bundle (`engine.bundle.Scene`) becomes a collection of Blender cameras with their photos and a point cloud.

Everything is validated before Blender data is touched; the new objects are built unlinked and only linked into
the scene once all of them exist, and any failure while building removes every datablock it created and restores
the render settings, so the file is left as it was. Importing again from the same source replaces the Unposed objects
of the collection imported
from it earlier (and their orphaned cameras, meshes, photos and clips) and leaves everything else alone.

Lenses Blender's scene camera cannot show exactly (every distorted perspective model, fisheye polynomial fits,
LENS_FIELD) get, with `stmap_dir`, a pair of ST-maps per bundle camera written there and a compositor node group
that distorts CG through them (`bridge.stmap`); a group from an earlier import of the same source is replaced
in place (its users keep the new one). What Blender made of each lens, with the fisheye fit's RMS error, is kept
as one line of text on the collection (`lens_summary`).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from ..engine.bundle import Scene, check_pose
from ..engine.camera_models import check_params
from ..engine.errors import BundleError, CameraModelError
from ..engine.pose import camera_center
from ..engine.stmap import STMaps
from . import camera as camera_bridge
from . import pointcloud, stmap

SOURCE_PROP = "unposed_source"  # on the collection and on each object it imported: what was imported
UNITS_PROP = "unposed_units"  # on the collection: the bundle's units
IMAGE_ID_PROP, IMAGE_NAME_PROP, CAMERA_ID_PROP = "unposed_image_id", "unposed_image_name", "unposed_camera_id"
NO_PHOTO_PROP = "unposed_no_photo"  # on a lens clip made for an image without a photo (its frame is blank)
LENS_SUMMARY_PROP = "unposed_lens_summary"  # on the collection: what Blender made of each lens (`lens_summary`)
CAMERA_DISPLAY_FRACTION = 0.1  # camera display size as a fraction of the scene scale (pointcloud.scene_scale)
ASPECT_TOLERANCE = 0.01  # relative difference allowed between a photo's aspect ratio and its camera's

_RENDER_KEYS = ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y")
# The datablock collections an import may add to (rolled back on failure).
_ID_COLLECTIONS = ("objects", "cameras", "meshes", "images", "movieclips", "materials", "node_groups", "collections")


def photo_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding the pixels; None for other formats."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        while True:  # walk the JPEG segments to the first start-of-frame marker (ITU T.81, B.1.1.3)
            marker = f.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                raise BundleError(f"{path}: corrupt JPEG header")
            kind = marker[1]
            if kind == 0xFF:  # fill byte
                f.seek(-1, 1)
                continue
            length = struct.unpack(">H", f.read(2))[0]
            if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">xHH", f.read(5))
                return width, height
            f.seek(length - 2, 1)


def _check_photo(path: Path, camera, where: str) -> None:
    if not path.is_file():
        raise BundleError(f"{where}: photo {str(path)!r} not found")
    try:
        size = photo_size(path)
    except (OSError, struct.error) as exc:
        raise BundleError(f"{where}: photo {str(path)!r} cannot be read ({exc})") from None
    if size is None:  # another format: let Blender decode it to find out
        image = bpy.data.images.load(str(path), check_existing=True)
        size = tuple(image.size)
    if size[0] <= 0 or size[1] <= 0:
        raise BundleError(f"{where}: photo {str(path)!r} is not a readable image")
    aspect, expected = size[0] / size[1], camera.width / camera.height
    if abs(aspect - expected) > ASPECT_TOLERANCE * expected:
        raise BundleError(f"{where}: photo {str(path)!r} is {size[0]}x{size[1]} px but its camera {camera.id} is "
                          f"{camera.width}x{camera.height} px (aspect ratios differ)")


def validate(scene: Scene) -> None:
    """Raise BundleError naming the first problem: camera models and parameters, poses, photos."""
    for cam in scene.cameras.values():
        try:
            check_params(cam.model, cam.params)
        except CameraModelError as exc:
            raise BundleError(f"camera {cam.id}: {exc}") from None
        if int(cam.width) <= 0 or int(cam.height) <= 0:
            raise BundleError(f"camera {cam.id}: width and height must be positive, got {cam.width}x{cam.height}")
    if not scene.images:
        raise BundleError("the scene has no images, so there are no cameras to import")
    for image in scene.images:
        where = f"image {image.name!r}"
        if image.camera_id not in scene.cameras:
            raise BundleError(f"{where}: camera_id {image.camera_id} names no camera")
        check_pose(image.cam_from_world, f"{where}: cam_from_world")
        if image.path is not None:
            _check_photo(Path(image.path), scene.camera_of(image), where)


def find_imported(source: str) -> bpy.types.Collection | None:
    """The collection imported earlier from `source`, if any."""
    return next((c for c in bpy.data.collections if c.get(SOURCE_PROP) == source), None)


def _snapshot() -> dict[str, set[int]]:
    return {name: {idb.session_uid for idb in getattr(bpy.data, name)} for name in _ID_COLLECTIONS}


def _remove_new(before: dict[str, set[int]]) -> None:
    """Remove every datablock created since `before` was taken."""
    new = [idb for name in _ID_COLLECTIONS for idb in getattr(bpy.data, name) if idb.session_uid not in before[name]]
    bpy.data.batch_remove(new)


def _photo_datablocks(cam_data: bpy.types.Camera) -> list[bpy.types.ID]:
    out = []
    for bg in cam_data.background_images:
        out += [idb for idb in (bg.image, bg.clip) if idb is not None]
    return out


def _remove_imported_objects(collection: bpy.types.Collection) -> None:
    """Remove the objects an earlier import put in `collection`, then their data that nothing else uses."""
    old = [obj for obj in collection.objects if obj.get(SOURCE_PROP) is not None]
    data = [obj.data for obj in old if obj.data is not None]
    photos = {idb.session_uid: idb for d in data if isinstance(d, bpy.types.Camera) for idb in _photo_datablocks(d)}
    bpy.data.batch_remove(old)
    bpy.data.batch_remove([d for d in data if d.users == 0])
    bpy.data.batch_remove([idb for idb in photos.values() if idb.users == 0])


def _camera_object(context: bpy.types.Context, scene: Scene, image, display_size: float,
                   clip_range: tuple[float, float], source: str, set_resolution: bool) -> bpy.types.Object:
    camera = scene.camera_of(image)
    cam_obj = bpy.data.objects.new(image.name, bpy.data.cameras.new(image.name))
    cam_data = cam_obj.data
    try:
        camera_bridge.apply_camera(context.scene, cam_obj, camera, set_resolution=set_resolution,
                                   image_path=image.path)
    except (ValueError, CameraModelError) as exc:  # e.g. a photo the movie clip loader refuses
        raise BundleError(f"image {image.name!r}: {exc}") from None
    camera_bridge.apply_pose(cam_obj, image.cam_from_world)
    cam_data.display_size = display_size
    cam_data.clip_start, cam_data.clip_end = clip_range
    clip_entry = next((bg for bg in cam_data.background_images if bg.source == "MOVIE_CLIP"), None)
    if clip_entry is not None:  # distortion: the clip shows the photo undistorted, like the pinhole camera sees it
        clip_entry.clip_user.use_render_undistorted = True
        if image.path is None:
            clip_entry.clip[NO_PHOTO_PROP] = True  # a blank frame that only carries the lens
    elif image.path is not None:
        bg = cam_data.background_images.new()
        bg.source, bg.image = "IMAGE", bpy.data.images.load(str(image.path), check_existing=True)
    for bg in cam_data.background_images:
        bg.frame_method = "STRETCH"  # the photo covers the camera frame exactly (also with non-square pixels)
    cam_data.show_background_images = len(cam_data.background_images) > 0
    cam_obj[SOURCE_PROP] = source
    cam_obj[IMAGE_ID_PROP], cam_obj[IMAGE_NAME_PROP] = int(image.id), image.name
    cam_obj[CAMERA_ID_PROP] = int(camera.id)
    return cam_obj


def _build(context: bpy.types.Context, scene: Scene, name: str, source: str) -> list[bpy.types.Object]:
    centres = np.array([camera_center(im.cam_from_world) for im in scene.images])
    xyz = scene.points.xyz if scene.points is not None else np.zeros((0, 3))
    scale = pointcloud.scene_scale(xyz, centres)
    display = min(max(CAMERA_DISPLAY_FRACTION * scale, 0.01), 1000.0)
    clip_range = (max(scale * 1e-3, 1e-6), scale * 1e3)
    objects = [_camera_object(context, scene, image, display, clip_range, source, set_resolution=(i == 0))
               for i, image in enumerate(scene.images)]
    if scene.points is not None:
        cloud = pointcloud.points_object(f"{name} points", scene.points, pointcloud.RADIUS_FRACTION * scale)
        cloud[SOURCE_PROP] = source
        objects.append(cloud)
    return objects


@dataclass
class _LensMaps:
    """ST-maps written for one bundle camera, its distort node group and the Blender cameras that use them."""
    camera_id: int
    maps: STMaps
    paths: tuple[Path, Path]  # distort, undistort
    name: str  # the node group's name
    objects: list[bpy.types.Object]
    image: bpy.types.Image  # the distort map, as the group reads it
    group: bpy.types.NodeTree


def _lenses(scene: Scene, cameras: list[bpy.types.Object], name: str,
            stmap_dir: Path | None) -> tuple[str, list[_LensMaps]]:
    """For each bundle camera whose lens Blender cannot show exactly: a line of the lens summary and, with
    `stmap_dir`, its ST-maps and distort node group."""
    by_camera: dict[int, list[bpy.types.Object]] = {}
    for obj in cameras:
        by_camera.setdefault(int(obj[CAMERA_ID_PROP]), []).append(obj)
    lines, made = [], []
    for cid, objs in by_camera.items():
        camera, data = scene.cameras[cid], objs[0].data
        render = stmap.render_camera(data, camera)
        if render is None:
            continue
        line = f"camera {cid} {camera.model}: " + ("Cycles fisheye polynomial" if data.type == "PANO"
                                                   else "pinhole + lens clip")
        rms = data.get(camera_bridge.FIT_RMS_KEY)
        if rms is not None:
            line += f", fit RMS {rms:.2f} px"
        if stmap_dir is not None:
            maps, distort, undistort = stmap.write_stmaps(camera, render, stmap_dir)
            group_name = f"{stmap.GROUP_PREFIX} {name} camera {cid}"
            image = stmap.load_map(distort)
            made.append(_LensMaps(cid, maps, (distort, undistort), group_name, objs, image,
                                  stmap.distort_group(group_name, image)))
            line += f", ST-maps for a {maps.render.width}x{maps.render.height} render"
        lines.append(line)
    return "; ".join(lines), made


def _place_lens_groups(made: list[_LensMaps], source: str) -> None:
    """Tag the new distort groups, hand them the users of the groups an earlier import of `source` made (then
    removed with their maps' images), give them their names and note them on their cameras."""
    new = {lens.group.session_uid for lens in made}
    old = [g for g in bpy.data.node_groups if g.get(SOURCE_PROP) == source and g.session_uid not in new]
    images = [n.image for g in old for n in g.nodes if n.bl_idname == "CompositorNodeImage" and n.image is not None]
    for lens in made:
        for group in old:
            if group.get(CAMERA_ID_PROP) == lens.camera_id:
                group.user_remap(lens.group)
    bpy.data.batch_remove(old)
    bpy.data.batch_remove([image for image in {i.session_uid: i for i in images}.values() if image.users == 0])
    for lens in made:
        group = lens.group
        group.name = lens.name  # free now if an earlier import held it
        group[SOURCE_PROP], group[CAMERA_ID_PROP] = source, lens.camera_id
        lens.image.name = lens.paths[0].name
        for obj in lens.objects:
            stmap.record(obj.data, lens.maps, *lens.paths, group.name)


def lens_summary(collection: bpy.types.Collection) -> str:
    """What the import made of each lens Blender cannot show exactly (fit RMS, ST-maps), or ''."""
    return str(collection.get(LENS_SUMMARY_PROP, ""))


def _in_scene(collection: bpy.types.Collection, scene: bpy.types.Scene) -> bool:
    return collection == scene.collection or collection in scene.collection.children_recursive


def import_bundle(context: bpy.types.Context, scene: Scene, name: str, source: str,
                  stmap_dir: str | os.PathLike | None = None) -> bpy.types.Collection:
    """Import `scene` as cameras (one per image, photo as background) and its point cloud; returns the collection.

    `source` identifies what was imported (e.g. the resolved input path): the collection imported earlier from
    the same source gets its Unposed objects replaced instead of a new collection being made. The scene's active
    camera becomes the first image's camera and the render resolution follows its camera. With `stmap_dir` (e.g.
    `<bundle>/stmaps`), lenses Blender cannot show exactly get ST-maps written there and a distort node group
    (module docstring); `lens_summary(collection)` says what was made. Raises BundleError (naming the problem) or
    OSError (ST-maps not writable) with the Blender file unchanged (ST-map files already written stay).
    """
    before = _snapshot()
    render = context.scene.render
    render_before = {key: getattr(render, key) for key in _RENDER_KEYS}
    try:
        validate(scene)  # may load a photo of a format it cannot size from its header
        objects = _build(context, scene, name, source)
        summary, lenses = _lenses(scene, [obj for obj in objects if obj.type == "CAMERA"], name,
                                  None if stmap_dir is None else Path(stmap_dir))
    except BaseException:
        _remove_new(before)
        for key, value in render_before.items():
            setattr(render, key, value)
        raise
    collection = find_imported(source)
    if collection is None:
        collection = bpy.data.collections.new(name)
        collection[SOURCE_PROP] = source
    else:
        _remove_imported_objects(collection)
    collection[UNITS_PROP] = scene.units
    collection[LENS_SUMMARY_PROP] = summary
    _place_lens_groups(lenses, source)
    if not _in_scene(collection, context.scene):
        context.scene.collection.children.link(collection)
    for obj in objects:
        collection.objects.link(obj)
    names = [image.name for image in scene.images] + ([f"{name} points"] if scene.points is not None else [])
    for obj, wanted in zip(objects, names):
        if obj.name != wanted:  # created while the replaced objects still held the name
            for idb in _photo_datablocks(obj.data) if obj.type == "CAMERA" else ():
                if isinstance(idb, bpy.types.MovieClip) and idb.name.startswith(obj.name):  # its lens clip
                    idb.name = wanted + idb.name[len(obj.name):]
            obj.name = obj.data.name = wanted
    context.scene.camera = objects[0]
    return collection
