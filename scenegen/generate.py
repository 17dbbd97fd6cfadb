"""One call from nothing to a ground-truth scene bundle: build, place cameras, render, sample points, write."""
from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import bpy
import numpy as np

from .addon import module
from .points import coloured_points
from .render import camera_objects, configure, render_views
from .rigs import intrinsics, make_cameras
from .scenes import build_scene

if TYPE_CHECKING:  # the add-on's own copy is used at run time (see addon.py); same classes
    from engine.bundle import Camera

IMAGES_DIR = "images"
DEPTH_DIR = "depth"


def generate(out_dir: str | Path, *, kind: str = "room", n_views: int = 8, width: int = 160, height: int = 120,
             seed: int = 0, model: str = "PINHOLE", hfov_deg: float = 60.0,
             camera: Camera | Sequence[Camera] | None = None, rig: str = "orbit", arc_deg: float = 360.0,
             samples: int = 16, n_points: int = 40000, save_depth: bool = False,
             scene: bpy.types.Scene | None = None) -> Path:
    """Build scene `kind` into `scene` (default: the context scene, expected empty), render `n_views` views and
    write the ground truth as a scene bundle at `out_dir` (atomically); returns the bundle folder.

    The bundle holds the photos (`images/<view>.png`, image names `<view>.png`: COLMAP names images by file),
    the cameras and poses used to render them (units: metres), and a coloured point cloud of the surfaces the
    views see (`n_points` surface samples before visibility). Cameras: `camera` (an engine Camera, or a list
    with one per view), else `intrinsics(model, width, height, hfov_deg=hfov_deg)`. With `save_depth`, each
    image also names `depth/<view>.npy`: float32 (H, W) camera z of the surface at each pixel (OpenCV axes,
    metres), 0 where there is none. The Blender scene keeps the built geometry and one camera object per view
    (named after the view).
    """
    bundles, atomic = module("engine.bundle"), module("engine.atomic")
    scene = scene or bpy.context.scene
    out_dir = Path(out_dir).absolute()
    built = build_scene(kind, seed, scene)
    views = make_cameras(built, n_views, camera or intrinsics(model, width, height, hfov_deg=hfov_deg),
                         rig=rig, seed=seed, arc_deg=arc_deg)
    cam_collection = bpy.data.collections.new("scenegen_cameras")
    scene.collection.children.link(cam_collection)
    cam_objs = camera_objects(scene, views, cam_collection)
    configure(scene, samples=samples, seed=seed)
    with atomic.atomic_dir(out_dir) as stage:
        renders = render_views(scene, views, cam_objs, stage / IMAGES_DIR)
        points = coloured_points(built.objects, views, renders, n_points, np.random.default_rng(seed))
        cameras: dict[int, Camera] = {}
        images = []
        for i, (view, render) in enumerate(zip(views, renders), start=1):
            if view.camera.id in cameras and cameras[view.camera.id] != view.camera:
                raise ValueError(f"view {view.name}: camera id {view.camera.id} is used by different cameras")
            cameras[view.camera.id] = view.camera
            extras = {}
            if save_depth:
                extras["depth"] = f"{DEPTH_DIR}/{view.name}.npy"
                (stage / DEPTH_DIR).mkdir(exist_ok=True)
                np.save(stage / extras["depth"], render.depth)
            images.append(bundles.Image(id=i, name=render.path.name, camera_id=view.camera.id,
                                        cam_from_world=view.cam_from_world, path=render.path, extras=extras))
        provenance = {"tool": "unposed scenegen", "version": module("engine").__version__,
                      "command": " ".join(sys.argv), "source": f"scenegen kind={kind} seed={seed}",
                      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        bundle = bundles.Scene(cameras, images, points, units="meters", provenance=provenance)
        depth_files = {image.extras["depth"]: stage / image.extras["depth"] for image in images if save_depth}
        bundles.write_bundle(bundle, stage, extra_files=depth_files)
    return out_dir
