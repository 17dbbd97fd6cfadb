"""Cycles (CPU) renders of generated scenes: photo PNGs plus depth and object-index passes.

Renders are deterministic (fixed seed, no denoising, no adaptive sampling) and noise-free by construction of the
scenes (hard lights, `max_bounces = 0`, see `materials`). The passes come out through a compositor File Output
node as 32-bit EXRs, because Blender-as-a-module does not fill the Viewer image.
"""
from __future__ import annotations

import functools
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import bpy
import numpy as np

from .addon import module
from .rigs import View

if TYPE_CHECKING:  # the add-on's own copy is used at run time (see addon.py); same classes
    from engine.bundle import Camera

NO_HIT = 1e9  # Cycles writes 1e10 as the depth of pixels that see no surface
PROXY_OVERSAMPLING = 2.0  # equidistant proxy pixels per camera pixel where the camera samples most finely
PROXY_MAX_SIZE = 8192  # largest equidistant proxy (pixels across) a camera may need
_MARGIN = 2  # proxy pixels around the camera's rays, so bilinear lookups at the border stay inside
_PASSES = {"Depth": "Depth", "IndexOB": "Object Index"}  # File Output item -> Render Layers output
_TREE = "scenegen passes"


@dataclass
class Render:
    rgb: np.ndarray  # (H, W, 3) uint8, sRGB as in the PNG
    depth: np.ndarray  # (H, W) float32: camera z (OpenCV axes) of the surface seen, 0 where there is none
    # (and where a fisheye's ray is 90 deg or more from the axis: camera z cannot place the point)
    object_index: np.ndarray  # (H, W) int32: pass_index of the object seen, 0 for none
    path: Path | None = None  # the PNG, when written


def configure(scene: bpy.types.Scene, *, samples: int = 16, seed: int = 0) -> None:
    """Cycles on the CPU with fixed seed, no denoising, direct light only, Standard view transform, 8-bit RGB PNG
    output, and the depth / object-index passes wired to a File Output node."""
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = samples
    cycles.seed = seed
    cycles.use_animated_seed = False
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = False
    cycles.max_bounces = 0  # direct light only: the scenes' ambient term is emission (see materials)
    scene.render.use_persistent_data = True  # keep the BVH between the views' renders
    scene.render.film_transparent = False
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    for key in scene.render.bl_rna.properties.keys():  # no date, host or file name in the PNG metadata
        if key.startswith("use_stamp"):
            setattr(scene.render, key, False)
    settings = scene.render.image_settings
    settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "8"
    layer = scene.view_layers[0]
    layer.use_pass_z = True
    layer.use_pass_object_index = True
    tree = bpy.data.node_groups.get(_TREE) or _pass_tree()
    scene.compositing_node_group = tree
    scene.render.use_compositing = True


