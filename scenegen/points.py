"""The ground-truth point cloud: points sampled on the scene's surfaces, kept where the renders see them, coloured
like the photos.

A sample is seen by a view when it projects inside the image onto a pixel whose depth pass matches its camera z
and whose 3x3 neighbourhood shows only the sample's own object (object-index pass), so its colour is not a blend
with another surface. Its colour is the per-channel median of those pixels over the views that see it (the
scenes are Lambertian, so views agree up to anti-aliasing of texture edges).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import bpy
import numpy as np

from .addon import module
from .render import Render
from .rigs import View

if TYPE_CHECKING:  # the add-on's own copy is used at run time (see addon.py); same classes
    from engine.bundle import Camera
    from engine.ply import Points

DEPTH_TOLERANCE = 0.002  # relative z difference allowed on top of the local depth slope


def sample_surfaces(objects: Sequence[bpy.types.Object], count: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` points uniformly distributed over the objects' surfaces (world frame, area-weighted), and the
    `pass_index` of the object each lies on."""
    tris, owners = [], []
    depsgraph = bpy.context.evaluated_depsgraph_get()
    for obj in objects:
        evaluated = obj.evaluated_get(depsgraph)
        mesh = evaluated.to_mesh()
        try:
            mesh.calc_loop_triangles()
            co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", co)
            idx = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
            mesh.loop_triangles.foreach_get("vertices", idx)
        finally:
            evaluated.to_mesh_clear()
        world = np.array(obj.matrix_world, dtype=np.float64)
        co = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
        tris.append(_canonical(co[idx.reshape(-1, 3)]))
        owners.append(np.full(len(idx) // 3, obj.pass_index, dtype=np.int32))
    tris, owners = np.concatenate(tris), np.concatenate(owners)
    areas = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    pick = rng.choice(len(tris), size=count, p=areas / areas.sum())
    # Uniform barycentric sampling: fold the unit square onto the triangle.
    a, b = rng.uniform(size=(2, count))
    fold = a + b > 1
    a, b = np.where(fold, 1 - a, a), np.where(fold, 1 - b, b)
    t = tris[pick]
    xyz = t[:, 0] + a[:, None] * (t[:, 1] - t[:, 0]) + b[:, None] * (t[:, 2] - t[:, 0])
    return xyz, owners[pick]


def _canonical(tris: np.ndarray) -> np.ndarray:
    """Triangles (T, 3, 3) sorted by centroid, each with its corners sorted: some bmesh primitives come out in a
    different face order each time, and the samples must depend on the geometry only."""
    key = np.round(tris, 6)
    flat = key.reshape(-1, 3)
    corners = np.lexsort((flat[:, 2], flat[:, 1], flat[:, 0], np.repeat(np.arange(len(tris)), 3)))
    tris = tris.reshape(-1, 3)[corners].reshape(-1, 3, 3)
    centroid = np.round(tris.mean(axis=1), 6)
    return tris[np.lexsort((centroid[:, 2], centroid[:, 1], centroid[:, 0]))]


def project(camera: Camera, cam_from_world: np.ndarray,
            xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (N, 2), camera z (N,) and validity (N,) of world points through an engine camera."""
    import torch

    cam = xyz @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    pixels, valid = module("engine.projection").project(camera.model, torch.tensor(camera.params, dtype=torch.float64),
                                                        torch.from_numpy(cam))
    return pixels.numpy(), cam[:, 2], valid.numpy()


def seen_by(view: View, render: Render, xyz: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which points `render` shows unoccluded and away from other objects' edges, and their (N, 2) integer
    pixel (column, row)."""
    h, w = render.depth.shape
    uv, z, valid = project(view.camera, view.cam_from_world, xyz)
    with np.errstate(invalid="ignore"):  # NaN pixels compare False
        inside = valid & (z > 0) & (uv[:, 0] >= 1) & (uv[:, 1] >= 1) & (uv[:, 0] < w - 1) & (uv[:, 1] < h - 1)
    uv = np.where(inside[:, None], uv, 1.0)
    col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    depth = render.depth
    # Local depth slope (central differences): the depth change across one pixel on slanted surfaces.
    slope = np.maximum(np.abs(depth[row, col + 1] - depth[row, col - 1]),
                       np.abs(depth[row + 1, col] - depth[row - 1, col]))
    seen = inside & (np.abs(depth[row, col] - z) <= DEPTH_TOLERANCE * z + slope)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            seen &= render.object_index[row + dr, col + dc] == owner
    return seen, np.stack([col, row], axis=1)


def coloured_points(objects: Sequence[bpy.types.Object], views: Sequence[View], renders: Sequence[Render],
                    count: int, rng: np.random.Generator) -> Points:
    """Points sampled on `objects` (`count` samples before visibility), kept where at least one render sees them,
    with the median colour of the pixels that see them."""
    xyz, owner = sample_surfaces(objects, count, rng)
    colours = np.full((len(views), count, 3), np.nan, dtype=np.float32)
    for i, (view, render) in enumerate(zip(views, renders)):
        seen, pixel = seen_by(view, render, xyz, owner)
        colours[i, seen] = render.rgb[pixel[seen, 1], pixel[seen, 0]]
    keep = ~np.isnan(colours[:, :, 0]).all(axis=0)
    rgb = np.rint(np.nanmedian(colours[:, keep], axis=0)).astype(np.uint8)
    return module("engine.ply").Points(xyz[keep], rgb)
