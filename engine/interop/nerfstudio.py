"""nerfstudio `transforms.json` <-> scene bundles.

The format, as nerfstudio's own dataparser (`nerfstudio/data/dataparsers/nerfstudio_dataparser.py`) reads it:
  * `frames[]`: `file_path` (relative to the JSON's folder), `transform_matrix` (4x4 camera-to-world with OpenGL
    camera axes: x right, y up, -z forward);
  * intrinsics `fl_x fl_y cx cy w h`, distortion `k1 k2 k3 k4 p1 p2` (missing ones are 0) and `camera_model`,
    either at the top level (shared) or in each frame. nerfstudio uses a key from the frames only when the top
    level lacks it; we let a frame's value override the shared one, which reads every file nerfstudio reads
    the same way, and on export write intrinsics either all shared or all per frame;
  * `ply_file_path`: optional point cloud in the same world frame as the poses (nerfstudio's COLMAP converter
    applies its `applied_transform` to both). `applied_transform` itself only records how that world was
    derived from COLMAP's, so it is not needed here and is ignored.

Pixel convention: nerfstudio's `Cameras.get_image_coords` puts pixel centres at +0.5 (`pixel_offset=0.5`) and
rays are `((u - cx) / fx, (v - cy) / fy)`, and its COLMAP converter (`process_data/colmap_utils.py`,
`parse_colmap_camera_params`) copies COLMAP's cx, cy unchanged. Both therefore use COLMAP's convention (centred
principal point = W/2, H/2) and cx, cy pass through with no offset.

Distortion: nerfstudio's perspective model is `d = 1 + k1 r + k2 r^2 + k3 r^3 + k4 r^4` (r = x^2 + y^2) plus
OpenCV tangential p1, p2 (`camera_utils._compute_residual_and_jacobian`). With k4 = 0 this is COLMAP's
FULL_OPENCV with k4 = k5 = k6 = 0, so OPENCV, FULL_OPENCV and the simpler models map exactly; nerfstudio's
r^8 term k4 has no COLMAP counterpart. Its fisheye model is `theta_d = theta (1 + k1 theta^2 + ... + k4
theta^8)`, exactly COLMAP's OPENCV_FISHEYE, which also covers (SIMPLE_)RADIAL_FISHEYE, and THIN_PRISM_FISHEYE when
its tangential and prism terms are 0; nerfstudio ignores p1, p2 for fisheye cameras.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..bundle import Camera, Image, Scene, check_pose
from ..camera_models import check_params, get_model
from ..errors import BundleError, CameraModelError
from ..ply import read_points, write_points
from ..pose import cam_from_world_of_glcam, world_from_glcam
from ..progress import Progress
from . import InteropError, copy_photos

TRANSFORMS_FILE = "transforms.json"
POINTS_FILE = "points.ply"
IMAGES_DIR = "images"

# camera_model names nerfstudio accepts (cameras.CAMERA_MODEL_TO_TYPE) that are also COLMAP models.
PERSPECTIVE_NAMES = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
FISHEYE_NAME = "OPENCV_FISHEYE"
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_REQUIRED = ("fl_x", "fl_y", "cx", "cy", "w", "h")

# For each COLMAP model, the nerfstudio key of each distortion parameter in COLMAP order (None: no nerfstudio
# counterpart, so the parameter must be 0 to export).
_NS_KEYS: dict[str, tuple[str | None, ...]] = {
    "SIMPLE_PINHOLE": (),
    "PINHOLE": (),
    "SIMPLE_RADIAL": ("k1",),
    "RADIAL": ("k1", "k2"),
    "OPENCV": ("k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("k1", "k2", "p1", "p2", "k3", None, None, None),
    "OPENCV_FISHEYE": ("k1", "k2", "k3", "k4"),
    "SIMPLE_RADIAL_FISHEYE": ("k1",),
    "RADIAL_FISHEYE": ("k1", "k2"),
    "THIN_PRISM_FISHEYE": ("k1", "k2", None, None, "k3", "k4", None, None),
}


def camera_to_nerfstudio(cam: Camera) -> dict[str, Any]:
    """nerfstudio intrinsics (camera_model, fl_x, fl_y, cx, cy, w, h, distortion) of a camera, exactly."""
    if cam.model not in _NS_KEYS:
        raise InteropError(f"camera {cam.id} ({cam.model}): nerfstudio has no such camera model; train or convert "
                           f"it to a parametric model (e.g. `engine train --lens fisheye`) before exporting")
    model = get_model(cam.model)
    fx, fy, cx, cy, extra = model.split(cam.params)
    if cam.model in PERSPECTIVE_NAMES or cam.model == FISHEYE_NAME:
        name = cam.model
    else:
        name = FISHEYE_NAME if model.fisheye else "OPENCV"
    out: dict[str, Any] = {"camera_model": name, "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy,
                           "w": cam.width, "h": cam.height}
    for key, pname, value in zip(_NS_KEYS[cam.model], model.extra_params, extra):
        if key is not None:
            out[key] = value
        elif value != 0.0:
            raise InteropError(f"camera {cam.id} ({cam.model}): parameter {pname}={value} has no counterpart in "
                               f"nerfstudio's camera models; this camera cannot be written to {TRANSFORMS_FILE}")
    return out


def _fit(model_name: str, fx: float, fy: float, cx: float, cy: float, dist: dict[str, float]) -> list[float] | None:
    """Parameters of `model_name` reproducing nerfstudio's intrinsics exactly, or None if it cannot."""
    model = get_model(model_name)
    keys = _NS_KEYS[model_name]
    if model.shared_focal and fx != fy:
        return None
    if any(value != 0.0 and key not in keys for key, value in dist.items()):
        return None
    return model.join(fx, fy, cx, cy, [dist[k] if k is not None else 0.0 for k in keys])


