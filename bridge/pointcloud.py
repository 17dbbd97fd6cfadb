# SPDX-License-Identifier: GPL-3.0-or-later
"""Point clouds: `engine.ply.Points` <-> Blender objects.

A cloud is a mesh of loose vertices (positions, a byte colour attribute holding the PLY's sRGB bytes exactly,
optional confidence) with a Geometry Nodes modifier (Mesh to Points with a Radius input, then Set Material), so it
renders as spheres in Cycles and EEVEE (Material Preview) with its material reading the colour attribute. Solid
mode draws the points in the object colour: Workbench's "Attribute" colouring covers meshes only, not point clouds
(5.0.1, checked by rendering). Data is written and read in bulk (`foreach_set`/`foreach_get`), never per point.
"""
from __future__ import annotations

from typing import Iterable

import bpy
import numpy as np

from ..engine.ply import Points
from .modifiers import modifier_input

COLOR_ATTR = "Col"  # not "color": Cycles renders an attribute of that name on point clouds black (5.0.1, checked)
CONFIDENCE_ATTR = "confidence"
POINTS_TAG = "unposed_points"  # object custom property marking an Unposed point cloud
NODE_GROUP_NAME = "Unposed Points"
MATERIAL_NAME = "Unposed Point Colour"
RADIUS_INPUT = "Radius"
# Point radius as a fraction of the median point-to-nearest-camera distance: about 2 px at a 1000 px focal length.
RADIUS_FRACTION = 0.002
GREY = 128  # colour given to points of an object that has no colour attribute


