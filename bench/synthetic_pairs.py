# SPDX-License-Identifier: GPL-3.0-or-later
"""Ground-truth pairwise pointmaps from known cameras, computed analytically, with noise and outliers.

The scene is the inside of a box-shaped room (x in [-4, 4], y in [-2.5, 2.5] (y down), z in [-4, 4]) with a few
spheres near its middle, textured procedurally. Cameras stand on a ring around the middle and look inwards, so
every pixel's ray hits a surface and neighbouring views overlap; no camera is closer than 1 to a sphere (a view
filled by one close sphere has almost no depth range, which leaves its focal length ill-determined). Depth is
found by exact ray casting (ray-plane and ray-sphere intersections), so the pairwise pointmaps are exact before
noise is added.

For a pair (i, j): pts3d_i is view i's point map in camera i's frame, pts3d_j is view j's point map moved into
camera i's frame; both are scaled by one random factor per pair (a network only knows shape up to scale), then
perturbed by Gaussian noise of `noise` times each point's depth, and a fraction `outliers` of pixels is replaced by
random points in the pair's bounding box. Confidences are 1 + exp(c) with c random and unrelated to the outliers.

Write a pairs file from the command line: `python -m bench.synthetic_pairs OUT.npz --n 8 --width 128 --height 96`
(and OUT.truth.npz with the true cameras).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from engine.align.graph import make_pairs
from engine.pairs_file import PairPrediction, centred_crop_map, write_pairs

ROOM_LO = np.array([-4.0, -2.5, -4.0])
ROOM_HI = np.array([4.0, 2.5, 4.0])
SPHERES = [((0.0, 0.6, 0.0), 0.9), ((1.1, 1.3, -0.7), 0.5), ((-0.7, 0.2, 0.7), 0.6), ((0.4, -0.9, 0.5), 0.4)]
MIN_SPHERE_DISTANCE = 1.0


@dataclass
class SyntheticScene:
    names: list[str]
    width: int  # pointmap size
    height: int
    cam_from_world: np.ndarray  # (N, 4, 4) OpenCV axes
    focals: np.ndarray  # (N,) in pointmap pixels; principal point is centred (W/2, H/2)
    depths: np.ndarray  # (N, H, W) z-depth
    images: np.ndarray  # (N, H, W, 3) uint8
    original_sizes: np.ndarray | None = None  # (N, 2) photo (width, height)
    pixel_maps: np.ndarray | None = None  # (N, 4) pointmap -> photo pixels (engine.pairs_file); default centred crop

    @property
    def centres(self) -> np.ndarray:
        r, t = self.cam_from_world[:, :3, :3], self.cam_from_world[:, :3, 3]
        return -np.einsum("nji,nj->ni", r, t)

    def original_intrinsics(self) -> np.ndarray:
        """(N, 4) fx, fy, cx, cy in photo pixels (pointmap pixels without original sizes)."""
        out = []
        for k, f in enumerate(self.focals):
            ox, oy, sx, sy = 0.0, 0.0, 1.0, 1.0
            if self.pixel_maps is not None:
                ox, oy, sx, sy = self.pixel_maps[k]
            elif self.original_sizes is not None:
                ox, oy, sx, sy = centred_crop_map(self.width, self.height, *map(int, self.original_sizes[k]))
            out.append([f * sx, f * sy, (self.width / 2 + ox) * sx, (self.height / 2 + oy) * sy])
        return np.array(out)


def camera_errors(scene: SyntheticScene, images: Sequence[int], cam_from_world: np.ndarray, focals: np.ndarray,
                  sim3: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Per camera: rotation error (deg), centre error (fraction of the ring's radius) and relative focal error of
    estimates for `images`, after a Sim(3) fit of the centres onto the truth (or none); also that (s, R, t)."""
    from engine.pose import rotation_angle_deg, umeyama_sim3

    truth = scene.cam_from_world[list(images)]
    centres = -np.einsum("nji,nj->ni", cam_from_world[:, :3, :3], cam_from_world[:, :3, 3])
    gt_centres = scene.centres[list(images)]
    s, r, t = umeyama_sim3(centres, gt_centres) if sim3 else (1.0, np.eye(3), np.zeros(3))
    rot = np.array([rotation_angle_deg(g[:3, :3], c[:3, :3] @ r.T) for g, c in zip(truth, cam_from_world)])
    radius = np.median(np.linalg.norm(scene.centres - scene.centres.mean(0), axis=1))
    cen = np.linalg.norm(s * centres @ r.T + t - gt_centres, axis=1) / radius
    return rot, cen, np.abs(np.asarray(focals) / scene.focals[list(images)] - 1), (s, r, t)


