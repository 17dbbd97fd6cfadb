# SPDX-License-Identifier: GPL-3.0-or-later
"""Engine cameras <-> Blender cameras: intrinsics, pose and lens distortion.

Mapping (docs/CONVENTIONS.md, checked against Blender in tests/test_blender_camera.py), sensor_fit HORIZONTAL:
    lens = fx * sensor_width / W        shift_x = (W/2 - cx) / W        shift_y = (cy - H/2) * (fx/fy) / W
    pixel aspect (x, y) = (1, fx/fy) when fx >= fy, else (fy/fx, 1)
Perspective models become a PERSP camera, with their radial-tangential distortion on a MovieClip set as the
camera's background (`bridge.lens`). Fisheye models (also LENS_FIELD, the learned lens) become a Cycles panoramic
camera, FISHEYE_LENS_POLYNOMIAL fitted to the model (exact for an equidistant lens); the fit's RMS error in pixels is
shown on the camera data as `camera_data["unposed_fisheye_fit_rms_px"]`. The full calibration
(model, size, every parameter: a LENS_FIELD's whole displacement grid and its network file too) is also stored as
JSON in `camera_data["unposed_calibration"]`, with the Blender settings it produced, so reading the camera back
returns it unchanged for as long as those settings are untouched.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..engine.bundle import Camera, check_pose
from ..engine.camera_models import check_params, get_model
from ..engine.errors import CameraModelError
from ..engine.pose import cam_from_world_of_glcam, make_transform, world_from_glcam
from . import lens

CALIBRATION_KEY = "unposed_calibration"
FIT_RMS_KEY = "unposed_fisheye_fit_rms_px"  # camera data: RMS error (px) of the Cycles polynomial fitted to the lens
POLYNOMIAL_WARN_PX = 0.5  # warn when a Cycles lens polynomial read back as OPENCV_FISHEYE is off by more
CONVENTION = "colmap"  # pixel centres at +0.5 (centred principal point = W/2, H/2), OpenCV camera axes
_PERSP_KEYS = ("type", "sensor_fit", "sensor_width", "lens", "shift_x", "shift_y")
_PANO_KEYS = ("type", "panorama_type", "sensor_fit", "sensor_width", "fisheye_fov", "fisheye_polynomial_k0",
              "fisheye_polynomial_k1", "fisheye_polynomial_k2", "fisheye_polynomial_k3", "fisheye_polynomial_k4")


def apply_camera(scene: bpy.types.Scene, cam_obj: bpy.types.Object, camera: Camera, *,
                 set_resolution: bool = True, image_path: str | Path | None = None) -> None:
    """Make `cam_obj` (a camera object) image like `camera`.

    With `set_resolution`, the scene's render size becomes the camera's (100 %) and its pixel aspect encodes
    fx != fy; without, they are left alone (the mapping is relative to the render width, so the camera is right
    for any render size with the camera's aspect ratio and pixel aspect). Distortion of perspective models goes on
    a MovieClip shown as the camera's background: loaded from `image_path` (the photo), or a blank frame. Models
    Blender cannot hold exactly warn with `bridge.lens.LensApproximationWarning`. Nothing changes if this raises.
    """
    if cam_obj.type != "CAMERA":
        raise TypeError(f"object {cam_obj.name!r} is a {cam_obj.type}, not a camera")
    check_params(camera.model, camera.params)
    if camera.width <= 0 or camera.height <= 0:
        raise CameraModelError(f"camera {camera.id}: size must be positive, got {camera.width}x{camera.height}")
    model = get_model(camera.model)
    fx, fy, _, _, _ = camera.split()
    settings, note = _fisheye_settings(camera) if model.fisheye else (_pinhole_settings(camera), {})
    data = cam_obj.data
    entry = _clip_entry(data)
    clip = None
    if not model.fisheye and model.extra_params:
        values = lens.tracking_values(camera)
        reuse = entry is not None and (image_path is None or _same_file(entry.clip.filepath, image_path))
        if reuse:
            lens.set_tracking_camera(entry.clip, values)
            clip = entry.clip
        else:
            clip = lens.clip_for_camera(camera, image_path, f"{cam_obj.name} lens")

    if set_resolution:
        render = scene.render
        render.resolution_x, render.resolution_y, render.resolution_percentage = camera.width, camera.height, 100
        render.pixel_aspect_x, render.pixel_aspect_y = _pixel_aspect(fx, fy)
    for key, value in settings.items():
        setattr(data, key, value)
    _set_clip_entry(data, entry, clip)
    if "fisheye_rms_px" in note:
        data[FIT_RMS_KEY] = note["fisheye_rms_px"]
    elif FIT_RMS_KEY in data:
        del data[FIT_RMS_KEY]
    data[CALIBRATION_KEY] = json.dumps({
        "id": camera.id, "model": camera.model, "width": camera.width, "height": camera.height,
        "params": [float(p) for p in camera.params], "convention": CONVENTION,
        "lens_network": None if camera.lens_network is None else str(Path(camera.lens_network).resolve()),
        "blender": _fingerprint(data, fx / fy), **note})


def apply_pose(cam_obj: bpy.types.Object, cam_from_world: np.ndarray) -> None:
    """Place the camera: Blender's matrix_world is the inverse pose with camera axes flipped (OpenCV -> OpenGL)."""
    pose = check_pose(cam_from_world, f"camera {cam_obj.name!r}: cam_from_world")
    cam_obj.matrix_world = Matrix(world_from_glcam(pose).tolist())


def camera_from_blender(scene: bpy.types.Scene, cam_obj: bpy.types.Object) -> tuple[Camera, np.ndarray]:
    """The engine camera (at the scene's render size) and cam_from_world (OpenCV axes) of a Blender camera.

    The stored calibration when the Blender settings it produced are unchanged (rescaled to the render size,
    as Blender's horizontal sensor fit does); otherwise derived from Blender: PINHOLE from the projection matrix
    (`calc_matrix_camera`), with the distortion of a MovieClip shown as the camera's background; OPENCV_FISHEYE
    from a Cycles equidistant or lens-polynomial camera.
    """
    if cam_obj.type != "CAMERA":
        raise TypeError(f"object {cam_obj.name!r} is a {cam_obj.type}, not a camera")
    render = scene.render
    width = render.resolution_x * render.resolution_percentage // 100
    height = render.resolution_y * render.resolution_percentage // 100
    camera = _stored_camera(scene, cam_obj.data, width, height)
    if camera is None:
        camera = _derived_camera(scene, cam_obj, width, height)
    return camera, _cam_from_world(cam_obj)


# --------------------------------------------------------------------------------------------------------------
# Engine -> Blender


def _pixel_aspect(fx: float, fy: float) -> tuple[float, float]:
    """Blender's pixel aspect (x, y) for focal lengths fx, fy: y/x = fx/fy, both >= 1 (Blender's minimum)."""
    return (1.0, fx / fy) if fx >= fy else (fy / fx, 1.0)


def _sensor_and_lens(fx: float, width: int) -> tuple[float, float]:
    """(sensor_width, lens) in mm for focal fx: a 36 mm sensor unless the lens would fall under Blender's 1 mm."""
    sensor = max(lens.SENSOR_WIDTH_MM, width / fx)
    return sensor, fx * sensor / width


def _pinhole_settings(camera: Camera) -> dict:
    fx, fy, cx, cy, _ = camera.split()
    width, height = camera.width, camera.height
    sensor, focal = _sensor_and_lens(fx, width)
    return {"type": "PERSP", "sensor_fit": "HORIZONTAL", "sensor_width": sensor, "lens": focal,
            "shift_x": (width / 2.0 - cx) / width, "shift_y": (cy - height / 2.0) * (fx / fy) / width}


def _fisheye_settings(camera: Camera) -> tuple[dict, dict]:
    """Cycles panoramic settings, and what to note in the stored calibration (the polynomial fit's RMS)."""
    fx, fy, cx, cy, extra = camera.split()
    width, height = camera.width, camera.height
    sensor, focal = _sensor_and_lens(fx, width)
    base = {"type": "PANO", "sensor_fit": "HORIZONTAL", "sensor_width": sensor, "lens": focal,
            "shift_x": 0.0, "shift_y": 0.0}
    # Always the lens polynomial (for an undistorted equidistant lens: its linear term alone): Cycles'
    # FISHEYE_EQUIDISTANT renders only the circle inscribed in the frame, so a full-frame fisheye would lose its
    # corners.
    fit = lens.fit_fisheye_polynomial(camera, sensor)
    coeffs = {f"fisheye_polynomial_k{i}": k for i, k in enumerate(fit.coeffs)}
    return ({**base, "panorama_type": "FISHEYE_LENS_POLYNOMIAL", "fisheye_fov": fit.fov, **coeffs},
            {"fisheye_rms_px": fit.rms_px})


def _clip_entry(data: bpy.types.Camera) -> bpy.types.CameraBackgroundImage | None:
    """The background entry holding a clip made by Unposed (see `bridge.lens.CLIP_TAG`)."""
    for entry in data.background_images:
        if entry.source == "MOVIE_CLIP" and entry.clip is not None and entry.clip.get(lens.CLIP_TAG):
            return entry
    return None


def _same_file(a: str, b: str | Path) -> bool:
    return Path(bpy.path.abspath(a)).resolve() == Path(b).resolve()


def _set_clip_entry(data: bpy.types.Camera, entry: bpy.types.CameraBackgroundImage | None,
                    clip: bpy.types.MovieClip | None) -> None:
    """Show `clip` as the camera's background in place of Unposed's previous clip (None: remove that)."""
    old = entry.clip if entry is not None else None
    if clip is None:
        if entry is not None:
            entry.clip = None  # removing the entry alone keeps the clip's user count (Blender 5.0.1)
            data.background_images.remove(entry)
    else:
        if entry is None:
            entry = data.background_images.new()
            entry.source = "MOVIE_CLIP"
        entry.clip = clip
        data.show_background_images = True
    if old is not None and old is not clip and old.users == 0:
        bpy.data.movieclips.remove(old)


def _fingerprint(data: bpy.types.Camera, pixel_aspect: float) -> dict:
    """The settings that define the camera's projection, as Blender holds them (float32), and the pixel aspect
    (y/x) the scene needs for it."""
    keys = _PERSP_KEYS if data.type == "PERSP" else _PANO_KEYS
    return {**{key: getattr(data, key) for key in keys}, "pixel_aspect": pixel_aspect}


# --------------------------------------------------------------------------------------------------------------
# Blender -> engine


def _stored_camera(scene: bpy.types.Scene, data: bpy.types.Camera, width: int, height: int) -> Camera | None:
    """The stored calibration at this render size, or None if there is none or Blender's settings changed."""
    text = data.get(CALIBRATION_KEY)
    if not isinstance(text, str):
        return None
    try:
        stored = json.loads(text)
        network = stored.get("lens_network")
        camera = Camera(int(stored["id"]), stored["model"], int(stored["width"]), int(stored["height"]),
                        [float(p) for p in stored["params"]], None if network is None else Path(network))
        check_params(camera.model, camera.params)
        recorded = stored["blender"]
    except (ValueError, KeyError, TypeError, CameraModelError):
        return None  # damaged or foreign property: Blender's own settings are the truth
    render = scene.render
    if not _same_settings(recorded, _fingerprint(data, render.pixel_aspect_y / render.pixel_aspect_x)):
        return None
    if (width, height) == (camera.width, camera.height):
        return camera
    # Horizontal sensor fit: one scale s = W / w0 for both focals; cx scales, cy keeps its offset from the centre
    # (scaled), since shift_y is relative to the width too.
    model = get_model(camera.model)
    fx, fy, cx, cy, extra = camera.split()
    s = width / camera.width
    return Camera(camera.id, camera.model, width, height,
                  model.join(fx * s, fy * s, cx * s, height / 2.0 + (cy - camera.height / 2.0) * s, extra),
                  camera.lens_network)  # the field's displacements are angles: unchanged by the pixel scale


def _same_settings(recorded: dict, current: dict) -> bool:
    if recorded.keys() != current.keys():
        return False
    for key, value in current.items():
        old = recorded[key]
        if isinstance(value, str) or isinstance(old, str):
            if value != old:
                return False
        elif not np.allclose(np.asarray(old, dtype=np.float64), np.asarray(value, dtype=np.float64),
                             rtol=1e-6, atol=1e-9):
            return False
    return True


def _derived_camera(scene: bpy.types.Scene, cam_obj: bpy.types.Object, width: int, height: int) -> Camera:
    data = cam_obj.data
    render = scene.render
    ax, ay = render.pixel_aspect_x, render.pixel_aspect_y
    if data.type == "PERSP":
        # Blender's projection matrix maps camera space to NDC in [-1, 1], y up: u = (1 + P00 x/-z + P02) W/2 ...
        p = np.array(cam_obj.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=width, y=height,
                                                scale_x=ax, scale_y=ay))
        fx, fy = p[0, 0] * width / 2.0, p[1, 1] * height / 2.0
        cx, cy = (1.0 - p[0, 2]) * width / 2.0, (1.0 + p[1, 2]) * height / 2.0
        entry = next((e for e in data.background_images if e.source == "MOVIE_CLIP" and e.clip is not None), None)
        if entry is None:
            return Camera(1, "PINHOLE", width, height, [fx, fy, cx, cy])
        return _with_intrinsics(lens.camera_from_clip(entry.clip, width, height), fx, fy, cx, cy)
    if data.type == "PANO" and data.panorama_type == "FISHEYE_EQUIDISTANT":
        fov = data.fisheye_fov
        return Camera(1, "OPENCV_FISHEYE", width, height,
                      [width / fov, height / fov, width / 2.0, height / 2.0, 0.0, 0.0, 0.0, 0.0])
    if data.type == "PANO" and data.panorama_type == "FISHEYE_LENS_POLYNOMIAL":
        coeffs = tuple(getattr(data, f"fisheye_polynomial_k{i}") for i in range(5))
        camera, err = lens.polynomial_fisheye_camera(coeffs, data.fisheye_fov, width, height, ay / ax,
                                                     _sensor_width_mm(data, width * ax, height * ay))
        if err > POLYNOMIAL_WARN_PX:
            warnings.warn(lens.LensApproximationWarning(
                f"camera {cam_obj.name!r}: OPENCV_FISHEYE fits its Cycles lens polynomial to {err:.2f} px at worst"),
                stacklevel=3)
        return camera
    kind = data.type if data.type != "PANO" else f"PANO {data.panorama_type}"
    raise CameraModelError(f"camera {cam_obj.name!r}: a {kind} camera has no COLMAP camera model "
                           f"(use a perspective, fisheye equidistant or fisheye lens polynomial camera)")