def camera_from_nerfstudio(fields: dict[str, Any], where: str) -> tuple[str, int, int, list[float]]:
    """(COLMAP model, width, height, params) for nerfstudio intrinsics; keeps the named model when it fits."""
    for key in _REQUIRED:
        if key not in fields:
            raise InteropError(f"{where}: missing field {key!r} (neither in the frame nor at the top level)")
    name = fields.get("camera_model", "OPENCV")
    fx, fy, cx, cy = (_number(fields[k], f"{where}.{k}") for k in ("fl_x", "fl_y", "cx", "cy"))
    width, height = (_size(fields[k], f"{where}.{k}") for k in ("w", "h"))
    dist = {k: _number(fields.get(k, 0.0), f"{where}.{k}") for k in DISTORTION_KEYS}
    if name == FISHEYE_NAME:
        dist = {k: v for k, v in dist.items() if k not in ("p1", "p2")}  # nerfstudio ignores them for fisheye
        candidates = [FISHEYE_NAME]
    elif name in PERSPECTIVE_NAMES:
        candidates = [name, "PINHOLE", "OPENCV", "FULL_OPENCV"]
    else:
        raise InteropError(f"{where}.camera_model: {name!r} is not supported (supported: "
                           f"{', '.join(PERSPECTIVE_NAMES + (FISHEYE_NAME,))})")
    for candidate in candidates:
        params = _fit(candidate, fx, fy, cx, cy, dist)
        if params is not None:
            try:
                check_params(candidate, params)
            except CameraModelError as exc:
                raise InteropError(f"{where}: {exc}") from None
            return candidate, width, height, params
    raise InteropError(f"{where}: k4={dist['k4']} (nerfstudio's r^8 radial term) has no counterpart in COLMAP's "
                       f"camera models")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InteropError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _size(value: Any, where: str) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or value <= 0):
        raise InteropError(f"{where}: expected a positive whole number of pixels, got {value!r}")
    return int(value)


