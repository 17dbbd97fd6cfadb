"""End-to-end demo (`make demo`): ground truth -> COLMAP -> bundle -> Blender, with a picture that shows the
imported point cloud is aligned with the photos.

Steps (each a function of the shared `DemoRun`, so later stages — calibrate, reconstruct, train — slot in):
  generate        render a procedural scene from several cameras; write its ground-truth bundle (scenegen)
  calibrate       render one view of a Manhattan room and calibrate it from that photo alone (`engine calibrate`),
                  printing the field-of-view and focal error against the camera that rendered it
  colmap-export   `python -m engine export ground_truth --format colmap` (the add-on's job runner)
  colmap-import   `python -m engine import colmap --out roundtrip`
  blender-import  a fresh Blender scene, the add-on enabled, `bpy.ops.unposed.import_scene(filepath=roundtrip)`
  errors          pose and intrinsics of the imported Blender cameras against the ground truth (errors.json)
  preview         the point cloud rendered through one imported camera, over the (darkened) source photo, beside
                  the photo (preview.png; the point layer alone, with alpha, in preview_points.png)
  save-blend      demo.blend
  reconstruct     the main job: `bpy.ops.unposed.reconstruct` on the ground truth's photos alone (COLMAP backend, no
                  weights), imported into a fresh scene; pose and focal errors against the ground truth after the
                  best Sim(3) (reconstruction.json), its own preview (reconstruction_preview.png) and .blend
  train-splats    `bpy.ops.unposed.train_splats` on the reconstruction, shrunk to about `splat_width` pixels wide
                  (splats_input/) for a short CPU schedule with one held-out view; the splats rendered by Blender
                  through the held-out camera beside its photo and the engine's own render (splats_preview.png),
                  the engine's held-out PSNR and the Blender render's (splats.json), and splats.blend
  fisheye-scenes  180 and 190 deg fisheye scenes rendered exactly through their lenses, imported into Blender
                  (`devtools/demo_lens.py`; fisheye.json: each lens's Cycles fit residual)

    python -m devtools.demo --out out/demo [--kind textured|object|room] [--views 8] [--width 320] [--height 240]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

PHOTO_DIM = 0.4  # brightness of the photo under the point layer, so the points stand out
POINT_RADIUS_PX = (0.8, 3.0)  # range of the preview's point radius, in pixels at the cloud's median depth


@dataclass
class DemoConfig:
    out: Path
    kind: str = "textured"  # richly textured, so the reconstruct step's feature matching has plenty to work with
    arc_deg: float = 120.0  # the cameras stand on an arc of this many degrees around the scene
    views: int = 8
    width: int = 320
    height: int = 240
    samples: int = 16
    points: int = 60000  # surface samples before visibility
    seed: int = 0
    preview_view: int = 0  # index of the image whose camera renders the preview
    # train-splats: the engine trains at the photos' own size, so the demo trains on a copy shrunk by an integer
    # factor to about this width, for a short schedule (densification, from step 500, is not reached), with every
    # n-th photo held out (the first is always among them)
    splat_width: int = 160
    splat_iterations: int = 200
    splat_hold_out: int = 8


@dataclass
class DemoRun:
    config: DemoConfig
    ground_truth: Path | None = None  # bundle written by scenegen
    calibration: dict[str, Any] = field(default_factory=dict)  # single-photo calibration vs truth
    reconstruction: Path | None = None  # bundle reconstructed from the photos alone
    reconstruction_errors: dict[str, Any] = field(default_factory=dict)  # vs truth, after Sim(3)
    colmap: Path | None = None  # COLMAP project exported by the engine
    roundtrip: Path | None = None  # bundle imported back from the COLMAP project
    errors: list[dict[str, Any]] = field(default_factory=list)  # per image, see `measure_errors`
    preview: Path | None = None
    preview_points: Path | None = None
    blend: Path | None = None
    splats: Path | None = None  # bundle trained by the train-splats step (splats.ply, training curves)
    splat_report: dict[str, Any] = field(default_factory=dict)  # held-out view, PSNRs (splats.json)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[DemoRun], str]  # does the step, returns a one-line summary


def _module(name: str):
    """A submodule of the enabled add-on (enabling it like the tests do), e.g. _module("engine.bundle")."""
    from scenegen.addon import module

    return module(name)


def generate_ground_truth(run: DemoRun) -> str:
    import bpy
    import scenegen

    bpy.ops.wm.read_homefile(use_empty=True)
    c = run.config
    run.ground_truth = scenegen.generate(c.out / "ground_truth", kind=c.kind, n_views=c.views, width=c.width,
                                         height=c.height, seed=c.seed, samples=c.samples, n_points=c.points,
                                         arc_deg=c.arc_deg, save_depth=True)
    scene = _module("engine.bundle").read_bundle(run.ground_truth)
    return f"{len(scene.images)} photos {c.width}x{c.height}, {len(scene.points):,} points -> {run.ground_truth}"


CALIBRATION_HFOV_DEG = 55.0  # the room view the calibrate step renders


def calibrate_one(run: DemoRun) -> str:
    """Calibrate a single rendered room photo (the default `auto` method: DM-Calib when weights are installed,
    else vanishing points) and compare with the camera that rendered it."""
    import bpy
    import scenegen

    bpy.ops.wm.read_homefile(use_empty=True)
    c = run.config
    width, height = max(c.width, 480), max(c.height, 360)  # enough pixels for line detection
    bundle = scenegen.generate(c.out / "calibration", kind="room", n_views=1, width=width, height=height,
                               seed=c.seed + 1, samples=c.samples, n_points=1000, hfov_deg=CALIBRATION_HFOV_DEG,
                               rig="random")
    truth = _module("engine.bundle").read_bundle(bundle)
    image = truth.images[0]
    fx_true = truth.camera_of(image).split()[0]
    found = _engine("calibrate", str(image.path))["results"][0]
    fx_found = found["params"][0]
    true_hfov = float(np.degrees(2 * np.arctan(width / 2 / fx_true)))
    run.calibration = {"image": str(image.path), "method": found["method"], "confidence": found["confidence"],
                       "hfov_deg": found["hfov_deg"], "true_hfov_deg": true_hfov,
                       "hfov_error_deg": abs(found["hfov_deg"] - true_hfov),
                       "focal_rel_error": abs(fx_found - fx_true) / fx_true}
    _write_json(c.out / "calibration.json", run.calibration)
    cal = run.calibration
    return (f"{found['method']} (confidence {cal['confidence']:.2f}): hFoV {cal['hfov_deg']:.2f} deg vs true "
            f"{true_hfov:.2f} deg (error {cal['hfov_error_deg']:.2f} deg, focal {100 * cal['focal_rel_error']:.1f}%)")


def _engine(*args: str) -> dict[str, Any]:
    """Run `python -m engine --progress jsonl ARGS` with the add-on's job runner (this interpreter); its result."""
    return _module("jobs.runner").run_engine(args)


