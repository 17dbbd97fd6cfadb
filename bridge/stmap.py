# SPDX-License-Identifier: GPL-3.0-or-later
"""ST-maps in Blender: the maps of `engine.stmap` written as OpenEXR through bpy, the compositor node group that
distorts a CG render to match the plate, and the overscan render the maps assume.

Files: `camera_<id>_distort.exr` (plate size) and `camera_<id>_undistort.exr` (render size), 32-bit float RGB =
(s, t, valid), Nuke/Blender ST convention (s = x / W, t from the bottom; `engine.stmap`). The node group
"Unposed Lens Distort ..." takes the CG render (made with `overscan`) on its Image input and outputs the plate-sized
distorted image: a Map UV node reads the distort map (in Blender 5.0.1 Map UV samples exactly at s W, (1 - t) H in
COLMAP pixels, no offset: measured, tests/test_blender_lens_carry.py), and Set Alpha masks pixels whose ray the
render does not see. What was made is recorded on each camera's data as JSON in `STMAP_KEY`.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import bpy
import numpy as np

from ..engine import stmap
from ..engine.atomic import atomic_file
from ..engine.bundle import Camera
from ..engine.camera_models import get_model

STMAP_KEY = "unposed_stmap"  # camera data: JSON {distort, undistort, node_group, plate: [W, H], render: [W', H']}
GROUP_PREFIX = "Unposed Lens Distort"


def render_camera(data: bpy.types.Camera, camera: Camera) -> stmap.RenderCamera | None:
    """The render camera (`engine.stmap`) of Blender camera data set up for `camera` by `bridge.camera.apply_camera`,
    at the plate's size; None when Blender shows the lens exactly (a pinhole model, FISHEYE_EQUIDISTANT).

    Fisheye settings are read from the data (float32, as Cycles uses them), so the maps match what renders.
    """
    fx, fy, cx, cy, _ = camera.split()
    if not get_model(camera.model).extra_params:
        return None
    if data.type == "PERSP":
        return stmap.RenderPinhole(camera.width, camera.height, fx, fy, cx, cy)
    if data.type == "PANO" and data.panorama_type == "FISHEYE_LENS_POLYNOMIAL":
        coeffs = tuple(float(getattr(data, f"fisheye_polynomial_k{i}")) for i in range(5))
        return stmap.RenderFisheye(camera.width, camera.height, float(data.sensor_width), fx / fy, coeffs,
                                   float(data.fisheye_fov))
    return None


def write_exr(path: str | os.PathLike, st: np.ndarray) -> None:
    """Write an (H, W, 3) map (row 0 at the top) as a 32-bit float RGB OpenEXR, atomically."""
    height, width, _ = st.shape
    rgba = np.ones((height, width, 4), dtype=np.float32)
    rgba[..., :3] = st
    image = bpy.data.images.new(".unposed_stmap", width, height, alpha=False, float_buffer=True)
    try:
        image.colorspace_settings.name = "Non-Color"  # data: written as is
        image.pixels.foreach_set(rgba[::-1].ravel())  # Blender's rows run bottom-up
        image.file_format = "OPEN_EXR"
        image.use_half_precision = False
        with tempfile.TemporaryDirectory(prefix="unposed-stmap-") as tmp:  # Blender writes, then one atomic copy
            staged = Path(tmp) / "map.exr"
            try:
                image.save(filepath=str(staged))
            except RuntimeError as exc:
                raise OSError(f"{path}: cannot write the ST-map ({exc})") from None
            with atomic_file(path) as f:
                f.write(staged.read_bytes())
    finally:
        bpy.data.images.remove(image)


def load_map(path: str | os.PathLike) -> bpy.types.Image:
    """An ST-map file as a Blender image read as data (no colour transform)."""
    image = bpy.data.images.load(str(path), check_existing=False)
    image.colorspace_settings.name = "Non-Color"
    return image


def distort_group(name: str, distort_map: bpy.types.Image) -> bpy.types.NodeTree:
    """A compositor node group: Image (the CG render, overscan size) -> Image (plate size, distorted like the plate;
    transparent where the render does not see the plate pixel's ray). Kept with a fake user."""
    tree = bpy.data.node_groups.new(name, "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="INPUT", socket_type="NodeSocketColor")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    nodes, links = tree.nodes, tree.links
    group_in, group_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    st = nodes.new("CompositorNodeImage")
    st.image, st.label = distort_map, "ST-map (distort)"
    map_uv = nodes.new("CompositorNodeMapUV")
    map_uv.inputs["Interpolation"].default_value = "Bilinear"
    valid = nodes.new("CompositorNodeSeparateColor")
    mask = nodes.new("CompositorNodeSetAlpha")
    mask.inputs["Type"].default_value = "Apply Mask"
    links.new(group_in.outputs[0], map_uv.inputs["Image"])
    links.new(st.outputs["Image"], map_uv.inputs["UV"])  # colour (s, t, valid) -> vector: Map UV reads (s, t)
    links.new(st.outputs["Image"], valid.inputs["Image"])
    links.new(map_uv.outputs["Image"], mask.inputs["Image"])
    links.new(valid.outputs["Blue"], mask.inputs["Alpha"])
    links.new(mask.outputs["Image"], group_out.inputs[0])
    for i, node in enumerate((group_in, st, map_uv, valid, mask, group_out)):
        node.location = (200.0 * i, -120.0 * (node is st or node is valid))
    tree.use_fake_user = True
    return tree


def write_stmaps(camera: Camera, render: stmap.RenderCamera, folder: str | os.PathLike) -> tuple[stmap.STMaps,
                                                                                               Path, Path]:
    """Compute `camera`'s ST-maps against `render` and write them into `folder`: (maps, distort, undistort path)."""
    maps = stmap.st_maps(camera, render)
    folder = Path(folder)
    paths = folder / f"camera_{camera.id}_distort.exr", folder / f"camera_{camera.id}_undistort.exr"
    write_exr(paths[0], maps.distort)
    write_exr(paths[1], maps.undistort)
    return maps, *paths


def record(data: bpy.types.Camera, maps: stmap.STMaps, distort: Path, undistort: Path, group: str) -> None:
    """Note on camera data which maps and node group belong to it, and the overscan render they assume."""
    height, width = maps.distort.shape[:2]
    data[STMAP_KEY] = json.dumps({"distort": str(distort), "undistort": str(undistort), "node_group": group,
                                  "plate": [width, height], "render": [maps.render.width, maps.render.height]})


@contextlib.contextmanager
def overscan(scene: bpy.types.Scene, cam_obj: bpy.types.Object) -> Iterator[None]:
    """Within the block, the scene renders `cam_obj` as its ST-maps assume: render size grown to the maps' render
    size (100 %), sensor width grown in proportion (same focal length in pixels), shift scaled to the new width so
    the plate's frame stays in the middle. Everything is restored afterwards.

    Raises ValueError when the camera has no ST-maps or the scene does not render at the plate's size.
    """
    data = cam_obj.data
    try:
        info = json.loads(data[STMAP_KEY])
        (width, height), (big_w, big_h) = info["plate"], info["render"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"camera {cam_obj.name!r} has no Unposed ST-maps") from None
    render = scene.render
    size = (render.resolution_x * render.resolution_percentage // 100,
            render.resolution_y * render.resolution_percentage // 100)
    if size != (width, height):
        raise ValueError(f"camera {cam_obj.name!r}: the scene renders {size[0]}x{size[1]} but its ST-maps are for "
                         f"a {width}x{height} plate")
    saved = (render.resolution_x, render.resolution_y, render.resolution_percentage, data.sensor_width,
             data.shift_x, data.shift_y)
    try:
        render.resolution_x, render.resolution_y, render.resolution_percentage = big_w, big_h, 100
        data.sensor_width = saved[3] * big_w / width
        data.shift_x, data.shift_y = saved[4] * width / big_w, saved[5] * width / big_w
        yield
    finally:
        (render.resolution_x, render.resolution_y, render.resolution_percentage, data.sensor_width, data.shift_x,
         data.shift_y) = saved
