# SPDX-License-Identifier: GPL-3.0-or-later
"""Perspective undistortion of a scene bundle: what a COLMAP + plain 3DGS user does (COLMAP's image_undistorter).

`undistort_scene` writes a new bundle whose cameras are PINHOLE, with the same poses and points, and whose photos
are the originals resampled through the source lens: each output pixel centre's ray (x, y, 1) is projected through
the source camera (`engine.stmap.project`, numpy, every model including LENS_FIELD) and the photo is read there
bilinearly (cv2.remap; COLMAP pixel convention, so OpenCV's integer pixel centres are the positions minus 0.5).
Output pixels whose ray the source lens does not see, or sees outside its frame, are black.

Default field of view (`pinhole_camera`): a perspective image cannot reach 180 degrees and stretches its
periphery by 1 / cos^2 of the angle from the axis (4x at 60 degrees), so each axis of the output shows what the
source lens sees along that axis through the optical axis (the smaller of the two sides), at most MAX_FOV_DEG
(120 degrees: beyond, a perspective image spends most of its pixels on a stretched rim). The focal length is the
source lens's magnification on its axis, so the centre keeps its resolution (COLMAP's undistorter keeps the focal
too) and the image size follows from the field; with `size` given, the focal instead fits the field into it.
The principal point is the output's centre.

Per-image depth maps (`images[].depth`, float32 camera z) on the photo's pixels are resampled with the photo
(nearest pixel: camera z does not depend on the lens, and blending would invent surfaces across edges), and a
`confidence` map beside one likewise; maps of their own `depth_camera` (`engine align`) do not follow the photo's
lens and are copied unchanged. Top-level extras (`splats`, `training`) belong to the source photos and are not
carried over.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

from .atomic import atomic_dir
from .bundle import Camera, Image, Scene, read_bundle, write_bundle
from .errors import BundleError, CameraModelError
from .stmap import pixel_grid, project

MAX_FOV_DEG = 120.0  # widest default field per axis of the perspective output
MAX_SIZE_FACTOR = 8  # an output side may be at most this many times the source's longer side
IMAGES_DIR = "images"
_ANGLE_STEP_DEG = 0.05  # resolution of the default field's search along each axis
_AXIS_EPS = 1e-4  # pinhole-plane step for the on-axis magnification (central difference)
_MAPS = ("depth", "confidence")  # per-image map files (relative paths) that live on the photo's pixels


def _axis_half_fields(camera: Camera) -> np.ndarray:
    """Half-angles (radians) the lens sees from its optical axis towards +x, -x, +y, -y: the largest angle up to
    which every ray in that direction projects validly inside the frame (searched in _ANGLE_STEP_DEG steps)."""
    angles = np.radians(np.arange(1, int(round(90.0 / _ANGLE_STEP_DEG))) * _ANGLE_STEP_DEG)
    out = []
    for dx, dy in ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)):
        rays = np.stack([dx * np.sin(angles), dy * np.sin(angles), np.cos(angles)], -1)
        pixels, valid = project(camera, rays)
        inside = valid & (pixels[:, 0] >= 0) & (pixels[:, 0] <= camera.width) & (pixels[:, 1] >= 0) \
            & (pixels[:, 1] <= camera.height)
        seen = int(np.argmin(inside)) if not inside.all() else len(angles)
        out.append(angles[seen - 1] if seen > 0 else 0.0)
    return np.array(out)


def _axis_focal(camera: Camera) -> tuple[float, float]:
    """The lens's magnification on its optical axis (px per unit of the pinhole plane), along x and y."""
    e = _AXIS_EPS
    rays = np.array([[e, 0.0, 1.0], [-e, 0.0, 1.0], [0.0, e, 1.0], [0.0, -e, 1.0]])
    pixels, valid = project(camera, rays)
    if not valid.all():
        raise CameraModelError(f"camera {camera.id} ({camera.model}): the lens does not see along its optical axis")
    return float(pixels[0, 0] - pixels[1, 0]) / (2 * e), float(pixels[2, 1] - pixels[3, 1]) / (2 * e)


