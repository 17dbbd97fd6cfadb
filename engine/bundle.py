"""The scene bundle: the one on-disk result format every engine command reads and writes.

A bundle is a folder:
    scene.json   format name/version, cameras, images (cam_from_world, OpenCV axes), units, provenance
    points.ply   optional coloured point cloud (see engine.ply)
    ...          other files named from scene.json (photos, splats, depth maps, LENS_FIELD networks), by paths
                 relative to the folder

See docs/CONVENTIONS.md for the full field list. Reading validates everything and names the field at fault;
writing is atomic (a half-written bundle never appears under the final name).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_dir
from .camera_models import check_params, get_model, lens_field_grid_size
from .errors import BundleError, CameraModelError
from .ply import Points, read_points, write_points

FORMAT = "unposed-scene"
VERSION = 1
SCENE_FILE = "scene.json"
POINTS_FILE = "points.ply"
LENS_NETWORK_FORMAT = "unposed-lens-field"  # `cameras[].lens_network` files (engine.lens_field.save_network)
LENS_NETWORK_VERSION = 1
LENS_NETWORK_DIR = "lens"  # where write_bundle puts networks that come from outside the bundle


@dataclass
class Camera:
    id: int
    model: str
    width: int
    height: int
    params: list[float]
    lens_network: Path | None = None  # LENS_FIELD only: its network (.npz); absolute in memory, relative on disk

    def split(self) -> tuple[float, float, float, float, tuple[float, ...]]:
        """(fx, fy, cx, cy, distortion params) in COLMAP's pixel convention."""
        return get_model(self.model).split(self.params)


@dataclass
class Image:
    id: int
    name: str
    camera_id: int
    cam_from_world: np.ndarray  # (4, 4) float64, OpenCV camera axes
    path: Path | None = None  # absolute in memory; stored relative to the bundle folder
    extras: dict[str, Any] = field(default_factory=dict)  # further per-image fields, kept as read

    def __post_init__(self) -> None:
        self.cam_from_world = np.asarray(self.cam_from_world, dtype=np.float64).reshape(4, 4)
        if self.path is not None:
            self.path = Path(self.path)


@dataclass
class Scene:
    cameras: dict[int, Camera]
    images: list[Image]
    points: Points | None = None
    units: str = "unknown"
    provenance: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # further top-level fields, kept as read

    def camera_of(self, image: Image) -> Camera:
        return self.cameras[image.camera_id]


_IMAGE_KEYS = {"id", "name", "path", "camera_id", "cam_from_world"}
_TOP_KEYS = {"format", "version", "units", "cameras", "images", "points", "provenance"}


