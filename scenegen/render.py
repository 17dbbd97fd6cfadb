"""Cycles (CPU) renders of generated scenes: photo PNGs plus depth and object-index passes.

Renders are deterministic (fixed seed, no denoising, no adaptive sampling) and noise-free by construction of the
scenes (hard lights, `max_bounces = 0`, see `materials`). The passes come out through a compositor File Output
node as 32-bit EXRs, because Blender-as-a-module does not fill the Viewer image.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import bpy
import numpy as np

from .addon import module
from .rigs import View

if TYPE_CHECKING:  # the add-on's own copy is used at run time (see addon.py); same classes
    from engine.bundle import Camera

NO_HIT = 1e9  # Cycles writes 1e10 as the depth of pixels that see no surface
_PASSES = {"Depth": "Depth", "IndexOB": "Object Index"}  # File Output item -> Render Layers output
_TREE = "scenegen passes"


@dataclass
class Render:
    rgb: np.ndarray  # (H, W, 3) uint8, sRGB as in the PNG
    depth: np.ndarray  # (H, W) float32: camera z (OpenCV axes) of the surface seen, 0 where there is none
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

    Cycles has no lens distortion for perspective cameras, so a distorted perspective model is rendered as an
    undistorted pinhole view covering its field (`_pinhole_proxy`) and resampled through the model.
    """
    bridge = module("bridge.camera")
    png = None if path is None else Path(path)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
    if _distorted_perspective(view.camera):
        proxy, grid = _pinhole_proxy(view.camera)
        proxy_obj = bpy.data.objects.new("scenegen proxy", bpy.data.cameras.new("scenegen proxy"))
        scene.collection.objects.link(proxy_obj)
        try:
            proxy_obj.matrix_world = cam_obj.matrix_world
            bridge.apply_camera(scene, proxy_obj, proxy)
            render = _render(scene, proxy_obj, proxy, None)
        finally:
            data = proxy_obj.data
            bpy.data.objects.remove(proxy_obj)
            bpy.data.cameras.remove(data)
        bridge.apply_camera(scene, cam_obj, view.camera)
        render = _resample(render, grid)
        if png is not None:
            _write_png(png, render.rgb)
            render.path = png
        return render
    bridge.apply_camera(scene, cam_obj, view.camera)  # render size and pixel aspect of this view
    return _render(scene, cam_obj, view.camera, png)


def _render(scene: bpy.types.Scene, cam_obj: bpy.types.Object, camera: Camera, png: Path | None) -> Render:
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
    if cam_obj.data.type == "PANO":  # panoramic cameras write the distance along the ray: convert to camera z
        depth = depth * _ray_z(camera)
    depth = np.where(hit, depth, 0.0).astype(np.float32)
    return Render(rgb, depth, np.rint(np.where(hit, index, 0)).astype(np.int32), png)


def _distorted_perspective(camera: Camera) -> bool:
    return not module("engine.camera_models").get_model(camera.model).fisheye and any(camera.split()[4])


def _pinhole_proxy(camera: Camera) -> tuple[Camera, np.ndarray]:
    """A PINHOLE camera (same focal lengths) whose image covers every ray of `camera`'s pixels, and the (H, W, 2)
    position in the proxy image (pixels, COLMAP convention) of each of `camera`'s pixel centres (NaN: no ray)."""
    import torch

    v, u = np.mgrid[0:camera.height, 0:camera.width] + 0.5
    rays, valid = module("engine.projection").unproject(
        camera.model, torch.tensor(camera.params, dtype=torch.float64), torch.from_numpy(np.stack([u, v], -1)))
    xy = np.where(valid.numpy()[..., None], rays[..., :2].numpy(), np.nan)
    if not np.isfinite(xy).any():
        raise ValueError(f"camera {camera.model} {camera.params}: no pixel has a ray (distortion too strong?)")
    fx, fy, *_ = camera.split()
    lo, hi = np.nanmin(xy.reshape(-1, 2), axis=0), np.nanmax(xy.reshape(-1, 2), axis=0)
    margin = 2  # pixels, so bilinear lookups at the border stay inside
    width, height = (int(np.ceil(f * (b - a))) + 2 * margin for f, a, b in zip((fx, fy), lo, hi))
    cx, cy = margin - fx * lo[0], margin - fy * lo[1]
    proxy = module("engine.bundle").Camera(camera.id, "PINHOLE", width, height, [fx, fy, cx, cy])
    return proxy, np.stack([fx * xy[..., 0] + cx, fy * xy[..., 1] + cy], -1)


def _resample(render: Render, grid: np.ndarray) -> Render:
    """`render` looked up at `grid` (H, W, 2 pixel positions): colours bilinearly; depth (z is unchanged along a
    ray) bilinearly inside surfaces but from the nearest pixel across edges, where blending would invent a
    surface; object index from the nearest pixel."""
    import cv2

    ok = np.isfinite(grid).all(axis=-1)
    maps = np.where(ok[..., None], grid - 0.5, -1.0).astype(np.float32)  # OpenCV puts pixel centres at integers

    def look_up(image, interpolation):
        return cv2.remap(image, maps[..., 0], maps[..., 1], interpolation, borderMode=cv2.BORDER_CONSTANT)

    index = look_up(render.object_index.astype(np.float32), cv2.INTER_NEAREST)
    near, linear = look_up(render.depth, cv2.INTER_NEAREST), look_up(render.depth, cv2.INTER_LINEAR)
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


def _ray_z(camera: Camera) -> np.ndarray:
    """(H, W) z component of the unit ray through each pixel centre (0 where the model has no ray)."""
    import torch

    projection = module("engine.projection")
    v, u = np.mgrid[0:camera.height, 0:camera.width] + 0.5
    rays, valid = projection.unproject_directions(camera.model, torch.tensor(camera.params, dtype=torch.float64),
                                                  torch.from_numpy(np.stack([u, v], -1)))
    return np.where(valid.numpy(), rays[..., 2].numpy(), 0.0)


def render_views(scene: bpy.types.Scene, views: Sequence[View], cam_objects: Sequence[bpy.types.Object],
                 out_dir: str | Path | None = None) -> list[Render]:
    """Render every view; with `out_dir`, photos are written there as `<view name>.png`."""
    return [render_view(scene, obj, view, None if out_dir is None else Path(out_dir) / f"{view.name}.png")
            for view, obj in zip(views, cam_objects)]
