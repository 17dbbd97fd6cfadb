# SPDX-License-Identifier: GPL-3.0-or-later
"""How far a reconstruction's cameras are from known ones (a generated scene's ground truth), up to Sim(3).

A reconstruction from unposed photos is defined up to a similarity, so it is first brought onto the truth by the
Sim(3) (Umeyama) that best fits, for every matched image, its camera centre and the three points one scene radius
along its camera axes. Fitting the centres alone leaves the rotation about a near-planar ring of cameras poorly
determined (degrees off for a 120 degree arc), which would be charged to every camera; the axis points pin it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Image, Scene
from ..errors import EngineError
from ..pose import camera_center, rotation_angle_deg, umeyama_sim3


@dataclass
class PoseErrors:
    names: list[str]  # matched images (truth names), in truth order
    missing: list[str]  # truth images the reconstruction lacks
    rotation_deg: np.ndarray  # per matched image, after the Sim(3)
    centre: np.ndarray  # camera centre distance after the Sim(3), in truth units
    focal: np.ndarray  # |(fx / W) / (fx_true / W_true) - 1|: photos may be given at another size
    radius: float  # median distance of the true centres from their centroid (truth units)

    def summary(self) -> dict[str, float | int]:
        return {"registered": len(self.names), "missing": len(self.missing),
                "rotation_median_deg": float(np.median(self.rotation_deg)),
                "rotation_max_deg": float(np.max(self.rotation_deg)),
                "centre_median": float(np.median(self.centre)), "centre_max": float(np.max(self.centre)),
                "centre_max_relative": float(np.max(self.centre) / self.radius),
                "focal_median": float(np.median(self.focal)), "focal_max": float(np.max(self.focal))}


def _focal_per_width(scene: Scene, image: Image) -> float:
    camera = scene.camera_of(image)
    return camera.split()[0] / camera.width


def _axis_points(centres: np.ndarray, rotations: np.ndarray, length: float) -> np.ndarray:
    """Centres, then the points `length` along each camera's x, y and z axes (rows of cam_from_world's R)."""
    return np.concatenate([centres] + [centres + length * rotations[:, k, :] for k in range(3)])


def compare(estimate: Scene, truth: Scene) -> PoseErrors:
    """Errors of `estimate` against `truth`. Images are matched by name, else by name without its suffix (a
    reconstruction names images after their files, which may be converted: "view_006.jpg" for "view_006.png")."""
    by_name = {i.name: i for i in estimate.images}
    by_stem = {Path(i.name).stem: i for i in estimate.images}
    found = {t.name: by_name.get(t.name) or by_stem.get(Path(t.name).stem) for t in truth.images}
    pairs = [(t, found[t.name]) for t in truth.images if found[t.name] is not None]
    missing = [t.name for t in truth.images if found[t.name] is None]
    if len(pairs) < 2:
        raise EngineError(f"only {len(pairs)} image(s) of the reconstruction match the truth's by name: "
                          f"cannot compare")
    gt_pose = np.array([t.cam_from_world for t, _ in pairs])
    est_pose = np.array([e.cam_from_world for _, e in pairs])
    gt_c = np.array([camera_center(p) for p in gt_pose])
    est_c = np.array([camera_center(p) for p in est_pose])
    radius = float(np.median(np.linalg.norm(gt_c - gt_c.mean(0), axis=1)))
    spread = np.sqrt(((est_c - est_c.mean(0)) ** 2).sum(1).mean())
    if radius <= 0 or spread <= 0:
        raise EngineError("the cameras share one centre: a similarity cannot be fitted")
    scale0 = np.sqrt(((gt_c - gt_c.mean(0)) ** 2).sum(1).mean()) / spread  # so the axis points match in length
    s, r, t = umeyama_sim3(_axis_points(est_c, est_pose[:, :3, :3], radius / scale0),
                           _axis_points(gt_c, gt_pose[:, :3, :3], radius))
    rotation = np.array([rotation_angle_deg(g[:3, :3], e[:3, :3] @ r.T) for g, e in zip(gt_pose, est_pose)])
    centre = np.linalg.norm(s * est_c @ r.T + t - gt_c, axis=1)
    focal = np.array([abs(_focal_per_width(estimate, e) / _focal_per_width(truth, g) - 1) for g, e in pairs])
    return PoseErrors([g.name for g, _ in pairs], missing, rotation, centre, focal, radius)
