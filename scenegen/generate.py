"""One call from nothing to a ground-truth scene bundle: build, place cameras, render, sample points, write."""
from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import bpy
import numpy as np

from . import lenses
from .addon import module
from .materials import add_grain
from .points import coloured_points
from .render import camera_objects, configure, render_views
from .rigs import intrinsics, make_cameras
from .scenes import build_scene

if TYPE_CHECKING:  # the add-on's own copy is used at run time (see addon.py); same classes
    from engine.bundle import Camera

IMAGES_DIR = "images"
DEPTH_DIR = "depth"
# Fisheye presets (`generate_fisheye`): lens maker (width, height, fov_deg) and its default corner-to-corner field.
FISHEYE_LENSES = {"equidistant": (lenses.equidistant, 180.0), "polynomial": (lenses.polynomial_lens, 190.0)}


def generate(out_dir: str | Path, *, kind: str = "room", n_views: int = 8, width: int = 160, height: int = 120,
             seed: int = 0, model: str = "PINHOLE", hfov_deg: float = 60.0,
             camera: Camera | Sequence[Camera] | None = None, rig: str = "orbit", arc_deg: float = 360.0,
             samples: int = 16, n_points: int = 40000, save_depth: bool = False, grain: float = 0.0,
             scene: bpy.types.Scene | None = None) -> Path:
    """Build scene `kind` into `scene` (default: the context scene, expected empty), render `n_views` views and
    write the ground truth as a scene bundle at `out_dir` (atomically); returns the bundle folder.

    The bundle holds the photos (`images/<view>.png`, image names `<view>.png`: COLMAP names images by file),
    the cameras and poses used to render them (units: metres), and a coloured point cloud of the surfaces the
    views see (`n_points` surface samples before visibility). Cameras: `camera` (an engine Camera, or a list
    with one per view), else `intrinsics(model, width, height, hfov_deg=hfov_deg)`. With `save_depth`, each
    image also names `depth/<view>.npy`: float32 (H, W) camera z of the surface at each pixel (OpenCV axes,
    metres), 0 where there is none and where a fisheye's ray is 90 deg or more from the axis (camera z cannot
    place those points). `grain` > 0 adds fine texture of that strength to every surface (`materials.add_grain`).
    The Blender scene keeps the built geometry and one camera object per view (named after the view).
    """
    bundles, atomic = module("engine.bundle"), module("engine.atomic")
    scene = scene or bpy.context.scene
    out_dir = Path(out_dir).absolute()
    built = build_scene(kind, seed, scene)
    if grain:
        for material in {slot.material for obj in built.objects for slot in obj.material_slots if slot.material}:
            add_grain(material, grain)
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
                      "command": " ".join(sys.argv), "source": f"scenegen kind={kind} seed={seed}"
                      + (f" grain={grain:g}" if grain else ""),
                      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        bundle = bundles.Scene(cameras, images, points, units="meters", provenance=provenance)
        depth_files = {image.extras["depth"]: stage / image.extras["depth"] for image in images if save_depth}
        bundles.write_bundle(bundle, stage, extra_files=depth_files)
    return out_dir


def generate_fisheye(out_dir: str | Path, lens: str = "equidistant", *, fov_deg: float | None = None,
                     size: int = 160, n_views: int = 4, kind: str = "room", samples: int = 8,
                     n_points: int = 20000, seed: int = 0, scene: bpy.types.Scene | None = None) -> Path:
    """A fisheye ground-truth scene (`generate` with depth): `n_views` square `size` x `size` photos through one
    `lens` of FISHEYE_LENSES, seeing `fov_deg` corner to corner (default: the preset's), from cameras inside
    `kind` (room: a ring inside the room, each camera looking across it, so the wide field sees walls, floor and
    ceiling). 'equidistant' is `lenses.equidistant`, 'polynomial' `lenses.polynomial_lens` (a LENS_FIELD lens
    OPENCV_FISHEYE cannot express); both are rendered exactly through the recorded camera (`render.render_view`)."""
    if lens not in FISHEYE_LENSES:
        raise ValueError(f"unknown fisheye lens {lens!r}; known lenses: {', '.join(FISHEYE_LENSES)}")
    make, default_fov = FISHEYE_LENSES[lens]
    camera = make(size, size, default_fov if fov_deg is None else fov_deg)
    return generate(out_dir, kind=kind, n_views=n_views, camera=camera, samples=samples, n_points=n_points,
                    save_depth=True, seed=seed, scene=scene)
