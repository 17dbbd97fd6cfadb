# SPDX-License-Identifier: GPL-3.0-or-later
"""Import speed: a 1M-point coloured cloud (target < 0.5 s) and 500 cameras with photo backgrounds (< 2 s).

Times `bridge.scene_import.import_bundle` on in-memory scenes (the bundle already read), each run in a fresh empty
Blender file; photos are tiny PNGs, one file per camera, written once to a temp folder. Reading the cameras and
points back (`scene_export.scene_from_blender`, `pointcloud.points_from_object`) is timed too, without targets.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import Report, Row, load_addon, median_time

N_POINTS = 1_000_000
N_CAMERAS = 500


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cam_from_world (OpenCV axes) of a camera at `centre` looking at `target`, world z up."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    r = np.stack([x, np.cross(z, x), z])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, -r @ centre
    return out


def _scenes(addon, folder: Path):
    import cv2

    bundle, ply = addon.engine.bundle, addon.engine.ply
    rng = np.random.default_rng(0)
    cam = bundle.Camera(1, "PINHOLE", 64, 48, [60.0, 60.0, 32.0, 24.0])
    cloud = bundle.Scene({1: cam}, [bundle.Image(1, "view", 1, _look_at(np.array([0.0, -5.0, 1.0]), np.zeros(3)))],
                         ply.Points(rng.normal(size=(N_POINTS, 3)), rng.integers(0, 256, (N_POINTS, 3)),
                                    rng.random(N_POINTS)))
    images = []
    for i in range(N_CAMERAS):
        path = folder / f"photo_{i:04d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        angle = 2 * np.pi * i / N_CAMERAS
        centre = np.array([5 * np.cos(angle), 5 * np.sin(angle), 1.0 + i / N_CAMERAS])
        images.append(bundle.Image(i + 1, path.name, 1, _look_at(centre, np.zeros(3)), path=path))
    cameras = bundle.Scene({1: cam}, images)
    lens = bundle.Camera(1, "OPENCV", 64, 48, [60.0, 60.0, 32.0, 24.0, -0.1, 0.02, 0.001, -0.002])
    distorted = bundle.Scene({1: lens}, images)
    return cloud, cameras, distorted


def run() -> Report:
    import bpy

    addon = load_addon("bridge.scene_import", "bridge.scene_export", "bridge.pointcloud", "engine.bundle",
                       "engine.ply")
    scene_import, scene_export = addon.bridge.scene_import, addon.bridge.scene_export
    report = Report("scene import into Blender (bridge.scene_import.import_bundle)")
    fresh = lambda: bpy.ops.wm.read_homefile(use_empty=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="unposed-bench-") as tmp:
        cloud, cameras, distorted = _scenes(addon, Path(tmp))
        t = median_time(lambda: scene_import.import_bundle(bpy.context, cloud, "cloud", "bench:cloud"), setup=fresh)
        report.rows.append(Row(f"{N_POINTS:,} coloured points (+1 camera)", t, 0.5))
        t = median_time(lambda: scene_import.import_bundle(bpy.context, cameras, "cams", "bench:cams"), setup=fresh)
        report.rows.append(Row(f"{N_CAMERAS} cameras with photo backgrounds", t, 2.0))
        t = median_time(lambda: scene_import.import_bundle(bpy.context, cameras, "cams", "bench:cams"))
        report.rows.append(Row(f"{N_CAMERAS} cameras again, replacing the previous import", t, 2.0))
        export = lambda: scene_export.scene_from_blender(bpy.context, bpy.context.scene.objects)  # noqa: E731
        t = median_time(export)
        report.rows.append(Row(f"{N_CAMERAS} cameras back from Blender (scene_from_blender)", t))
        t = median_time(lambda: scene_import.import_bundle(bpy.context, distorted, "lens", "bench:lens"), setup=fresh)
        report.rows.append(Row(f"{N_CAMERAS} OPENCV cameras (photo shown through a lens clip each)", t, 2.0))
        fresh()
        scene_import.import_bundle(bpy.context, cloud, "cloud", "bench:cloud")
        obj = next(o for o in bpy.data.objects if addon.bridge.pointcloud.is_point_cloud(o))
        t = median_time(lambda: addon.bridge.pointcloud.points_from_object(obj))
        report.rows.append(Row(f"{N_POINTS:,} points back from Blender (points_from_object)", t))
    report.notes.append(f"Photos: {N_CAMERAS} distinct 64x48 PNGs. Median of 3 runs, each in a fresh empty file "
                        "except the replacing run.")
    return report
