"""COLMAP sparse models <-> scene bundles, through pycolmap's own reconstruction I/O (text and binary).

COLMAP and the bundle share camera model names, parameter orders, the pixel convention (pixel centres at +0.5)
and pose convention (cam_from_world, OpenCV axes), so intrinsics and poses pass through unchanged. COLMAP 3.12+
models also hold rigs and frames: on import each posed image gets its composed cam_from_world (sensor_from_rig
* rig_from_world); on export every camera gets a trivial rig and every image its own frame, which is also how
COLMAP reads older models that have no rigs/frames files.

Unposed's own LENS_FIELD (the learned lens) has no COLMAP counterpart: exporting it is refused with an error naming
the camera, rather than silently approximated (convert it first, e.g. `engine.splats.cameras.convert_camera` to
OPENCV_FISHEYE, which reports the conversion's RMS in pixels).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import Camera, Image, Scene
from ..camera_models import MODELS, check_params
from ..errors import CameraModelError
from ..ply import Points
from ..progress import Progress
from . import InteropError, copy_photos

SPARSE_DIR = Path("sparse") / "0"
IMAGES_DIR = "images"
_MAX_ID = 2 ** 32 - 2  # COLMAP ids are uint32; the largest value means "invalid"


def is_model_dir(path: Path) -> bool:
    """True when `path` holds a COLMAP model (cameras + images, binary or text)."""
    return any(all((path / f"{name}{ext}").is_file() for name in ("cameras", "images")) for ext in (".bin", ".txt"))


def locate(path: Path) -> tuple[Path, Path | None]:
    """(model folder, photo folder or None) for a model folder or a project folder (`images/` + `sparse/0/`).

    The photo folder is the nearest `images/` beside the model or up to three levels above it
    (`proj/sparse/0` -> `proj/images`, `proj/colmap/sparse/0` -> `proj/images`).
    """
    path = Path(path)
    if not path.is_dir():
        raise InteropError(f"{path}: not found (expected a COLMAP project or model folder)")
    candidates = [path, path / SPARSE_DIR, path / "sparse"]
    model = next((c for c in candidates if is_model_dir(c)), None)
    if model is None:
        raise InteropError(f"{path}: no COLMAP model found (looked for cameras.bin + images.bin or cameras.txt + "
                           f"images.txt in {', '.join(str(c) for c in candidates)})")
    for parent in list(model.parents)[:3]:
        if (parent / IMAGES_DIR).is_dir():
            return model, parent / IMAGES_DIR
    return model, None


def _camera_from_colmap(cam, where: str) -> Camera:
    name = cam.model_name
    if name not in MODELS:
        raise InteropError(f"{where}: camera {cam.camera_id} uses the COLMAP camera model {name}, which Unposed "
                           f"does not support (supported: {', '.join(MODELS)})")
    params = [float(p) for p in cam.params]
    try:
        check_params(name, params)
    except CameraModelError as exc:
        raise InteropError(f"{where}: camera {cam.camera_id}: {exc}") from None
    return Camera(id=int(cam.camera_id), model=name, width=int(cam.width), height=int(cam.height), params=params)


def read_model(model_dir: Path, images_dir: Path | None = None, progress: Progress | None = None) -> Scene:
    """Read a COLMAP model folder (text or binary) as a Scene.

    Photos are `images_dir / <image name>` and must exist; with no `images_dir` images have no photo path.
    Images without a pose (not registered) are skipped with a warning.
    """
    import pycolmap

    model_dir = Path(model_dir)
    rec = pycolmap.Reconstruction()
    try:
        rec.read(str(model_dir))
    except Exception as exc:  # pycolmap reports malformed files as ValueError, IndexError, RuntimeError...
        raise InteropError(f"{model_dir}: not a readable COLMAP model ({exc})") from None
    where = str(model_dir)
    cameras: dict[int, Camera] = {}
    images: list[Image] = []
    unposed = 0
    for image_id in sorted(rec.images):
        im = rec.images[image_id]
        if not im.has_pose:
            unposed += 1
            continue
        if im.camera_id not in cameras:
            cameras[im.camera_id] = _camera_from_colmap(rec.cameras[im.camera_id], where)
        path = None
        if images_dir is not None:
            path = Path(images_dir) / im.name
            if not path.is_file():
                raise InteropError(f"{where}: image {image_id} {im.name!r}: photo not found at {path}")
        pose = np.eye(4)
        pose[:3] = im.cam_from_world().matrix()
        images.append(Image(id=int(image_id), name=im.name, camera_id=int(im.camera_id), cam_from_world=pose,
                            path=path))
    if not images:
        raise InteropError(f"{where}: the model has no posed images ({unposed} without a pose)")
    if unposed and progress is not None:
        progress.log(f"{unposed} image(s) without a pose in {where} were skipped", level="warning")
    points = None
    if rec.num_points3D():
        pts = [p for _, p in sorted(rec.points3D.items(), key=lambda item: item[0])]
        points = Points(np.array([p.xyz for p in pts], dtype=np.float64), np.array([p.color for p in pts]))
    return Scene(cameras=cameras, images=images, points=points)


def _check_id(value: int, what: str) -> int:
    if not 0 <= value <= _MAX_ID:
        raise InteropError(f"{what} id {value} does not fit COLMAP's ids (0..{_MAX_ID})")
    return value


def to_reconstruction(scene: Scene):
    """The scene as a pycolmap.Reconstruction: trivial rig per camera, one registered frame per image."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    for cam in scene.cameras.values():
        if cam.model not in MODELS:
            raise InteropError(f"camera {cam.id} uses Unposed's {cam.model} lens model, which COLMAP cannot store; "
                               f"train or convert it to a COLMAP model first (e.g. OPENCV_FISHEYE: engine train "
                               f"--lens fisheye, or engine.splats.cameras.convert_camera, which reports the fit's "
                               f"RMS in pixels)")
        rec.add_camera_with_trivial_rig(pycolmap.Camera(
            camera_id=_check_id(cam.id, "camera"), model=cam.model, width=cam.width, height=cam.height,
            params=[float(p) for p in cam.params]))
    for image in scene.images:
        pose = image.cam_from_world
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=_check_id(image.id, "image")),
            pycolmap.Rigid3d(pycolmap.Rotation3d(pose[:3, :3]), pose[:3, 3]))
    if scene.points is not None:
        xyz = scene.points.xyz.astype(np.float64)
        for p, c in zip(xyz, scene.points.rgb):
            rec.add_point3D(p, pycolmap.Track(), c)
    return rec


def write_model(scene: Scene, model_dir: Path, binary: bool = True) -> None:
    """Write `scene` as a COLMAP model (cameras, images, points3D, rigs, frames) into the folder `model_dir`."""
    if not binary:
        for image in scene.images:
            if any(ch.isspace() for ch in image.name):
                raise InteropError(f"image {image.name!r}: COLMAP's text format cannot store names containing "
                                   f"whitespace; export with --binary")
    rec = to_reconstruction(scene)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if binary:
        rec.write_binary(str(model_dir))
    else:
        rec.write_text(str(model_dir))


def write_project(scene: Scene, root: Path, binary: bool = True, progress: Progress | None = None) -> int:
    """Write a COLMAP project into `root`: the model in `sparse/0/`, photos in `images/`; returns photos written."""
    root = Path(root)
    if progress is not None:
        progress.stage("write COLMAP model")
    write_model(scene, root / SPARSE_DIR, binary)
    return copy_photos(scene, root / IMAGES_DIR, progress)
