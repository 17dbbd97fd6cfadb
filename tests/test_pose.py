"""Rigid pose helpers (engine/pose.py) against pycolmap and closed forms."""
from __future__ import annotations

import math

import numpy as np
import pycolmap
import pytest

from engine import pose


def random_rotations(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Random rotations plus 180-degree turns about each axis and a diagonal, which exercise every branch of
    Shepperd's method (trace <= 0 with each diagonal entry largest)."""
    quats = rng.normal(size=(n, 4))
    turns = [np.array([0.0, 1, 0, 0]), np.array([0.0, 0, 1, 0]), np.array([0.0, 0, 0, 1]),
             np.array([0.01, 1, 1, 1]), np.array([0.0, 0.6, 0.8, 0])]
    return [pose.quat_to_rotation(q) for q in [*quats, *turns]]


def test_quat_to_rotation_matches_pycolmap():
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(50, 4)):
        q = q / np.linalg.norm(q)
        w, x, y, z = q
        expected = pycolmap.Rotation3d(np.array([x, y, z, w])).matrix()
        assert np.allclose(pose.quat_to_rotation(q), expected, atol=1e-14)
        assert np.allclose(pose.quat_to_rotation(3.0 * q), expected, atol=1e-14)  # normalises its input


def test_quaternion_round_trip():
    rng = np.random.default_rng(1)
    for r in random_rotations(rng, 200):
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-14) and np.linalg.det(r) == pytest.approx(1.0)
        q = pose.rotation_to_quat(r)
        assert q[0] >= 0 and np.linalg.norm(q) == pytest.approx(1.0, abs=1e-15)
        assert np.allclose(pose.quat_to_rotation(q), r, atol=1e-14)
        xyzw = pycolmap.Rotation3d(r).quat
        colmap_wxyz = np.r_[xyzw[3], xyzw[:3]] * (1 if xyzw[3] >= 0 else -1)
        if abs(q[0]) > 1e-9:  # a 180-degree turn has two equally valid signs
            assert np.allclose(q, colmap_wxyz, atol=1e-12)


def test_invert_and_camera_axes():
    rng = np.random.default_rng(2)
    for r in random_rotations(rng, 20):
        t = rng.normal(size=3) * 5
        cam_from_world = pose.make_transform(r, t)
        inv = pose.invert(cam_from_world)
        assert np.allclose(inv @ cam_from_world, np.eye(4), atol=1e-13)
        assert np.allclose(inv, np.linalg.inv(cam_from_world), atol=1e-12)
        centre = pose.camera_center(cam_from_world)
        assert np.allclose((cam_from_world @ np.r_[centre, 1])[:3], 0, atol=1e-12)
        # Blender / OpenGL camera: located at the centre, looking down its -Z, which is OpenCV's +Z (the optical axis)
        world_from_gl = pose.world_from_glcam(cam_from_world)
        assert np.allclose(world_from_gl[:3, 3], centre, atol=1e-12)
        assert np.allclose(world_from_gl[:3, :3] @ [0, 0, -1], r.T @ [0, 0, 1], atol=1e-14)
        assert np.allclose(world_from_gl[:3, :3] @ [0, 1, 0], r.T @ [0, -1, 0], atol=1e-14)  # image up
        assert np.allclose(pose.cam_from_world_of_glcam(world_from_gl), cam_from_world, atol=1e-12)


def test_rotation_angle_deg():
    axis = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    base = pose.quat_to_rotation([0.3, 0.1, 0.7, -0.2])
    for angle in (0.0, 1e-3, 37.0, 179.9):
        half = math.radians(angle) / 2
        turn = pose.quat_to_rotation(np.r_[math.cos(half), math.sin(half) * axis])
        assert pose.rotation_angle_deg(base, base @ turn) == pytest.approx(angle, abs=1e-5)


@pytest.mark.parametrize("planar", [False, True])
def test_umeyama_recovers_a_similarity(planar):
    rng = np.random.default_rng(3)
    src = rng.normal(size=(40, 3))
    if planar:
        src[:, 2] = 0.0
    rot = pose.quat_to_rotation(rng.normal(size=4))
    scale, trans = 2.7, np.array([1.0, -3.0, 0.5])
    dst = scale * src @ rot.T + trans
    s, r, t = pose.umeyama_sim3(src, dst)
    assert s == pytest.approx(scale, rel=1e-12)
    assert np.allclose(r, rot, atol=1e-12) and np.allclose(t, trans, atol=1e-12)
    # with noise it is the least-squares fit: no small perturbation of (s, R, t) does better
    noisy = dst + rng.normal(scale=0.05, size=dst.shape)
    s, r, t = pose.umeyama_sim3(src, noisy)
    cost = np.sum((noisy - (s * src @ r.T + t)) ** 2)
    for _ in range(20):
        dr = pose.quat_to_rotation(np.r_[1.0, rng.normal(scale=1e-3, size=3)])
        ds, dt = 1 + rng.normal(scale=1e-3), rng.normal(scale=1e-3, size=3)
        assert np.sum((noisy - (s * ds * src @ (dr @ r).T + t + dt)) ** 2) > cost


def test_umeyama_returns_a_rotation_for_mirrored_points():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(30, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a reflection: the best proper rotation, never a mirror
    _, r, _ = pose.umeyama_sim3(src, dst)
    assert np.linalg.det(r) == pytest.approx(1.0) and np.allclose(r @ r.T, np.eye(3), atol=1e-12)
