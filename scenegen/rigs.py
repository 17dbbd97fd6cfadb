"""Camera rigs: intrinsics in any engine camera model and poses looking at a built scene.

Poses are `cam_from_world` in OpenCV axes (x right, y down, z forward), world z up; see docs/CONVENTIONS.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .addon import module
from .scenes import BuiltScene

if TYPE_CHECKING:  # the add-on's own copy is used at run time (see addon.py); same classes
    from engine.bundle import Camera

RIGS = ("orbit", "random")


@dataclass
class View:
    name: str
    camera: Camera
    cam_from_world: np.ndarray  # (4, 4)


def intrinsics(model: str = "PINHOLE", width: int = 160, height: int = 120, *, hfov_deg: float = 60.0,
               aspect: float = 1.0, principal_offset: tuple[float, float] = (0.0, 0.0),
               extra: Sequence[float] = (), camera_id: int = 1) -> Camera:
    """An engine Camera with horizontal field of view `hfov_deg`, fy = aspect * fx, the principal point
    `principal_offset` pixels from the image centre and distortion `extra` (zeros when empty).

    Fisheye models get the equidistant focal (r = f * theta reaches the image's left/right edge at hfov/2);
    perspective models the pinhole one (r = f * tan(theta)).
    """
    cam_model = module("engine.camera_models").get_model(model)
    half = np.radians(hfov_deg) / 2
    if not 0 < half < (np.pi if cam_model.fisheye else np.pi / 2):
        raise ValueError(f"hfov_deg {hfov_deg} is out of range for {model}")
    fx = (width / 2) / (half if cam_model.fisheye else np.tan(half))
    cx, cy = width / 2 + principal_offset[0], height / 2 + principal_offset[1]
    params = cam_model.join(fx, aspect * fx, cx, cy, extra)
    return module("engine.bundle").Camera(id=camera_id, model=model, width=width, height=height, params=params)


def look_at(centre: Sequence[float], target: Sequence[float], roll_deg: float = 0.0) -> np.ndarray:
    """cam_from_world of a camera at `centre` looking at `target`, world z up, rolled `roll_deg` about its axis."""
    centre, target = np.asarray(centre, dtype=np.float64), np.asarray(target, dtype=np.float64)
    forward = target - centre
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: the view direction is vertical, so 'up' is undefined")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    rotation = np.stack([c * right + s * down, -s * right + c * down, forward])  # rows: camera axes in world
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = -rotation @ centre
    return pose


def poses(built: BuiltScene, n: int, rig: str = "orbit", *, seed: int = 0, arc_deg: float = 360.0,
          max_roll_deg: float = 4.0) -> list[np.ndarray]:
    """`n` poses on the scene's camera ring, looking at jittered points around its target.

    'orbit': evenly spaced around `arc_deg` degrees of the ring (small random offsets); 'random': anywhere on
    that arc. Heights are drawn from the scene's range, rolls from +-max_roll_deg.
    """
    if rig not in RIGS:
        raise ValueError(f"unknown rig {rig!r}; known rigs: {', '.join(RIGS)}")
    rng = np.random.default_rng(seed)
    arc = np.radians(arc_deg)
    start = rng.uniform(0, 2 * np.pi)
    if rig == "orbit":
        step = arc / n if arc_deg >= 360 else arc / max(n - 1, 1)
        angles = start + step * (np.arange(n) + rng.uniform(-0.15, 0.15, n))
    else:
        angles = start + rng.uniform(0, arc, n)
    out = []
    for angle in angles:
        radius = rng.uniform(0.85, 1.0)
        centre = built.target + [built.ring[0] * radius * np.cos(angle), built.ring[1] * radius * np.sin(angle), 0]
        centre[2] = rng.uniform(*built.heights)
        jitter = rng.normal(size=3) * built.look_jitter / 2 * [1.0, 1.0, 0.5]
        out.append(look_at(centre, built.target + jitter, rng.uniform(-max_roll_deg, max_roll_deg)))
    return out


def make_cameras(built: BuiltScene, n_views: int, camera: Camera | Sequence[Camera] | None = None, *,
                 rig: str = "orbit", seed: int = 0, arc_deg: float = 360.0) -> list[View]:
    """Views named view_000... for `built`: `camera` (an engine Camera, or one per view; default
    `intrinsics()`) with poses from `poses(...)`."""
    cameras = camera if isinstance(camera, (list, tuple)) else [camera or intrinsics()] * n_views
    if len(cameras) != n_views:
        raise ValueError(f"{len(cameras)} cameras given for {n_views} views")
    return [View(f"view_{i:03d}", cam, pose)
            for i, (cam, pose) in enumerate(zip(cameras, poses(built, n_views, rig, seed=seed, arc_deg=arc_deg)))]