def _sensor_width_mm(data: bpy.types.Camera, aspect_w: float, aspect_h: float) -> float:
    """Width of the image on the sensor (mm) as Cycles sizes it for fisheye cameras under each sensor fit."""
    horizontal = data.sensor_fit == "HORIZONTAL" or (data.sensor_fit == "AUTO" and aspect_w > aspect_h)
    if horizontal:
        return data.sensor_width
    size = data.sensor_height if data.sensor_fit == "VERTICAL" else data.sensor_width
    return size * aspect_w / aspect_h


def _with_intrinsics(camera: Camera, fx: float, fy: float, cx: float, cy: float) -> Camera:
    """`camera`'s distortion with the given focal lengths and principal point (OPENCV if fx != fy needs it)."""
    model = get_model(camera.model)
    *_, extra = camera.split()
    if model.shared_focal:
        if abs(fx - fy) <= 1e-6 * fx:  # equal up to Blender's float32 arithmetic
            fx = fy = (fx + fy) / 2.0
        else:
            model, extra = get_model("OPENCV"), (*extra, 0.0, 0.0, 0.0)[:4]
    return Camera(camera.id, model.name, camera.width, camera.height, model.join(fx, fy, cx, cy, extra))


def _cam_from_world(cam_obj: bpy.types.Object) -> np.ndarray:
    """cam_from_world of the object's world matrix, with scale removed (nearest rotation, via SVD)."""
    world = np.array(cam_obj.matrix_world, dtype=np.float64)
    u, _, vt = np.linalg.svd(world[:3, :3])
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        raise ValueError(f"camera {cam_obj.name!r} is mirrored (negative scale); it has no camera pose")
    return cam_from_world_of_glcam(make_transform(rotation, world[:3, 3]))