def _pass_tree() -> bpy.types.NodeTree:
    tree = bpy.data.node_groups.new(_TREE, "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers, output = tree.nodes.new("CompositorNodeRLayers"), tree.nodes.new("NodeGroupOutput")
    tree.links.new(layers.outputs["Image"], output.inputs[0])
    files = tree.nodes.new("CompositorNodeOutputFile")
    files.name = "passes"
    files.format.media_type, files.format.file_format = "IMAGE", "OPEN_EXR"
    files.format.color_depth, files.format.color_mode = "32", "BW"
    files.file_name = ""
    for item, output_name in _PASSES.items():
        files.file_output_items.new("FLOAT", item)
        tree.links.new(layers.outputs[output_name], files.inputs[item])
    return tree


def camera_objects(scene: bpy.types.Scene, views: Sequence[View],
                   collection: bpy.types.Collection | None = None) -> list[bpy.types.Object]:
    """One Blender camera object per view (named after it), set up through `bridge.camera`."""
    bridge = module("bridge.camera")
    collection = collection or scene.collection
    objects = []
    for view in views:
        obj = bpy.data.objects.new(view.name, bpy.data.cameras.new(view.name))
        collection.objects.link(obj)
        bridge.apply_camera(scene, obj, view.camera)
        bridge.apply_pose(obj, view.cam_from_world)
        objects.append(obj)
    return objects


def render_view(scene: bpy.types.Scene, cam_obj: bpy.types.Object, view: View,
                path: str | Path | None = None) -> Render:
    """Render `view` through `cam_obj` (made by `camera_objects`); writes the PNG to `path` when given.

    `cam_obj` is the view's Blender camera (`bridge.camera`). Where that camera does not image exactly like the
    view's engine camera, the view is rendered through an exact proxy camera covering every ray of its pixels and
    resampled through the engine camera (`_resample`): Cycles has no lens distortion for perspective cameras
    (proxy: an undistorted pinhole, `_pinhole_proxy`), and its fisheye cameras are no fisheye model exactly
    (the lens polynomial is a fit; the equidistant camera renders only the image's inscribed circle), so every
    fisheye model goes through a square, centred equidistant proxy covering all its rays (`_equidistant_proxy`).
    So the photos, depth and object index show exactly what the recorded camera sees.
    """
    bridge = module("bridge.camera")
    png = None if path is None else Path(path)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
    proxy_of = _proxy_maker(view.camera)
    if proxy_of is None:
        bridge.apply_camera(scene, cam_obj, view.camera)  # render size and pixel aspect of this view
        return _render(scene, cam_obj, png)
    proxy, grid, oversampling = proxy_of(view.camera)
    proxy_obj = bpy.data.objects.new("scenegen proxy", bpy.data.cameras.new("scenegen proxy"))
    scene.collection.objects.link(proxy_obj)
    filter_width, samples = scene.cycles.filter_width, scene.cycles.samples
    try:
        proxy_obj.matrix_world = cam_obj.matrix_world
        bridge.apply_camera(scene, proxy_obj, proxy)  # the render size, and the pinhole proxy's (exact) camera
        pano = proxy_obj.data.type == "PANO"
        if pano:  # the equidistant proxy: Cycles' equidistant fisheye, exact inside its inscribed circle
            proxy_obj.data.panorama_type = "FISHEYE_EQUIDISTANT"
            proxy_obj.data.fisheye_fov = proxy.width / proxy.params[0]
        # The pixel filter covering the angle it would in a direct render where the camera samples most finely,
        # and as many samples per camera pixel there (each proxy pixel covers 1 / oversampling^2 of one).
        scene.cycles.filter_width = filter_width * oversampling
        scene.cycles.samples = max(1, math.ceil(samples / oversampling ** 2))
        render = _render(scene, proxy_obj, None)
    finally:
        scene.cycles.filter_width, scene.cycles.samples = filter_width, samples
        data = proxy_obj.data
        bpy.data.objects.remove(proxy_obj)
        bpy.data.cameras.remove(data)
    bridge.apply_camera(scene, cam_obj, view.camera)  # leave the view's render size set, as a direct render does
    render = _resample(render, grid)
    if pano:
        render.depth = _camera_z(render.depth, view.camera)
    if png is not None:
        _write_png(png, render.rgb)
        render.path = png
    return render


def _render(scene: bpy.types.Scene, cam_obj: bpy.types.Object, png: Path | None) -> Render:
    """Render through `cam_obj`. The depth is what Cycles writes, 0 where no surface: camera z for perspective
    cameras, the distance along the ray for panoramic ones (`_camera_z` converts)."""
    scene.camera = cam_obj
    work = Path(tempfile.mkdtemp(prefix="scenegen-render-"))
    try:
        target = png if png is not None else work / "photo.png"
        scene.compositing_node_group.nodes["passes"].directory = str(work) + "/"
        scene.render.filepath = str(target)
        bpy.ops.render.render(write_still=True, scene=scene.name)
        rgb = _read_image(target)[..., :3]
        depth = _read_image(work / "Depth.exr")[..., 0]
        index = _read_image(work / "IndexOB.exr")[..., 0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rgb = np.rint(rgb * 255.0).astype(np.uint8)
    hit = depth < NO_HIT
    return Render(rgb, np.where(hit, depth, 0.0).astype(np.float32),
                  np.rint(np.where(hit, index, 0)).astype(np.int32), png)


def _proxy_maker(camera: Camera) -> Callable[[Camera], tuple[Camera, np.ndarray, float]] | None:
    """How to make `camera`'s proxy, or None for an undistorted perspective model (Blender's camera is exact)."""
    if module("engine.camera_models").get_model(camera.model).fisheye:
        return _equidistant_proxy
    return _pinhole_proxy if any(camera.split()[4]) else None


def _pixel_rays(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) unit ray (camera frame) through each pixel centre of `camera`, and (H, W) validity (read-only)."""
    return _rays_of(camera.model, camera.width, camera.height, tuple(camera.params))


@functools.lru_cache(maxsize=2)  # the views of a scene usually share one camera; unprojecting LENS_FIELD is slow
def _rays_of(model: str, width: int, height: int, params: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    v, u = np.mgrid[0:height, 0:width] + 0.5
    rays, valid = module("engine.projection").unproject_directions(
        model, torch.tensor(params, dtype=torch.float64), torch.from_numpy(np.stack([u, v], -1)))
    rays, valid = rays.numpy(), valid.numpy()
    rays.setflags(write=False)
    valid.setflags(write=False)
    return rays, valid


def _pinhole_proxy(camera: Camera) -> tuple[Camera, np.ndarray, float]:
    """A PINHOLE camera (same focal lengths) whose image covers every ray of `camera`'s pixels, the (H, W, 2)
    position in the proxy image (pixels, COLMAP convention) of each of `camera`'s pixel centres (NaN: no ray), and
    the proxy's sampling relative to the camera's at the image centre (1)."""
    rays, valid = _pixel_rays(camera)
    valid = valid & (rays[..., 2] > 0)
    xy = np.where(valid[..., None], rays[..., :2] / np.where(valid, rays[..., 2], 1.0)[..., None], np.nan)
    if not valid.any():
        raise ValueError(f"camera {camera.model} {camera.params}: no pixel has a ray (distortion too strong?)")
    fx, fy, *_ = camera.split()
    lo, hi = np.nanmin(xy.reshape(-1, 2), axis=0), np.nanmax(xy.reshape(-1, 2), axis=0)
    width, height = (int(np.ceil(f * (b - a))) + 2 * _MARGIN for f, a, b in zip((fx, fy), lo, hi))
    cx, cy = _MARGIN - fx * lo[0], _MARGIN - fy * lo[1]
    proxy = module("engine.bundle").Camera(camera.id, "PINHOLE", width, height, [fx, fy, cx, cy])
    return proxy, np.stack([fx * xy[..., 0] + cx, fy * xy[..., 1] + cy], -1), 1.0


def _equidistant_proxy(camera: Camera) -> tuple[Camera, np.ndarray, float]:
    """A square, centred, undistorted OPENCV_FISHEYE camera covering every ray of `camera`'s pixels, the (H, W, 2)
    position in the proxy image of each of `camera`'s pixel centres (NaN: no ray), and PROXY_OVERSAMPLING.

    It is rendered with Cycles' FISHEYE_EQUIDISTANT camera, which is exact (checked against ray casts: an N x N
    render with fisheye_fov F sees, through pixel position p, the ray at angle F / N |p - (N/2, N/2)| from the
    axis towards p's azimuth, also beyond 90 deg; no ray beyond F / 2, i.e. outside the inscribed circle, which
    holds all of `camera`'s rays). It samples the equidistant plane
    PROXY_OVERSAMPLING times more finely than `camera`'s pixels do where they are densest, so resampling does not
    blur, and covers angles up to the widest ray plus a margin, behind the camera too (up to 180 deg).
    """
    rays, valid = _pixel_rays(camera)
    if not valid.any():
        raise ValueError(f"camera {camera.model} {camera.params}: no pixel has a ray (distortion too strong?)")
    x, y, z = np.moveaxis(rays, -1, 0)
    r = np.hypot(x, y)
    theta = np.arctan2(r, z)
    scale = np.where(r > 0, theta / np.where(r > 0, r, 1.0), 1.0)
    plane = np.where(valid[..., None], np.stack([x * scale, y * scale], -1), np.nan)  # (a, b), see engine.projection
    steps = np.concatenate([np.hypot(*np.moveaxis(np.diff(plane, axis=axis), -1, 0)).ravel() for axis in (0, 1)])
    steps = steps[np.isfinite(steps) & (steps > 0)]
    if steps.size == 0:
        raise ValueError(f"camera {camera.model} {camera.params}: too few pixels with a ray for a proxy")
    focal = PROXY_OVERSAMPLING / steps.min()  # proxy pixels per radian on the equidistant plane
    half = int(np.ceil(focal * np.nanmax(np.where(valid, theta, np.nan)))) + _MARGIN
    size = 2 * half
    if size > PROXY_MAX_SIZE:
        raise ValueError(f"camera {camera.model} {camera.params}: an equidistant proxy would need {size}x{size} px "
                         f"(more than {PROXY_MAX_SIZE}); the lens is too compressed somewhere")
    fov = float(np.float32(size / focal))  # what Blender stores (float32), so the grid matches the render
    focal = size / fov
    proxy = module("engine.bundle").Camera(camera.id, "OPENCV_FISHEYE", size, size,
                                           [focal, focal, half, half, 0.0, 0.0, 0.0, 0.0])
    return proxy, focal * plane + half, PROXY_OVERSAMPLING


def _resample(render: Render, grid: np.ndarray) -> Render:
    """`render` looked up at `grid` (H, W, 2 pixel positions): colours bilinearly; depth (camera z or distance,
    the same for the proxy's and the camera's view of a ray) inside surfaces by bilinear interpolation of its
    inverse (linear in the ray direction on a plane, so exact up to the curvature of the ray map, even at grazing
    angles where depth itself curves steeply), but from the nearest pixel across edges, where blending would invent
    a surface; object index from the nearest pixel."""
    import cv2

    ok = np.isfinite(grid).all(axis=-1)
    maps = np.where(ok[..., None], grid - 0.5, -1.0).astype(np.float32)  # OpenCV puts pixel centres at integers

    def look_up(image, interpolation):
        return cv2.remap(image, maps[..., 0], maps[..., 1], interpolation, borderMode=cv2.BORDER_CONSTANT)

    index = look_up(render.object_index.astype(np.float32), cv2.INTER_NEAREST)
    near = look_up(render.depth, cv2.INTER_NEAREST)
    inverse = look_up(np.where(render.depth > 0, 1.0 / np.maximum(render.depth, 1e-30), 0.0).astype(np.float32),
                      cv2.INTER_LINEAR)
    linear = np.where(inverse > 0, 1.0 / np.maximum(inverse, 1e-30), 0.0)
    smooth = (np.abs(linear - near) <= 0.05 * near) & (look_up(render.object_index.astype(np.float32),
                                                                cv2.INTER_LINEAR) == index)
    return Render(look_up(render.rgb, cv2.INTER_LINEAR), np.where(smooth, linear, near).astype(np.float32),
                  np.rint(index).astype(np.int32))


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"{path}: could not write PNG")


def _read_image(path: Path) -> np.ndarray:
    """(H, W, 4) float32 pixels of an image file, top row first (Blender stores them bottom row first)."""
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        width, height = image.size
        pixels = np.empty(width * height * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    return pixels.reshape(height, width, 4)[::-1]


def _camera_z(distance: np.ndarray, camera: Camera) -> np.ndarray:
    """Camera z (float32) of the points at `distance` along `camera`'s pixel rays; 0 where the distance is 0 (no
    surface), where the model has no ray, and where the ray is at 90 deg or more from the optical axis (a fisheye
    sees there, but camera z cannot place the point: `engine.projection.unproject` has no z = 1 ray for it)."""
    rays, valid = _pixel_rays(camera)
    z = distance * np.where(valid, rays[..., 2], 0.0)
    return np.where(z > 0, z, 0.0).astype(np.float32)


def render_views(scene: bpy.types.Scene, views: Sequence[View], cam_objects: Sequence[bpy.types.Object],
                 out_dir: str | Path | None = None) -> list[Render]:
    """Render every view; with `out_dir`, photos are written there as `<view name>.png`."""
    return [render_view(scene, obj, view, None if out_dir is None else Path(out_dir) / f"{view.name}.png")
            for view, obj in zip(views, cam_objects)]