def pinhole_camera(camera: Camera, hfov_deg: float | None = None, size: tuple[int, int] | None = None) -> Camera:
    """The PINHOLE camera (same id) that `camera`'s photos are undistorted into: centred principal point, field of
    view `hfov_deg` across the width (default: the module docstring's rule) and `size` (width, height) (default:
    the focal of the source's axis, the size the field then needs)."""
    if hfov_deg is not None and not (isinstance(hfov_deg, (int, float)) and 0 < hfov_deg < 180):
        raise CameraModelError(f"hfov_deg must be a number in (0, 180) degrees (a perspective image cannot show 180 "
                               f"degrees or more), got {hfov_deg!r}")
    if size is not None:
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)):
            raise CameraModelError(f"size must be (width, height) in whole pixels > 0, got {size!r}")
    right, left, down, up = _axis_half_fields(camera)
    cap = math.radians(MAX_FOV_DEG) / 2
    half_x = math.radians(hfov_deg) / 2 if hfov_deg is not None else min(right, left, cap)
    half_y = min(down, up, cap)
    if half_x <= 0 or half_y <= 0:
        raise CameraModelError(f"camera {camera.id} ({camera.model} {camera.width}x{camera.height}): the lens sees "
                               f"nothing inside its frame along its {'x' if half_x <= 0 else 'y'} axis")
    fx, fy = _axis_focal(camera)
    if size is None:
        width, height = (max(1, math.floor(2 * f * math.tan(h))) for f, h in ((fx, half_x), (fy, half_y)))
    else:
        width, height = int(size[0]), int(size[1])
        fx, fy = width / 2 / math.tan(half_x), width / 2 / math.tan(half_x) * fy / fx
    limit = MAX_SIZE_FACTOR * max(camera.width, camera.height)
    if max(width, height) > limit:
        raise CameraModelError(f"camera {camera.id}: a {2 * math.degrees(half_x):.1f} deg wide perspective image at "
                               f"the lens's focal would be {width}x{height} px (more than {limit}); pass a smaller "
                               f"hfov_deg or a size")
    return Camera(camera.id, "PINHOLE", width, height, [fx, fy, width / 2, height / 2])


