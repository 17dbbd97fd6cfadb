"""Procedural scenes with known geometry: a Manhattan room, an object-centric tabletop, and a richly textured
tabletop for feature matching.

Builders create meshes at their true size (object scale 1, so the object-space textures of `materials` are in
metres), one light, and return a `BuiltScene` that says what to sample for the point cloud and where cameras
belong. Everything random comes from `numpy.random.default_rng(seed)`, so a (kind, seed) pair is one scene.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import bmesh
import bpy
import numpy as np

from .materials import surface_material

WORLD_COLOUR = (0.55, 0.6, 0.65, 1.0)  # linear RGB of the object scene's plain background


@dataclass
class BuiltScene:
    kind: str
    seed: int
    collection: bpy.types.Collection
    objects: list[bpy.types.Object]  # the surfaces (pass_index = position + 1); the point cloud is sampled on these
    target: np.ndarray  # (3,) world point the camera rigs look at
    ring: tuple[float, float]  # semi-axes (x, y) of the ellipse around `target` that camera rigs stand on
    heights: tuple[float, float]  # range of camera heights (world z)
    look_jitter: float  # how far (metres) rigs move each camera's look-at point from `target`


def build_scene(kind: str, seed: int = 0, scene: bpy.types.Scene | None = None) -> BuiltScene:
    """Build scene `kind` ('room', 'object' or 'textured') into `scene` (default: the context scene, expected empty)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown scene kind {kind!r}; known kinds: {', '.join(BUILDERS)}")
    scene = scene or bpy.context.scene
    collection = bpy.data.collections.new(f"scenegen_{kind}")
    scene.collection.children.link(collection)
    built = BUILDERS[kind](collection, seed, scene)
    for index, obj in enumerate(built.objects, start=1):
        obj.pass_index = index  # lets the renderer's object-index pass tell surfaces apart
    return built


def _mesh_object(collection, name: str, bm: bmesh.types.BMesh, location, material) -> bpy.types.Object:
    mesh = bpy.data.meshes.new(name)
    bm.to_mesh(mesh)
    bm.free()
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = tuple(float(v) for v in location)
    collection.objects.link(obj)
    return obj


def box(collection, name: str, size, centre, material) -> bpy.types.Object:
    """An axis-aligned box of `size` (x, y, z metres) centred on `centre`."""
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.scale(bm, vec=tuple(float(s) for s in size), verts=bm.verts)
    return _mesh_object(collection, name, bm, centre, material)


def plane(collection, name: str, corners, material) -> bpy.types.Object:
    """A quad through four world-space `corners` (in order around the quad)."""
    corners = np.asarray(corners, dtype=np.float64)
    centre = corners.mean(axis=0)
    bm = bmesh.new()
    bm.faces.new([bm.verts.new(tuple(c - centre)) for c in corners])
    return _mesh_object(collection, name, bm, centre, material)


def cylinder(collection, name: str, radius: float, height: float, base, material, *,
             top_radius: float | None = None, segments: int = 24) -> bpy.types.Object:
    """An upright cylinder (or cone / frustum with `top_radius`) standing on `base`."""
    bm = bmesh.new()
    bmesh.ops.create_cone(bm, cap_ends=True, segments=segments, radius1=radius,
                          radius2=radius if top_radius is None else top_radius, depth=height)
    base = np.asarray(base, dtype=np.float64)
    return _mesh_object(collection, name, bm, base + [0, 0, height / 2], material)


def sphere(collection, name: str, radius: float, centre, material) -> bpy.types.Object:
    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=radius)
    return _mesh_object(collection, name, bm, centre, material)


def _light(collection, name: str, kind: str, location, energy: float, rotation=(0.0, 0.0, 0.0)) -> bpy.types.Object:
    """A hard light (zero size: no sampling noise)."""
    light = bpy.data.lights.new(name, kind)
    light.energy = energy
    if kind == "SUN":
        light.angle = 0.0
    else:
        light.shadow_soft_size = 0.0
    obj = bpy.data.objects.new(name, light)
    obj.location, obj.rotation_euler = location, rotation
    collection.objects.link(obj)
    return obj