def _call_operator(operator: Callable, **kwargs: Any) -> None:
    """Run `bpy.ops` operator `operator` with `kwargs`; an error unless it finished (errors it reports raise)."""
    result = operator(**kwargs)
    if result != {"FINISHED"}:
        raise RuntimeError(f"bpy.ops.{operator.idname_py()}({kwargs}) returned {result}")


def export_colmap(run: DemoRun) -> str:
    run.colmap = run.config.out / "colmap"
    result = _engine("export", str(run.ground_truth), "--format", "colmap", "--out", str(run.colmap))
    return f"{result['images']} images, {result['points']:,} points -> {run.colmap}"


def import_colmap(run: DemoRun) -> str:
    run.roundtrip = run.config.out / "roundtrip"
    result = _engine("import", str(run.colmap), "--out", str(run.roundtrip))
    return f"{result['images']} images, {result['points']:,} points -> {run.roundtrip}"


def import_into_blender(run: DemoRun) -> str:
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    _call_operator(bpy.ops.unposed.import_scene, filepath=str(run.roundtrip))
    cameras = [o for o in bpy.context.scene.objects if o.type == "CAMERA"]
    return f"{len(cameras)} cameras and {len(_point_clouds())} point cloud in the scene"


def _point_clouds() -> list:
    import bpy

    is_cloud = _module("bridge.pointcloud").is_point_cloud
    return [o for o in bpy.context.scene.objects if is_cloud(o)]