def _load(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise InteropError(f"{json_path}: not found")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InteropError(f"{json_path}: not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InteropError(f"{json_path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise InteropError(f"{json_path}: top level must be a JSON object")
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InteropError(f"{json_path}: field 'frames' must be a non-empty list, got {frames!r:.80}")
    return doc


def _photo_names(paths: list[Path], root: Path) -> list[str]:
    """Image names: photo paths relative to `root/images/` when all photos are in it, else to their common folder."""
    base = root / IMAGES_DIR
    if not all(base in p.parents for p in paths):
        base = Path(os.path.commonpath([p.parent for p in paths]))
    return [p.relative_to(base).as_posix() for p in paths]


def _image_ids(frames: list[dict]) -> list[int]:
    """nerfstudio's COLMAP converter keeps COLMAP's image ids as `colmap_im_id`; use them when all are valid."""
    ids = [f.get("colmap_im_id") for f in frames]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(ids):
        return ids
    return list(range(1, len(frames) + 1))


def read_transforms(json_path: Path, images_dir: Path | None = None, progress: Progress | None = None) -> Scene:
    """Read a transforms.json as a Scene. Photos (`file_path`, or `images_dir/<name>` when given) must exist."""
    json_path = Path(json_path)
    doc = _load(json_path)
    root = json_path.parent.absolute()
    frames = doc["frames"]
    shared = {k: v for k, v in doc.items() if k in _REQUIRED + DISTORTION_KEYS + ("camera_model",)}
    cameras: dict[int, Camera] = {}
    camera_ids: dict[tuple, int] = {}
    parsed = []
    for i, frame in enumerate(frames):
        where = f"{json_path}: frames[{i}]"
        if not isinstance(frame, dict):
            raise InteropError(f"{where}: expected an object")
        file_path = frame.get("file_path")
        if not isinstance(file_path, str) or not file_path:
            raise InteropError(f"{where}.file_path: expected a path string, got {file_path!r}")
        matrix = frame.get("transform_matrix")
        try:
            m = np.asarray(matrix, dtype=np.float64)
            if m.shape == (3, 4):
                m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
            world_from_gl = check_pose(m, f"{where}.transform_matrix")
        except (TypeError, ValueError):
            raise InteropError(f"{where}.transform_matrix: expected a 4x4 matrix of numbers, got {matrix!r:.80}") \
                from None
        except BundleError as exc:
            raise InteropError(str(exc)) from None
        model, width, height, params = camera_from_nerfstudio({**shared, **frame}, where)
        key = (model, width, height, tuple(params))
        if key not in camera_ids:  # frames with identical intrinsics share one camera
            camera_ids[key] = len(camera_ids) + 1
            cameras[camera_ids[key]] = Camera(camera_ids[key], model, width, height, params)
        path = Path(os.path.normpath(root / file_path))
        parsed.append((path, camera_ids[key], cam_from_world_of_glcam(world_from_gl)))
    names = _photo_names([p for p, _, _ in parsed], root)
    images: list[Image] = []
    seen: dict[str, int] = {}
    for i, (image_id, name, (path, camera_id, pose)) in enumerate(zip(_image_ids(frames), names, parsed)):
        if name in seen:
            raise InteropError(f"{json_path}: frames[{i}].file_path names the same photo as frames[{seen[name]}] "
                               f"({name!r})")
        seen[name] = i
        photo = Path(images_dir) / name if images_dir is not None else path
        if not photo.is_file():
            raise InteropError(f"{json_path}: frames[{i}].file_path: photo not found at {photo}")
        images.append(Image(id=image_id, name=name, camera_id=camera_id, cam_from_world=pose, path=photo))
    points = None
    ply = doc.get("ply_file_path")
    if ply is not None:
        if not isinstance(ply, str):
            raise InteropError(f"{json_path}.ply_file_path: expected a path string, got {ply!r}")
        try:
            points = read_points(root / ply)
        except BundleError as exc:
            raise InteropError(f"{json_path}.ply_file_path: {exc}") from None
    if progress is not None and "applied_transform" in doc:
        progress.log("transforms.json has an applied_transform; poses and points are kept in its world frame")
    return Scene(cameras=cameras, images=images, points=points)


def write_transforms(scene: Scene, root: Path, progress: Progress | None = None) -> int:
    """Write a nerfstudio dataset into the folder `root`: transforms.json, photos in images/, points.ply.

    Returns the number of photos written. Raises InteropError for cameras nerfstudio cannot express and for
    scenes mixing fisheye and perspective cameras (nerfstudio reads one camera type per file).
    """
    root = Path(root)
    used = sorted({image.camera_id for image in scene.images})
    intrinsics = {cid: camera_to_nerfstudio(scene.cameras[cid]) for cid in used}
    doc: dict[str, Any] = {}
    if len(used) == 1:
        doc.update(intrinsics[used[0]])
    else:
        names = {intrinsics[cid]["camera_model"] for cid in used}
        if FISHEYE_NAME in names and len(names) > 1:
            raise InteropError(f"the scene mixes fisheye and perspective cameras ({', '.join(sorted(names))}); "
                               f"{TRANSFORMS_FILE} holds one camera type for all frames")
        doc["camera_model"] = names.pop() if len(names) == 1 else "OPENCV"
    frames = []
    for image in scene.images:
        frame = {"file_path": f"{IMAGES_DIR}/{image.name}",
                 "transform_matrix": world_from_glcam(image.cam_from_world).tolist(), "colmap_im_id": image.id}
        if len(used) > 1:
            frame.update(intrinsics[image.camera_id])
        frames.append(frame)
    doc["frames"] = frames
    if scene.points is not None:
        write_points(root / POINTS_FILE, scene.points)
        doc["ply_file_path"] = POINTS_FILE
    count = copy_photos(scene, root / IMAGES_DIR, progress)
    with atomic_file(root / TRANSFORMS_FILE, "w") as f:
        json.dump(doc, f, indent=2)
    return count