def scene_scale(xyz: np.ndarray, camera_centres: np.ndarray, sample: int = 20000) -> float:
    """Typical viewing distance: median distance from a point to its nearest camera centre.

    Without cameras, the median distance of the points to their centroid; without points, the median distance
    of the cameras to theirs; 1.0 when there is nothing to measure. Uses an evenly strided subsample of points.
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    centres = np.asarray(camera_centres, dtype=np.float64).reshape(-1, 3)
    if len(xyz) > sample:
        xyz = xyz[:: len(xyz) // sample][:sample]
    if len(xyz) and len(centres):
        nearest = np.full(len(xyz), np.inf)
        for start in range(0, len(centres), 64):  # chunks keep the (points, cameras) matrix small
            d = np.linalg.norm(xyz[:, None, :] - centres[None, start:start + 64, :], axis=2)
            nearest = np.minimum(nearest, d.min(axis=1))
        scale = float(np.median(nearest))
    else:
        pts = xyz if len(xyz) else centres
        scale = float(np.median(np.linalg.norm(pts - pts.mean(axis=0), axis=1))) if len(pts) > 1 else 0.0
    return scale if np.isfinite(scale) and scale > 0 else 1.0


def _node_group() -> bpy.types.NodeTree:
    """The shared Geometry Nodes group: Mesh to Points (radius from the modifier input) -> Set Material."""
    for group in bpy.data.node_groups:
        if group.get(POINTS_TAG) and group.bl_idname == "GeometryNodeTree":
            return group
    group = bpy.data.node_groups.new(NODE_GROUP_NAME, "GeometryNodeTree")
    group[POINTS_TAG] = True
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    radius = group.interface.new_socket(RADIUS_INPUT, in_out="INPUT", socket_type="NodeSocketFloat")
    radius.default_value, radius.min_value, radius.subtype = 0.01, 0.0, "DISTANCE"
    radius.force_non_field = True
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    to_points.mode = "VERTICES"
    set_mat = nodes.new("GeometryNodeSetMaterial")
    set_mat.inputs["Material"].default_value = _material()
    for i, node in enumerate((g_in, to_points, set_mat, g_out)):
        node.location = (220 * i, 0)
    links.new(g_in.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(g_in.outputs[RADIUS_INPUT], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], set_mat.inputs["Geometry"])
    links.new(set_mat.outputs["Geometry"], g_out.inputs["Geometry"])
    return group


def _material() -> bpy.types.Material:
    """The shared material: base colour from the point colour attribute (Cycles, EEVEE, Material preview)."""
    for mat in bpy.data.materials:
        if mat.get(POINTS_TAG):
            return mat
    mat = bpy.data.materials.new(MATERIAL_NAME)
    mat[POINTS_TAG] = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 1.0  # photo colours already hold the lighting: diffuse only
    bsdf.inputs["Specular IOR Level"].default_value = 0.0
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_type, attr.attribute_name = "GEOMETRY", COLOR_ATTR
    attr.location = (bsdf.location.x - 250, bsdf.location.y)
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def points_object(name: str, points: Points, radius: float) -> bpy.types.Object:
    """A new (unlinked) point cloud object; `radius` is the rendered point radius in scene units."""
    n = len(points)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    mesh.attributes["position"].data.foreach_set("vector", points.xyz.ravel())
    rgba = np.empty((n, 4), dtype=np.float32)
    rgba[:, :3] = points.rgb
    rgba[:, 3] = 255.0
    rgba *= 1.0 / 255.0
    # 'color_srgb' stores the bytes as given (sRGB), so uint8 colours round-trip exactly.
    mesh.attributes.new(COLOR_ATTR, "BYTE_COLOR", "POINT").data.foreach_set("color_srgb", rgba.ravel())
    if points.confidence is not None:
        mesh.attributes.new(CONFIDENCE_ATTR, "FLOAT", "POINT").data.foreach_set("value", points.confidence)
    colors = mesh.color_attributes
    colors.active_color = colors[COLOR_ATTR]
    colors.render_color_index = colors.active_color_index
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    obj[POINTS_TAG] = True
    mod = obj.modifiers.new("Points", "NODES")
    mod.node_group = _node_group()
    set_radius(obj, radius)
    return obj


def _radius_key(obj: bpy.types.Object) -> tuple[bpy.types.NodesModifier, str]:
    return modifier_input(obj, POINTS_TAG, RADIUS_INPUT)


def set_radius(obj: bpy.types.Object, radius: float) -> None:
    """Set the rendered point radius (the modifier's Radius input)."""
    mod, key = _radius_key(obj)
    mod[key] = float(radius)
    obj.update_tag()


def get_radius(obj: bpy.types.Object) -> float:
    mod, key = _radius_key(obj)
    return float(mod[key])


def is_point_cloud(obj: bpy.types.Object) -> bool:
    return bool(obj.get(POINTS_TAG)) and obj.type in ("MESH", "POINTCLOUD")


def _colour_attribute(data: bpy.types.ID):
    attrs = data.attributes
    attr = attrs.get(COLOR_ATTR)
    if attr is None and hasattr(data, "color_attributes") and data.color_attributes.active_color is not None:
        attr = data.color_attributes.active_color
    if attr is None:
        attr = next((a for a in attrs if a.data_type in ("BYTE_COLOR", "FLOAT_COLOR") and a.domain == "POINT"), None)
    if attr is not None and (attr.domain != "POINT" or attr.data_type not in ("BYTE_COLOR", "FLOAT_COLOR")):
        return None
    return attr


def points_from_object(obj: bpy.types.Object) -> Points:
    """The points of a mesh (its vertices) or point cloud object, in world coordinates.

    Colour comes from the COLOR_ATTR attribute, else the active colour attribute, else any per-point colour
    attribute, as sRGB bytes; objects without one get grey.
    """
    if obj.type not in ("MESH", "POINTCLOUD"):
        raise ValueError(f"object {obj.name!r} is a {obj.type.lower()}, not a mesh or point cloud")
    data = obj.data
    n = len(data.vertices) if obj.type == "MESH" else len(data.points)
    xyz = np.empty(n * 3, dtype=np.float32)
    data.attributes["position"].data.foreach_get("vector", xyz)
    m = np.array(obj.matrix_world, dtype=np.float64)
    world = xyz.reshape(-1, 3).astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    attr = _colour_attribute(data)
    if attr is None:
        rgb = np.full((n, 3), GREY, dtype=np.uint8)
    else:
        rgba = np.empty(n * 4, dtype=np.float32)
        attr.data.foreach_get("color_srgb", rgba)  # sRGB-encoded for byte and (scene-linear) float colours alike
        rgb = np.rint(np.clip(rgba.reshape(-1, 4)[:, :3], 0.0, 1.0) * 255.0).astype(np.uint8)
    conf = data.attributes.get(CONFIDENCE_ATTR)
    confidence = None
    if conf is not None and conf.data_type == "FLOAT" and conf.domain == "POINT":
        confidence = np.empty(n, dtype=np.float32)
        conf.data.foreach_get("value", confidence)
    return Points(world.astype(np.float32), rgb, confidence)


def merge_points(clouds: Iterable[Points]) -> Points | None:
    """One Points from several (confidence kept only when every cloud has it); None for no clouds."""
    clouds = list(clouds)
    if not clouds:
        return None
    if len(clouds) == 1:
        return clouds[0]
    conf = None
    if all(c.confidence is not None for c in clouds):
        conf = np.concatenate([c.confidence for c in clouds])
    return Points(np.concatenate([c.xyz for c in clouds]), np.concatenate([c.rgb for c in clouds]), conf)