def undistort_maps(source: Camera, target: Camera) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel centre of the perspective `target` (H, W): its position in `source`'s image (H, W, 2),
    COLMAP pixels, and whether the source lens sees that ray inside its frame (H, W)."""
    fx, fy, cx, cy, _ = target.split()
    grid = pixel_grid(target.width, target.height)
    rays = np.stack([(grid[..., 0] - cx) / fx, (grid[..., 1] - cy) / fy, np.ones(grid.shape[:2])], -1)
    pixels, valid = project(source, rays)
    seen = valid & (pixels[..., 0] >= 0) & (pixels[..., 0] <= source.width) & (pixels[..., 1] >= 0) \
        & (pixels[..., 1] <= source.height)
    return pixels, seen


def remap(image: np.ndarray, pixels: np.ndarray, seen: np.ndarray, nearest: bool = False) -> np.ndarray:
    """`image` read at `pixels` (H, W, 2; COLMAP convention) bilinearly (or at the nearest pixel), 0 where not
    `seen`. Reads within half a pixel outside the frame take the border pixel (the frame's outer edge is seen)."""
    import cv2

    maps = np.where(seen[..., None], pixels - 0.5, -1.0).astype(np.float32)  # OpenCV: pixel centres at integers
    out = cv2.remap(np.ascontiguousarray(image), maps[..., 0], maps[..., 1],
                    cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out[~seen] = 0
    return out


def _photo_name(image: Image, used: set[PurePosixPath]) -> PurePosixPath:
    from .interop import image_relpath

    rel = PurePosixPath(IMAGES_DIR) / image_relpath(image.name, f"image {image.id}").with_suffix(".png")
    if rel in used:  # e.g. a.jpg and a.png
        rel = rel.with_name(f"{rel.stem}_{image.id}.png")
    used.add(rel)
    return rel


def _load_map(path: Path, image: Image, key: str, shape: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        raise BundleError(f"image {image.name!r}: {key} map {path} not found")
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"image {image.name!r}: {key} map {path} is not a .npy array ({exc})") from None
    if values.shape != shape:
        raise BundleError(f"image {image.name!r}: {key} map {path} is {values.shape}, its photo {shape}")
    return values.astype(np.float32)


def undistort_scene(scene: str | os.PathLike, out_dir: str | os.PathLike, hfov_deg: float | None = None,
                    size: tuple[int, int] | None = None) -> Path:
    """Write the perspective (PINHOLE) version of the scene bundle at `scene` to `out_dir` (atomically); returns
    the folder. Every camera becomes `pinhole_camera(camera, hfov_deg, size)`; photos are written as PNG under
    images/ (image names unchanged); see the module docstring."""
    import cv2

    from .calibrate.image_io import load_image
    from .interop import provenance

    source_dir = Path(scene)
    src = read_bundle(source_dir)
    root = (source_dir.parent if source_dir.name == "scene.json" else source_dir).resolve()
    if not src.images:
        raise BundleError(f"{root}: the bundle has no images: nothing to undistort")
    for image in src.images:
        if image.path is None:
            raise BundleError(f"image {image.name!r} has no photo (path is null); undistortion needs every photo")
    targets = {cid: pinhole_camera(cam, hfov_deg, size) for cid, cam in src.cameras.items()}
    maps = {cid: undistort_maps(src.cameras[cid], target) for cid, target in targets.items()}
    out = Path(out_dir).absolute()
    with atomic_dir(out) as stage, tempfile.TemporaryDirectory(prefix="unposed-undistort-") as tmp:
        images, files, used = [], {}, set()
        for image in src.images:
            cam, target = src.camera_of(image), targets[image.camera_id]
            rgb = load_image(image.path).rgb
            if rgb.shape[:2] != (cam.height, cam.width):
                raise BundleError(f"image {image.name!r}: photo {image.path} is {rgb.shape[1]}x{rgb.shape[0]} but "
                                  f"its camera {cam.id} is {cam.width}x{cam.height}")
            pixels, seen = maps[image.camera_id]
            rel = _photo_name(image, used)
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(stage / rel), np.ascontiguousarray(remap(rgb, pixels, seen)[..., ::-1])):
                raise OSError(f"{stage / rel}: could not write PNG")
            extras = copy.deepcopy(image.extras)
            for key in _MAPS:
                name = extras.get(key)
                if not isinstance(name, str):
                    continue
                if "depth_camera" in extras:  # on their own camera's pixels: unchanged
                    if not (root / name).is_file():
                        raise BundleError(f"image {image.name!r}: {key} map {root / name} not found")
                    files[name] = root / name
                    continue
                values = _load_map(root / name, image, key, (cam.height, cam.width))
                name = f"{key}/{rel.stem}.npy"
                files[name] = Path(tmp) / name
                files[name].parent.mkdir(exist_ok=True)
                np.save(files[name], remap(values, pixels, seen, nearest=True))
                extras[key] = name
            images.append(Image(image.id, image.name, image.camera_id, image.cam_from_world, stage / rel, extras))
        record = provenance("undistort", root, hfov_deg=hfov_deg, size=None if size is None else list(size),
                            source_cameras=[{"id": c.id, "model": c.model, "width": c.width, "height": c.height,
                                             "params": list(c.params)} for c in src.cameras.values()])
        write_bundle(Scene(targets, images, src.points, src.units, record), stage, extra_files=files)
    return out