def check_pose(matrix: Any, where: str) -> np.ndarray:
    """A validated 4x4 rigid transform (finite, orthonormal rotation with det +1, last row 0 0 0 1)."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise BundleError(f"{where}: not a 4x4 matrix of numbers") from None
    if m.shape != (4, 4):
        raise BundleError(f"{where}: expected a 4x4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise BundleError(f"{where}: contains NaN or infinite values")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-9):
        raise BundleError(f"{where}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    r = m[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0:
        raise BundleError(f"{where}: rotation part is not a proper rotation (orthonormal, det +1)")
    return m


def _field(obj: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in obj:
        raise BundleError(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BundleError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def read_lens_network(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a lens network file, checked to be one (numpy only: Blender reads bundles without torch).

    An .npz (read with allow_pickle=False) holding `format` = LENS_NETWORK_FORMAT, `version`, `grid` (n), `radius`
    (R), `hidden`, `blocks`, `radial_extent` and the weights as `param:<name>` arrays (`engine.lens_field`).
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: lens network file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except AttributeError:  # np.load gave a plain array (.npy), which has no context manager
        raise BundleError(f"{path}: not a lens network file (an .npy array, expected an .npz archive)") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a lens network file ({exc})") from None
    fmt, version = arrays.get("format"), arrays.get("version")
    if fmt is None or fmt.dtype.kind != "U" or str(fmt) != LENS_NETWORK_FORMAT:
        raise BundleError(f"{path}: not a lens network file (field 'format' is "
                          f"{None if fmt is None else fmt.tolist()!r}, expected {LENS_NETWORK_FORMAT!r})")
    if version is None or version.dtype.kind not in "iu" or int(version) != LENS_NETWORK_VERSION:
        raise BundleError(f"{path}: unsupported lens network 'version' "
                          f"{None if version is None else version.tolist()!r} (this engine reads "
                          f"{LENS_NETWORK_VERSION})")
    for key, kind in (("grid", "iu"), ("radius", "f"), ("hidden", "iu"), ("blocks", "iu"), ("radial_extent", "f")):
        value = arrays.get(key)
        if value is None or value.shape != () or value.dtype.kind not in kind:
            what = "number" if kind == "f" else "whole number"
            raise BundleError(f"{path}: lens network field {key!r} missing or not a {what}")
    return arrays


def _check_lens_network(path: Path, cam: Camera, where: str) -> None:
    """`path` is a lens network for LENS_FIELD camera `cam`: same grid size n and radius R."""
    if cam.model != "LENS_FIELD":
        raise BundleError(f"{where}: lens_network is only for LENS_FIELD cameras, this one is {cam.model}")
    arrays = read_lens_network(path)
    n, radius = lens_field_grid_size(len(cam.params)), cam.params[4]
    if int(arrays["grid"]) != n or not math.isclose(float(arrays["radius"]), radius, rel_tol=1e-9):
        raise BundleError(f"{where}: lens network {path} has a {int(arrays['grid'])}x{int(arrays['grid'])} grid of "
                          f"radius {float(arrays['radius'])}, the camera a {n}x{n} grid of radius {radius}")


def _parse_camera(obj: Any, where: str, root: Path) -> Camera:
    if not isinstance(obj, dict):
        raise BundleError(f"{where}: expected an object")
    cam = Camera(id=_field(obj, "id", int, where), model=_field(obj, "model", str, where),
                 width=_field(obj, "width", int, where), height=_field(obj, "height", int, where),
                 params=list(_field(obj, "params", list, where)))
    if cam.width <= 0 or cam.height <= 0:
        raise BundleError(f"{where}: width and height must be positive, got {cam.width}x{cam.height}")
    try:
        check_params(cam.model, cam.params)
    except CameraModelError as exc:
        raise BundleError(f"{where}: {exc}") from None
    cam.params = [float(p) for p in cam.params]
    network = obj.get("lens_network")
    if network is not None:
        if not isinstance(network, str):
            raise BundleError(f"{where}.lens_network: expected a relative path string or null, got {network!r}")
        cam.lens_network = (root / network).resolve()
        _check_lens_network(cam.lens_network, cam, where)
    return cam


def _parse_image(obj: Any, where: str, root: Path, check_files: bool) -> Image:
    if not isinstance(obj, dict):
        raise BundleError(f"{where}: expected an object")
    path = obj.get("path")
    if path is not None and not isinstance(path, str):
        raise BundleError(f"{where}.path: expected a relative path string or null, got {path!r}")
    image = Image(id=_field(obj, "id", int, where), name=_field(obj, "name", str, where),
                  camera_id=_field(obj, "camera_id", int, where),
                  cam_from_world=check_pose(_field(obj, "cam_from_world", list, where), f"{where}.cam_from_world"),
                  path=None if path is None else (root / path).resolve(),
                  extras={k: v for k, v in obj.items() if k not in _IMAGE_KEYS})
    if check_files and image.path is not None and not image.path.is_file():
        raise BundleError(f"{where}: image file {path!r} not found (looked for {image.path})")
    return image


def read_bundle(path: str | os.PathLike, check_files: bool = True) -> Scene:
    """Read and validate a bundle folder (or its scene.json). With check_files, referenced photos must exist."""
    path = Path(path)
    json_path = path if path.name == SCENE_FILE else path / SCENE_FILE
    root = json_path.parent.resolve()
    if not json_path.is_file():
        raise BundleError(f"{json_path}: not found (a scene bundle is a folder with {SCENE_FILE})")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{json_path}: not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{json_path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    where = str(json_path)
    if not isinstance(doc, dict):
        raise BundleError(f"{where}: top level must be a JSON object")
    if doc.get("format") != FORMAT:
        raise BundleError(f"{where}: field 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION or version < 1:
        raise BundleError(f"{where}: unsupported 'version' {version!r} (this engine reads 1..{VERSION})")
    cameras: dict[int, Camera] = {}
    for i, obj in enumerate(_field(doc, "cameras", list, where)):
        cam = _parse_camera(obj, f"{where}: cameras[{i}]", root)
        if cam.id in cameras:
            raise BundleError(f"{where}: cameras[{i}].id {cam.id} is used twice")
        cameras[cam.id] = cam
    images: list[Image] = []
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for i, obj in enumerate(_field(doc, "images", list, where)):
        image = _parse_image(obj, f"{where}: images[{i}]", root, check_files)
        if image.camera_id not in cameras:
            raise BundleError(f"{where}: images[{i}].camera_id {image.camera_id} names no camera")
        if image.id in seen_ids:
            raise BundleError(f"{where}: images[{i}].id {image.id} is used twice")
        if image.name in seen_names:
            raise BundleError(f"{where}: images[{i}].name {image.name!r} is used twice")
        seen_ids.add(image.id)
        seen_names.add(image.name)
        images.append(image)
    points = None
    points_name = doc.get("points")
    if points_name is not None:
        if not isinstance(points_name, str):
            raise BundleError(f"{where}.points: expected a file name or null, got {points_name!r}")
        points = read_points(root / points_name)
    units = doc.get("units", "unknown")
    provenance = doc.get("provenance", {})
    if not isinstance(units, str):
        raise BundleError(f"{where}.units: expected a string, got {units!r}")
    if not isinstance(provenance, dict):
        raise BundleError(f"{where}.provenance: expected an object, got {provenance!r}")
    extras = {k: v for k, v in doc.items() if k not in _TOP_KEYS}
    return Scene(cameras, images, points, units, provenance, extras)


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def write_bundle(scene: Scene, path: str | os.PathLike, extra_files: dict[str, Path] | None = None) -> Path:
    """Write `scene` as a bundle folder at `path`, atomically; returns the folder.

    `extra_files` maps names inside the bundle to files to copy in (splats, depth maps...). Photos stay where
    they are and are referenced by relative paths; photos that live inside an existing bundle at `path` are
    carried over into the new one. Lens networks (`Camera.lens_network`) are part of the bundle: one inside
    `path` keeps its name, one elsewhere is copied to `lens/camera_<id>.npz`.
    """
    final = Path(path).resolve()
    doc = {"format": FORMAT, "version": VERSION, "units": scene.units, "cameras": [], "images": [],
           "points": POINTS_FILE if scene.points is not None else None, "provenance": scene.provenance,
           **scene.extras}
    inside: list[Path] = []
    copies: dict[str, Path] = {}
    for cam in scene.cameras.values():
        check_params(cam.model, cam.params)
        entry = {"id": int(cam.id), "model": cam.model, "width": int(cam.width), "height": int(cam.height),
                 "params": [float(p) for p in cam.params]}
        if cam.lens_network is not None:
            network = Path(cam.lens_network).resolve()
            _check_lens_network(network, cam, f"camera {cam.id}")
            if final in network.parents:
                inside.append(network)
                entry["lens_network"] = _relative(network, final)
            else:
                entry["lens_network"] = f"{LENS_NETWORK_DIR}/camera_{int(cam.id)}.npz"
                copies[entry["lens_network"]] = network
        doc["cameras"].append(entry)
    for image in scene.images:
        if image.camera_id not in scene.cameras:
            raise BundleError(f"image {image.name!r}: camera_id {image.camera_id} names no camera")
        pose = check_pose(image.cam_from_world, f"image {image.name!r}: cam_from_world")
        rel = None
        if image.path is not None:
            abs_path = Path(image.path).resolve()
            rel = _relative(abs_path, final)
            if final in abs_path.parents:
                inside.append(abs_path)
        doc["images"].append({"id": int(image.id), "name": image.name, "path": rel,
                              "camera_id": int(image.camera_id), "cam_from_world": pose.tolist(),
                              **image.extras})
    with atomic_dir(final) as stage:
        for src in inside:
            dst = stage / src.relative_to(final)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        for name, src in {**copies, **(extra_files or {})}.items():
            dst = stage / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        if scene.points is not None:
            write_points(stage / POINTS_FILE, scene.points)
        (stage / SCENE_FILE).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return final