def _look_at(centre: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """cam_from_world for a camera at `centre` looking at `target` (OpenCV axes, world y down), rolled."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)  # world down x forward = camera right
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])  # rows: camera axes in world
    c, s = np.cos(roll), np.sin(roll)
    r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ r
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = -r @ centre
    return out


def _rays(width: int, height: int, focal: float) -> np.ndarray:
    """(H, W, 3) camera-frame rays with z = 1 through pixel centres (x + 0.5, y + 0.5)."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([(u - width / 2) / focal, (v - height / 2) / focal, np.ones_like(u)], axis=-1)


def _cast(origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Ray parameter t of the first hit for rays origin + t * dirs (dirs (..., 3)); inside the room t > 0 always."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(dirs > 0, ROOM_HI, ROOM_LO)
        t_axis = np.where(dirs != 0, (bound - origin) / dirs, np.inf)
    t = t_axis.min(-1)
    for centre, radius in SPHERES:
        oc = origin - np.asarray(centre)
        a = (dirs * dirs).sum(-1)
        b = 2 * (dirs * oc).sum(-1)
        c = oc @ oc - radius ** 2
        disc = b * b - 4 * a * c
        root = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        t = np.where((disc > 0) & (root > 1e-6) & (root < t), root, t)
    return t


def _texture(points: np.ndarray) -> np.ndarray:
    """Procedural colours: a 3D checkerboard tinted by position."""
    check = (np.floor(points * 2.0).astype(np.int64).sum(-1) % 2).astype(np.float64)
    tint = 0.5 + 0.5 * np.sin(points * np.array([0.9, 1.7, 1.3]))
    rgb = (0.35 + 0.65 * check[..., None]) * tint
    return np.clip(rgb * 255, 0, 255).astype(np.uint8)


def make_scene(n: int, width: int = 64, height: int = 48, seed: int = 0, shared_focal: bool = False,
               original_sizes: Sequence[tuple[int, int]] | None = None,
               pixel_maps: Sequence[Sequence[float]] | None = None) -> SyntheticScene:
    """`n` cameras on a ring of radius ~2.5 around the room's middle, looking inwards with jitter and roll."""
    rng = np.random.default_rng(seed)
    poses, focals, depths, images = [], [], [], []
    shared_fov = np.radians(rng.uniform(50, 65))
    for k in range(n):
        while True:  # keep cameras >= 1 from every sphere, so no view is one close sphere filling the frame
            angle = 2 * np.pi * k / n + rng.uniform(-0.15, 0.15)
            radius = rng.uniform(2.3, 2.8)
            centre = np.array([radius * np.sin(angle), rng.uniform(-0.4, 0.3), radius * np.cos(angle)])
            if all(np.linalg.norm(centre - np.asarray(c)) - r >= MIN_SPHERE_DISTANCE for c, r in SPHERES):
                break
        target = rng.uniform(-0.5, 0.5, 3) * np.array([1.0, 0.6, 1.0])
        pose = _look_at(centre, target, rng.uniform(-0.15, 0.15))
        fov = shared_fov if shared_focal else np.radians(rng.uniform(45, 70))
        focal = width / 2 / np.tan(fov / 2)
        rays = _rays(width, height, focal)
        dirs = rays @ pose[:3, :3]  # world directions (R^T applied to rows)
        t = _cast(centre, dirs)  # rays have z = 1 in the camera, so t is z-depth
        poses.append(pose)
        focals.append(focal)
        depths.append(t)
        images.append(_texture(centre + t[..., None] * dirs))
    sizes = None if original_sizes is None else np.asarray(original_sizes, dtype=np.int64).reshape(n, 2)
    maps = None if pixel_maps is None else np.asarray(pixel_maps, dtype=np.float64).reshape(n, 4)
    return SyntheticScene([f"img_{k:04d}.png" for k in range(n)], width, height, np.stack(poses),
                          np.array(focals), np.stack(depths), np.stack(images), sizes, maps)


def pair_predictions(scene: SyntheticScene, pairs: Sequence[tuple[int, int]], noise: float = 0.01,
                     outliers: float = 0.05, seed: int = 0) -> Iterator[PairPrediction]:
    """Noisy pairwise pointmaps for `pairs`, one at a time (for streaming into write_pairs)."""
    rng = np.random.default_rng(seed + 1)
    cams = []
    for k in range(len(scene.names)):
        rays = _rays(scene.width, scene.height, scene.focals[k])
        cams.append(rays * scene.depths[k][..., None])  # points in camera k's frame
    for i, j in pairs:
        # camera j's points in camera i's frame: x_i = R_i R_j^T (x_j - t_j) + t_i
        rel = scene.cam_from_world[i] @ np.linalg.inv(scene.cam_from_world[j])
        p_i = cams[i]
        p_j = cams[j] @ rel[:3, :3].T + rel[:3, 3]
        scale = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        maps = []
        for p in (p_i, p_j):
            p = p * scale
            p = p + rng.normal(size=p.shape) * (noise * np.abs(p[..., 2:3]))
            bad = rng.random(p.shape[:2]) < outliers
            lo, hi = p.reshape(-1, 3).min(0), p.reshape(-1, 3).max(0)
            p[bad] = rng.uniform(lo, hi, size=(int(bad.sum()), 3))
            maps.append(p.astype(np.float32))
        confs = [(1 + np.exp(rng.normal(1.5, 0.5, size=p_i.shape[:2]))).astype(np.float32) for _ in range(2)]
        yield PairPrediction(int(i), int(j), maps[0], maps[1], confs[0], confs[1])


def write_synthetic_pairs(path: str | Path, scene: SyntheticScene, mode: str = "complete", noise: float = 0.01,
                          outliers: float = 0.05, seed: int = 0,
                          pairs: Sequence[tuple[int, int]] | None = None) -> Path:
    """Write a pairs file for `scene` with the pair graph `mode` (or explicit `pairs`), images included."""
    if pairs is None:
        pairs = make_pairs(len(scene.names), mode)
    return write_pairs(path, scene.names, scene.width, scene.height,
                       pair_predictions(scene, pairs, noise, outliers, seed), scene.original_sizes, scene.images,
                       scene.pixel_maps)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--graph", default="complete")
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--outliers", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    scene = make_scene(args.n, args.width, args.height, args.seed)
    write_synthetic_pairs(args.out, scene, args.graph, args.noise, args.outliers, args.seed)
    np.savez(args.out.with_suffix(".truth.npz"), cam_from_world=scene.cam_from_world, focals=scene.focals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