def _place_boxes(rng, count: int, region_min, region_max, sizes, taken: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to `count` non-overlapping floor footprints (centre xy, size xy) inside a region (rejection sampling)."""
    placed = []
    for _ in range(count * 30):
        if len(placed) == count:
            break
        size = rng.uniform(*sizes, size=2)
        centre = rng.uniform(np.asarray(region_min) + size / 2, np.asarray(region_max) - size / 2)
        if all(np.any(np.abs(centre - c) > (size + s) / 2 + 0.1) for c, s in taken + placed):
            placed.append((centre, size))
    taken.extend(placed)
    return placed


def build_room(collection: bpy.types.Collection, seed: int, scene: bpy.types.Scene) -> BuiltScene:
    """A closed room (floor, ceiling, four walls) with boxes along the walls and in the middle, and framed panels
    on the walls: long straight edges in the three Manhattan directions, a different texture on every surface."""
    rng = np.random.default_rng(seed)
    hx, hy, h = rng.uniform(3.5, 4.5), rng.uniform(3.0, 3.8), rng.uniform(2.6, 3.2)
    objects = []
    pattern_scale = {"floor": 1.5, "ceiling": 1.0}

    def mat(name, pattern=None):
        return surface_material(name, rng, pattern, pattern_scale.get(name))

    objects.append(plane(collection, "floor", [(-hx, -hy, 0), (hx, -hy, 0), (hx, hy, 0), (-hx, hy, 0)],
                         mat("floor", rng.choice(["checker", "cells", "bricks"]))))
    objects.append(plane(collection, "ceiling", [(-hx, -hy, h), (-hx, hy, h), (hx, hy, h), (hx, -hy, h)],
                         mat("ceiling", "blobs")))
    walls = {"wall_south": ((-hx, -hy), (hx, -hy)), "wall_east": ((hx, -hy), (hx, hy)),
             "wall_north": ((hx, hy), (-hx, hy)), "wall_west": ((-hx, hy), (-hx, -hy))}
    for name, (a, b) in walls.items():
        objects.append(plane(collection, name, [(*a, 0), (*b, 0), (*b, h), (*a, h)], mat(name)))
        # Framed panels (pictures, doors): thin boxes standing 3 cm proud of the wall.
        a, b = np.asarray(a), np.asarray(b)
        along = (b - a) / np.linalg.norm(b - a)
        inward = np.array([-along[1], along[0]])
        length = np.linalg.norm(b - a)
        for k in range(int(rng.integers(1, 3))):
            width, height = rng.uniform(0.6, 1.4), rng.uniform(0.5, 1.2)
            pos = a + along * (length * (k + 1) / 3 + rng.uniform(-0.3, 0.3))
            z = rng.uniform(1.0, h - 0.3 - height / 2)
            size = np.abs(along) * width + np.abs(inward) * 0.06
            objects.append(box(collection, f"{name}_panel{k}", (*size, height), (*pos, z),
                               mat(f"{name}_panel{k}")))
    taken: list = []
    along_walls = []
    for side in range(4):  # boxes in a 1.25 m band along each wall (the camera ring stays clear of it)
        lo, hi = [-hx + 0.05, -hy + 0.05], [hx - 0.05, hy - 0.05]
        axis = side % 2
        if side < 2:
            lo[axis] = hi[axis] - 1.2
        else:
            hi[axis] = lo[axis] + 1.2
        along_walls += _place_boxes(rng, int(rng.integers(1, 3)), lo, hi, (0.35, 1.1), taken)
    middle = _place_boxes(rng, 2, (-0.45, -0.45), (0.45, 0.45), (0.3, 0.45), taken)
    heights = [(0.3, 1.3)] * len(along_walls) + [(0.2, 0.6)] * len(middle)  # low in the middle: seen over
    for i, ((centre, size), height_range) in enumerate(zip(along_walls + middle, heights)):
        height = rng.uniform(*height_range)
        objects.append(box(collection, f"box{i}", (*size, height), (*centre, height / 2), mat(f"box{i}")))
        if rng.uniform() < 0.35:  # a smaller box stacked on top
            top = size * rng.uniform(0.45, 0.8, size=2)
            th = rng.uniform(0.2, 0.5)
            objects.append(box(collection, f"box{i}_top", (*top, th), (*centre, height + th / 2),
                               mat(f"box{i}_top")))
    # One point light under the ceiling; power so that a white wall 3 m away reads about 0.6 (radiance = E / pi).
    _light(collection, "lamp", "POINT", (0.0, 0.0, h - 0.25), 0.6 * 4 * np.pi ** 2 * 9.0)
    _set_world(scene, (0.0, 0.0, 0.0, 1.0))
    return BuiltScene("room", seed, collection, objects, np.array([0.0, 0.0, 1.0]),
                      (hx - 1.5, hy - 1.5), (1.1, 1.8), 1.0)


def build_object(collection: bpy.types.Collection, seed: int, scene: bpy.types.Scene) -> BuiltScene:
    """A group of textured primitives (boxes, cylinder, cone, sphere) on a textured ground square, seen from
    around; the background is a plain colour."""
    rng = np.random.default_rng(seed)
    objects = [plane(collection, "ground", [(-4, -4, 0), (4, -4, 0), (4, 4, 0), (-4, 4, 0)],
                     surface_material("ground", rng, rng.choice(["checker", "cells"]), 1.2))]
    taken: list = []
    shapes = ["box", "box", "cylinder", "cone", "sphere"]
    rng.shuffle(shapes)
    for i, (centre, size) in enumerate(_place_boxes(rng, len(shapes), (-1.3, -1.3), (1.3, 1.3), (0.4, 0.8), taken)):
        name, material = f"{shapes[i]}{i}", surface_material(f"{shapes[i]}{i}", rng, scale=rng.uniform(4, 8))
        r = float(size.min()) / 2
        if shapes[i] == "box":
            height = rng.uniform(0.3, 0.9)
            objects.append(box(collection, name, (*size, height), (*centre, height / 2), material))
        elif shapes[i] == "cylinder":
            objects.append(cylinder(collection, name, r, rng.uniform(0.4, 1.0), (*centre, 0), material))
        elif shapes[i] == "cone":
            objects.append(cylinder(collection, name, r, rng.uniform(0.5, 1.0), (*centre, 0), material,
                                    top_radius=0.0))
        else:
            objects.append(sphere(collection, name, r, (*centre, r), material))
    elevation, azimuth = np.radians(rng.uniform(40, 65)), rng.uniform(0, 2 * np.pi)
    _light(collection, "sun", "SUN", (0.0, 0.0, 5.0), 2.0,
           (np.pi / 2 - elevation, 0.0, azimuth))
    _set_world(scene, WORLD_COLOUR)
    return BuiltScene("object", seed, collection, objects, np.array([0.0, 0.0, 0.35]), (3.6, 3.6), (1.2, 2.6), 0.3)


def build_textured(collection: bpy.types.Collection, seed: int, scene: bpy.types.Scene) -> BuiltScene:
    """Boxes, a cylinder and a ball on a ground square, every surface a two-colour multi-octave noise texture
    ("blobs"), which SIFT finds plenty of distinctive features in (the checkerboards and stripes of "object"
    and "room" are repetitive); a hard sun, black background."""
    rng = np.random.default_rng(seed)

    def blobs(name: str, scale: float):
        return surface_material(name, rng, "blobs", scale)

    objects = [plane(collection, "ground", [(-4, -4, 0), (4, -4, 0), (4, 4, 0), (-4, 4, 0)], blobs("ground", 5.0))]
    spots = np.array([(-0.7, -0.6), (0.7, -0.5), (-0.5, 0.7), (0.6, 0.6)]) + rng.uniform(-0.15, 0.15, (4, 2))
    for i, (x, y) in enumerate(spots):
        name, size = f"shape{i}", rng.uniform(0.4, 0.7)
        if i == 2:
            objects.append(cylinder(collection, name, size / 2, rng.uniform(0.5, 1.0), (x, y, 0), blobs(name, 10.0)))
        elif i == 3:
            objects.append(sphere(collection, name, size / 2, (x, y, size / 2), blobs(name, 10.0)))
        else:
            height = rng.uniform(0.4, 0.9)
            objects.append(box(collection, name, (size, rng.uniform(0.4, 0.7), height), (x, y, height / 2),
                               blobs(name, 10.0)))
    _light(collection, "sun", "SUN", (0.0, 0.0, 5.0), 2.0,
           (np.radians(rng.uniform(25, 50)), 0.0, rng.uniform(0, 2 * np.pi)))
    _set_world(scene, (0.0, 0.0, 0.0, 1.0))
    return BuiltScene("textured", seed, collection, objects, np.array([0.0, 0.0, 0.35]), (3.4, 3.4), (1.3, 2.4), 0.3)


def _set_world(scene, colour) -> None:
    """A background seen only by camera rays, so it lights nothing (no sampling noise)."""
    world = bpy.data.worlds.new("scenegen_world")
    world.cycles.sampling_method = "NONE"
    nodes, links = world.node_tree.nodes, world.node_tree.links
    nodes.clear()
    seen, unseen = nodes.new("ShaderNodeBackground"), nodes.new("ShaderNodeBackground")
    seen.inputs["Color"].default_value = colour
    unseen.inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
    path, mix = nodes.new("ShaderNodeLightPath"), nodes.new("ShaderNodeMixShader")
    out = nodes.new("ShaderNodeOutputWorld")
    links.new(path.outputs["Is Camera Ray"], mix.inputs["Fac"])
    links.new(unseen.outputs["Background"], mix.inputs[1])
    links.new(seen.outputs["Background"], mix.inputs[2])
    links.new(mix.outputs["Shader"], out.inputs["Surface"])
    scene.world = world


BUILDERS: dict[str, Callable[..., BuiltScene]] = {"room": build_room, "object": build_object,
                                                  "textured": build_textured}
