# SPDX-License-Identifier: GPL-3.0-or-later
"""Splats in Blender: import, drawing and export of 1M Gaussians with SH degree 3 (bridge.splats).

Import target < 3 s for reading the .ply and building the object; evaluating the drawing (Geometry Nodes: SH
colour toward the camera, instancing) is timed for the viewport's default display limit and for all splats (what
a render evaluates), and a small Cycles render of all of them; export with and without an object transform.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from . import Report, Row, load_addon, median_time

N_SPLATS = 1_000_000
RENDER_SIZE = (160, 120)
SYNC_SIZE = (8, 6)  # a render this small costs about the scene sync alone


def _splats(addon):
    rng = np.random.default_rng(0)
    return addon.engine.splats.ply.Splats(
        means=rng.normal(size=(N_SPLATS, 3)), quats=rng.normal(size=(N_SPLATS, 4)),
        log_scales=rng.normal(-4.5, 0.5, (N_SPLATS, 3)), opacity_logits=rng.normal(size=N_SPLATS),
        sh0=rng.normal(size=(N_SPLATS, 3)), shN=rng.normal(0, 0.2, (N_SPLATS, 15, 3)))


def _evaluate(bpy, obj) -> int:
    """Evaluate the viewport depsgraph from scratch; the number of splats drawn."""
    obj.update_tag()
    depsgraph = bpy.context.evaluated_depsgraph_get()
    depsgraph.update()
    return sum(1 for inst in depsgraph.object_instances if inst.is_instance)


def run() -> Report:
    import bpy
    from mathutils import Matrix

    addon = load_addon("bridge.splats", "bridge.camera", "engine.splats.ply", "engine.bundle", "engine.pose")
    splats_bridge, ply = addon.bridge.splats, addon.engine.splats.ply
    report = Report("1M Gaussian splats in Blender (bridge.splats)")
    fresh = lambda: bpy.ops.wm.read_homefile(use_empty=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="unposed-bench-") as tmp:
        path = Path(tmp) / "splats.ply"
        ply.write_splats(path, _splats(addon))
        t = median_time(lambda: ply.read_splats(path))
        report.rows.append(Row(f"read {N_SPLATS:,} splats, SH degree 3 (read_splats)", t))
        splats = ply.read_splats(path)

        def build(data):
            obj = splats_bridge.splats_object("splats", data)
            bpy.context.scene.collection.objects.link(obj)
            return obj

        t = median_time(lambda: build(splats), setup=fresh)
        report.rows.append(Row(f"build the splat object from {N_SPLATS:,} splats (splats_object)", t, 1.5))
        t = median_time(lambda: build(ply.read_splats(path)), setup=fresh)
        report.rows.append(Row("import: read the .ply and build the object", t, 3.0))

        fresh()
        obj = build(splats)
        scene = bpy.context.scene
        camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
        scene.collection.objects.link(camera)
        addon.bridge.camera.apply_pose(camera, addon.engine.pose.make_transform(np.eye(3), [0.0, 0.0, 6.0]))
        scene.camera = camera
        drawn = []
        t = median_time(lambda: drawn.append(_evaluate(bpy, obj)))
        report.rows.append(Row(f"viewport drawing, display limit {splats_bridge.DISPLAY_LIMIT:,} "
                               f"({drawn[-1]:,} drawn)", t))
        splats_bridge.set_display_limit(obj, N_SPLATS)
        t = median_time(lambda: drawn.append(_evaluate(bpy, obj)))
        report.rows.append(Row(f"drawing all {drawn[-1]:,} splats (as a render evaluates them)", t))

        splats_bridge.prepare_render_settings(scene)
        scene.render.engine = "CYCLES"
        scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", 1, False
        scene.render.filepath = str(Path(tmp) / "render.png")
        for size, what in ((SYNC_SIZE, "mostly syncing the instances to Cycles"), (RENDER_SIZE, "")):
            scene.render.resolution_x, scene.render.resolution_y = size
            start = time.perf_counter()
            bpy.ops.render.render(write_still=True)
            report.rows.append(Row(f"Cycles render of all splats, {size[0]}x{size[1]} px, 1 sample (one run"
                                   f"{', ' + what if what else ''})", time.perf_counter() - start))

        out = Path(tmp) / "out.ply"
        t = median_time(lambda: ply.write_splats(out, splats_bridge.splats_from_object(obj)))
        report.rows.append(Row("export, untransformed (splats_from_object + write_splats)", t))
        obj.matrix_world = Matrix.LocRotScale((1.0, 2.0, 3.0), Matrix.Rotation(0.5, 3, "Z").to_quaternion(),
                                              (2.0, 2.0, 2.0))
        t = median_time(lambda: splats_bridge.splats_from_object(obj))
        report.rows.append(Row("object -> splats, rotated and uniformly scaled (quaternions composed, SH rotated)",
                               t))
        obj.scale = (1.0, 0.5, 2.0)
        t = median_time(lambda: splats_bridge.splats_from_object(obj))
        report.rows.append(Row("object -> splats, non-uniformly scaled (every covariance re-factored)", t))
    report.notes.append(f"Random splats: means ~ N(0, 1), scales ~ exp(N(-4.5, 0.5)), SH degree 3. Median of 3 runs; "
                        "the import rows each in a fresh empty file. Camera 6 units from the centre.")
    return report