def measure_errors(run: DemoRun) -> str:
    """Each ground-truth image against the Blender camera imported for it: rotation (deg), camera centre
    (scene units), focal length (relative), principal point (px)."""
    import bpy

    camera_from_blender = _module("bridge.camera").camera_from_blender
    pose = _module("engine.pose")
    truth = _module("engine.bundle").read_bundle(run.ground_truth)
    scene = bpy.context.scene
    run.errors = []
    for image in truth.images:
        obj = bpy.data.objects.get(image.name)
        if obj is None:
            raise RuntimeError(f"image {image.name}: no imported camera object of that name")
        gt = truth.camera_of(image)
        _set_render_size(scene, gt)  # camera_from_blender reads the camera at the scene's render size
        camera, cam_from_world = camera_from_blender(scene, obj)
        fx, fy, cx, cy, _ = camera.split()
        gfx, gfy, gcx, gcy, _ = gt.split()
        run.errors.append({
            "image": image.name,
            "rotation_deg": pose.rotation_angle_deg(image.cam_from_world[:3, :3], cam_from_world[:3, :3]),
            "centre": float(np.linalg.norm(pose.camera_center(image.cam_from_world)
                                           - pose.camera_center(cam_from_world))),
            "focal_rel": max(abs(fx - gfx) / gfx, abs(fy - gfy) / gfy),
            "principal_px": float(np.hypot(cx - gcx, cy - gcy)),
            "model": f"{gt.model} -> {camera.model}",
        })
    _set_render_size(scene, truth.camera_of(truth.images[run.config.preview_view]))
    _write_json(run.config.out / "errors.json", run.errors)
    worst = {key: max(e[key] for e in run.errors) for key in ("rotation_deg", "centre", "focal_rel", "principal_px")}
    return (f"worst over {len(run.errors)} cameras: rotation {worst['rotation_deg']:.2e} deg, centre "
            f"{worst['centre']:.2e}, focal {worst['focal_rel']:.2e} (relative), principal point "
            f"{worst['principal_px']:.2e} px")


def _set_render_size(scene, camera) -> None:
    scene.render.resolution_x, scene.render.resolution_y = camera.width, camera.height
    scene.render.resolution_percentage = 100


def _write_json(path: Path, data: Any) -> None:
    with _module("engine.atomic").atomic_file(path, "w") as f:
        json.dump(data, f, indent=1)


def render_preview(run: DemoRun) -> str:
    run.preview, run.preview_points = run.config.out / "preview.png", run.config.out / "preview_points.png"
    name, covered = _overlay(run.roundtrip, run.config.preview_view, run.preview, run.preview_points)
    return f"{name}: points cover {covered:.0%} of the frame -> {run.preview}"


def _overlay(bundle: Path, view: int, out: Path, out_points: Path) -> tuple[str, float]:
    """Render the point cloud alone (Cycles, transparent film, points emitting their own colours) through the
    imported camera of `bundle`'s image `view`, composite it over the darkened photo and put the photo beside
    it (`out`); the point layer alone goes to `out_points`. Returns the image name and the covered fraction."""
    import bpy
    import cv2

    pointcloud = _module("bridge.pointcloud")
    truth = _module("engine.bundle").read_bundle(bundle)
    image = truth.images[view]
    scene = bpy.context.scene
    scene.camera = bpy.data.objects[image.name]
    _set_render_size(scene, truth.camera_of(image))
    clouds = _point_clouds()
    if not clouds:
        raise RuntimeError("the imported scene has no point cloud to preview")
    camera = truth.camera_of(image)
    fx, fy, cx, cy, _ = camera.split()
    for cloud in clouds:
        xyz = pointcloud.points_from_object(cloud).xyz.astype(np.float64)
        cam = xyz @ image.cam_from_world[:3, :3].T + image.cam_from_world[:3, 3]
        cam = cam[cam[:, 2] > 0]
        u, v = fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy  # the pinhole part sizes dots
        z = cam[(u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height), 2]
        if len(z) == 0:
            raise RuntimeError(f"preview: no point of {cloud.name!r} is in front of camera {image.name!r}")
        # Dots about as wide as the gaps between the points in the frame (sparse clouds), at their median depth.
        radius_px = np.clip(0.5 * np.sqrt(camera.width * camera.height / len(z)), *POINT_RADIUS_PX)
        pointcloud.set_radius(cloud, radius_px * np.median(z) / fx)
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", 8, False
    scene.view_layers[0].material_override = _emission_of(pointcloud.COLOR_ATTR)  # the points' colours, unlit
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    settings = scene.render.image_settings
    settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGBA", "8"
    with tempfile.TemporaryDirectory(prefix="unposed-demo-") as tmp:
        scene.render.filepath = str(Path(tmp) / "points.png")
        bpy.ops.render.render(write_still=True)
        layer = cv2.imread(str(Path(tmp) / "points.png"), cv2.IMREAD_UNCHANGED)  # BGRA
    photo = cv2.imread(str(image.path), cv2.IMREAD_COLOR)
    if layer is None or photo is None or layer.shape[:2] != photo.shape[:2]:
        raise RuntimeError(f"preview: the point render and the photo {image.path} do not match in size")
    alpha = layer[..., 3:4].astype(np.float32) / 255.0
    overlay = layer[..., :3] * alpha + photo * PHOTO_DIM * (1.0 - alpha)
    gap = np.full((photo.shape[0], 4, 3), 255, dtype=np.uint8)
    side_by_side = np.concatenate([photo, gap, np.rint(overlay).astype(np.uint8)], axis=1)
    _write_png(out, side_by_side)
    _write_png(out_points, layer)
    return image.name, float((alpha > 0.5).mean())


def _emission_of(attribute: str):
    """A material that emits its geometry's colour `attribute` as is (strength 1: colour in = colour out)."""
    import bpy

    mat = bpy.data.materials.new("Unposed demo: point colours")
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    attr, emission, out = (nodes.new(t) for t in ("ShaderNodeAttribute", "ShaderNodeEmission",
                                                   "ShaderNodeOutputMaterial"))
    attr.attribute_type, attr.attribute_name = "GEOMETRY", attribute
    links.new(attr.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], out.inputs["Surface"])
    return mat


def _write_png(path: Path, pixels: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise RuntimeError(f"{path}: could not encode the PNG")
    with _module("engine.atomic").atomic_file(path) as f:
        f.write(data.tobytes())


def save_blend(run: DemoRun) -> str:
    import bpy

    run.blend = run.config.out / "demo.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(run.blend))  # Blender writes a temporary file and renames it
    return str(run.blend)


def reconstruct_photos(run: DemoRun) -> str:
    """Reconstruct cameras and points from the ground truth's photos alone with the weights-free backend."""
    import bpy

    bundles = _module("engine.bundle")
    out = run.config.out
    run.reconstruction = out / "reconstruction"
    bpy.ops.wm.read_homefile(use_empty=True)
    _call_operator(bpy.ops.unposed.reconstruct, directory=str(run.ground_truth / "images"), backend='COLMAP',
                   output=str(run.reconstruction))
    estimate, truth = bundles.read_bundle(run.reconstruction), bundles.read_bundle(run.ground_truth)
    errors = _module("engine.reconstruct.compare").compare(estimate, truth).summary()
    run.reconstruction_errors = errors
    _write_json(out / "reconstruction.json", errors)
    view = min(run.config.preview_view, len(estimate.images) - 1)
    _overlay(run.reconstruction, view, out / "reconstruction_preview.png", out / "reconstruction_points.png")
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "reconstruction.blend"))
    return (f"{errors['registered']}/{len(truth.images)} photos registered; after Sim(3): rotation median "
            f"{errors['rotation_median_deg']:.3f} deg, max {errors['rotation_max_deg']:.3f} deg; centre max "
            f"{100 * errors['centre_max_relative']:.2f}% of the rig radius; focal max {100 * errors['focal_max']:.2f}%"
            f" -> {out / 'reconstruction_preview.png'}")


# The demo refines poses only: COLMAP's intrinsics are already close, and in a schedule this short the splats
# start from a sparse cloud and stay large, which biases a refined focal length (see engine.splats.train). The
# lens is converted to a pinhole so that the Blender camera images exactly what the engine rendered.
SPLAT_CALIBRATE = {'POSE'}
SPLAT_LENS = 'PINHOLE'


def train_splats(run: DemoRun) -> str:
    """Train splats on the reconstruction through the operator (job runner, cameras updated in place), render them
    in Blender through the held-out camera and compare with its photo and with the engine's render."""
    import bpy
    import cv2

    c, out = run.config, run.config.out
    if run.reconstruction is None:
        raise RuntimeError("train-splats needs the reconstruct step's bundle (run.reconstruction)")
    source = downscale_bundle(run.reconstruction, out / "splats_input", out / "splats_photos", c.splat_width)
    bpy.ops.wm.read_homefile(use_empty=True)
    _call_operator(bpy.ops.unposed.import_scene, filepath=str(source))
    run.splats = out / "splats"
    # One torch thread in the engine job (which inherits this environment; the operator has no threads option):
    # its tensors are small, and on a busy 2-core machine a second OpenMP thread mostly spins, 3-6x slower.
    with _environment(OMP_NUM_THREADS="1"):
        _call_operator(bpy.ops.unposed.train_splats, filepath=str(source), iterations=c.splat_iterations,
                       calibrate=SPLAT_CALIBRATE, lens=SPLAT_LENS, hold_out=c.splat_hold_out,
                       out_path=str(run.splats))
    trained = _module("engine.bundle").read_bundle(run.splats)
    metrics = trained.extras["training"]["metrics"]
    if not metrics.get("held_out"):
        raise RuntimeError(f"{run.splats}: training held out no view (hold_out={c.splat_hold_out}, "
                           f"{len(trained.images)} photos); nothing to compare the Blender render with")
    image = next(im for im in trained.images if im.name == metrics["held_out"][0])
    camera = trained.camera_of(image)
    splats = _module("engine.splats.ply").read_splats(run.splats / trained.extras["splats"])
    photo = cv2.imread(str(image.path), cv2.IMREAD_COLOR)
    blender = _render_splats(bpy.data.objects[image.name], camera)
    engine = _engine_render(splats, camera, image.cam_from_world)[..., ::-1]  # RGB -> BGR, like the others
    if photo is None or photo.shape != blender.shape:
        raise RuntimeError(f"train-splats: the Blender render and the photo {image.path} do not match in size")
    gap = np.full((photo.shape[0], 4, 3), 255, dtype=np.uint8)
    preview = out / "splats_preview.png"
    _write_png(preview, np.concatenate([blender, gap, photo, gap, np.rint(255 * engine).astype(np.uint8)], axis=1))
    run.splat_report = {
        "image": image.name, "width": camera.width, "height": camera.height, "splats": len(splats),
        "iterations": metrics["iterations"], "calibrated": metrics["calibrated"],
        "held_out": metrics["held_out"],
        "engine_psnr": metrics["test_psnr"],  # measured by the engine (mean over held_out), poses refined first
        "engine_train_psnr": metrics.get("train_psnr"),
        "engine_render_psnr": _psnr(engine, photo / 255.0),  # this view's, recomputed from the trained bundle
        "blender_psnr": _psnr(blender / 255.0, photo / 255.0),
        "blender_vs_engine_psnr": _psnr(blender / 255.0, engine),
    }
    _write_json(out / "splats.json", run.splat_report)
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "splats.blend"))
    r = run.splat_report
    return (f"{r['splats']:,} splats after {r['iterations']} steps at {r['width']}x{r['height']}; held-out "
            f"{r['image']}: engine PSNR {r['engine_psnr']:.2f} dB, Blender render {r['blender_psnr']:.2f} dB "
            f"(against the engine's render {r['blender_vs_engine_psnr']:.1f} dB) -> {preview}")


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables set to `values` inside the block (for the processes it starts), restored after."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def downscale_bundle(source: Path, out: Path, photos: Path, width: int) -> Path:
    """A copy of bundle `source` (cameras, poses, points) at `out` whose photos, written to `photos`, are shrunk by
    the integer factor k nearest to each camera's width / `width` (at least 1): each k x k block of pixels
    averaged, the leftover right and bottom pixels cropped. In COLMAP's pixel convention the image edges scale
    exactly, so focal lengths and principal point divide by k (the crop leaves them), while distortion acts on
    normalised coordinates and stays."""
    import cv2

    bundles = _module("engine.bundle")
    load_image = _module("engine.calibrate.image_io").load_image
    scene = bundles.read_bundle(source)
    cameras, factors = {}, {}
    for cam in scene.cameras.values():
        if cam.lens_network is not None:
            raise RuntimeError(f"{source}: camera {cam.id} has a lens network, which cannot be downscaled")
        k = factors[cam.id] = max(1, round(cam.width / width))
        fx, fy, cx, cy, extra = cam.split()
        params = _module("engine.camera_models").get_model(cam.model).join(fx / k, fy / k, cx / k, cy / k, extra)
        cameras[cam.id] = bundles.Camera(cam.id, cam.model, cam.width // k, cam.height // k, params)
    images = []
    with _module("engine.atomic").atomic_dir(photos) as stage:
        for index, image in enumerate(scene.images):
            if image.path is None:
                raise RuntimeError(f"{source}: image {image.name!r} has no photo to train on")
            cam, k = cameras[image.camera_id], factors[image.camera_id]
            rgb = load_image(image.path).rgb[:cam.height * k, :cam.width * k]
            small = cv2.resize(rgb, (cam.width, cam.height), interpolation=cv2.INTER_AREA)  # block means for k
            name = f"{index:03d}_{Path(image.name).stem}.png"
            if not cv2.imwrite(str(stage / name), small[..., ::-1]):
                raise RuntimeError(f"{stage / name}: could not write the downscaled photo")
            images.append(bundles.Image(image.id, image.name, image.camera_id, image.cam_from_world,
                                        path=photos / name))
    return bundles.write_bundle(bundles.Scene(cameras, images, scene.points, scene.units, scene.provenance), out)


def _render_splats(camera_obj, camera) -> np.ndarray:
    """The scene's splats alone, rendered by Cycles through `camera_obj` (imaging `camera`) on a black background
    as the engine draws them: (H, W, 3) BGR uint8, sRGB-encoded like the photos."""
    import bpy
    import cv2

    scene = bpy.context.scene
    scene.camera = camera_obj
    _set_render_size(scene, camera)
    for cloud in _point_clouds():
        cloud.hide_render = True
    scene.world = None  # black
    scene.render.engine = "CYCLES"
    # One sample at each pixel centre, where the engine evaluates the splats; with Russian roulette off for every
    # transparent bounce the splats along a ray are composited exactly, so that sample has no noise.
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", 1, False
    scene.cycles.filter_width = 0.01
    scene.cycles.min_transparent_bounces = scene.cycles.transparent_max_bounces
    scene.render.film_transparent = False
    scene.render.dither_intensity = 0.0
    scene.view_settings.view_transform, scene.view_settings.look = "Standard", "None"
    settings = scene.render.image_settings
    settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "8"
    with tempfile.TemporaryDirectory(prefix="unposed-demo-") as tmp:
        scene.render.filepath = str(Path(tmp) / "splats.png")
        bpy.ops.render.render(write_still=True)
        pixels = cv2.imread(str(Path(tmp) / "splats.png"), cv2.IMREAD_COLOR)
    if pixels is None:
        raise RuntimeError("train-splats: Blender wrote no render")
    return pixels


def _engine_render(splats, camera, cam_from_world: np.ndarray) -> np.ndarray:
    """The engine's own render of `splats` through `camera` at `cam_from_world` (its projection and CPU compositor,
    all SH coefficients, black background, as in training): (H, W, 3) RGB in [0, 1]."""
    import torch

    project = _module("engine.splats.project").project_gaussians
    rasterize = _module("engine.splats.raster_torch").rasterize
    sh_colors = _module("engine.splats.sh").sh_colors

    def tensor(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32)

    pose, means = tensor(cam_from_world), tensor(splats.means)
    with torch.no_grad():
        opacities = torch.sigmoid(tensor(splats.opacity_logits))
        projected = project(means, tensor(splats.quats), tensor(splats.log_scales), opacities, camera.model,
                            tensor(camera.params), pose, camera.width, camera.height)
        centre = -pose[:3, :3].T @ pose[:3, 3]
        colours = sh_colors(tensor(splats.sh0), tensor(splats.shN), splats.sh_degree, means - centre)
        rgb, _ = rasterize(projected, colours, opacities, camera.width, camera.height, torch.zeros(3))
    return rgb.clamp(0.0, 1.0).double().numpy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """The engine's PSNR (dB) of images `a` and `b` with values in [0, 1]."""
    import torch

    a, b = (torch.from_numpy(np.array(x, dtype=np.float64)) for x in (a, b))  # copies: no negative strides
    return _module("engine.splats.metrics").psnr(a, b)


def fisheye_scenes(run: DemoRun) -> str:
    """Generated 180 and 190 deg fisheye scenes imported into Blender (`devtools.demo_lens`)."""
    from .demo_lens import fisheye_scenes as step  # demo_lens imports this module

    return step(run)


STEPS: tuple[Step, ...] = (
    Step("generate", generate_ground_truth),
    Step("calibrate", calibrate_one),
    Step("colmap-export", export_colmap),
    Step("colmap-import", import_colmap),
    Step("blender-import", import_into_blender),
    Step("errors", measure_errors),
    Step("preview", render_preview),
    Step("save-blend", save_blend),
    Step("reconstruct", reconstruct_photos),
    Step("train-splats", train_splats),
    Step("fisheye-scenes", fisheye_scenes),
)


def run_demo(config: DemoConfig, steps: Sequence[Step] = STEPS, log: Callable[[str], None] = print) -> DemoRun:
    """Run `steps` in order on a new `DemoRun`; each step's summary and time go to `log`."""
    _module("operators")  # enable the add-on before anything imports bpy (isolated session: scenegen.addon)
    config.out = Path(config.out).absolute()
    config.out.mkdir(parents=True, exist_ok=True)
    run = DemoRun(config)
    for step in steps:
        start = time.monotonic()
        summary = step.run(run)
        run.timings[step.name] = time.monotonic() - start
        log(f"[{step.name}] {summary} ({run.timings[step.name]:.1f} s)")
    return run


def _report(run: DemoRun) -> str:
    lines = ["", "Round-tripped cameras vs ground truth (ground truth -> COLMAP -> bundle -> Blender):",
             f"  {'image':<14} {'rotation (deg)':>15} {'centre (m)':>12} {'focal (rel)':>12} {'pp (px)':>10}"]
    for e in run.errors:
        lines.append(f"  {e['image']:<14} {e['rotation_deg']:>15.2e} {e['centre']:>12.2e} {e['focal_rel']:>12.2e} "
                     f"{e['principal_px']:>10.2e}")
    lines += ["", "Outputs:", f"  ground truth bundle  {run.ground_truth}", f"  COLMAP project       {run.colmap}",
              f"  round-trip bundle    {run.roundtrip}", f"  Blender file         {run.blend}",
              f"  preview              {run.preview}  (left: photo; right: imported points over it)",
              f"  camera errors        {run.config.out / 'errors.json'}"]
    if run.reconstruction is not None:
        lines += [f"  reconstruction       {run.reconstruction}  (errors: reconstruction.json, "
                  f"preview: reconstruction_preview.png, reconstruction.blend)"]
    if run.splats is not None:
        lines += [f"  splats               {run.splats}  (splats.ply; splats_preview.png: Blender render | photo | "
                  f"engine render of the held-out view; splats.json, splats.blend)"]
    if "fisheye-scenes" in run.timings:
        lines += [f"  fisheye scenes       {run.config.out}/fisheye_equidistant, fisheye_polynomial  (fisheye.json: "
                  f"Blender fit residuals)"]
    lines += [f"Total {sum(run.timings.values()):.1f} s"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--kind", choices=("textured", "object", "room"), default=DemoConfig.kind)
    parser.add_argument("--views", type=int, default=DemoConfig.views)
    parser.add_argument("--width", type=int, default=DemoConfig.width)
    parser.add_argument("--height", type=int, default=DemoConfig.height)
    parser.add_argument("--samples", type=int, default=DemoConfig.samples)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    args = parser.parse_args(argv)
    config = DemoConfig(out=args.out, kind=args.kind, views=args.views, width=args.width, height=args.height,
                        samples=args.samples, seed=args.seed)
    print(_report(run_demo(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
