"""Straight line segments of a photo (OpenCV's LSD, von Gioi et al. 2012) and their vanishing-point geometry.

Segments are stored in COLMAP's pixel convention (pixel centres at +0.5; OpenCV's LSD puts them at integers).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass
class Segments:
    """Line segments (not to be modified in place: lengths, midpoints and lines are cached)."""
    p1: np.ndarray  # (N, 2) end points, pixels
    p2: np.ndarray  # (N, 2)

    def __len__(self) -> int:
        return len(self.p1)

    @cached_property
    def length(self) -> np.ndarray:
        return np.linalg.norm(self.p2 - self.p1, axis=1)

    @cached_property
    def mid(self) -> np.ndarray:
        return (self.p1 + self.p2) / 2

    @cached_property
    def line(self) -> np.ndarray:
        """(N, 3) homogeneous line of each segment, scaled so that (a, b) is a unit normal."""
        ones = np.ones((len(self), 1))
        lines = np.cross(np.concatenate([self.p1, ones], 1), np.concatenate([self.p2, ones], 1))
        return lines / np.maximum(np.linalg.norm(lines[:, :2], axis=1, keepdims=True), 1e-300)

    def subset(self, keep: np.ndarray) -> "Segments":
        return Segments(self.p1[keep], self.p2[keep])


def detect_segments(grey: np.ndarray, min_length: float) -> Segments:
    """LSD segments at least `min_length` pixels long in a (H, W) uint8 image."""
    import cv2

    lsd = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD)
    found = lsd.detect(np.ascontiguousarray(grey))[0]
    if found is None:
        return Segments(np.zeros((0, 2)), np.zeros((0, 2)))
    ends = found.reshape(-1, 4).astype(np.float64) + 0.5
    segments = Segments(ends[:, :2], ends[:, 2:])
    return segments.subset(segments.length >= min_length)


def residuals(vps: np.ndarray, segments: Segments, paired: bool = False) -> np.ndarray:
    """Distance (pixels) from a segment's end point to the line through its midpoint and a vanishing point
    (Tardif 2009, eq. 2): for every vanishing point (..., 3) homogeneous and every segment, shape (..., N); with
    `paired`, vps is (N, 3), one per segment, and the result (N,).

    The end point is at distance L/2 from the midpoint along the segment's own line l (unit normal), so the
    distance is L/2 |sin a|, a being the angle between l's direction and the midpoint-to-vanishing-point line
    m x v; with v_z = 0 (a vanishing point at infinity) the same formula holds.
    """
    m, line, half = segments.mid, segments.line, segments.length / 2
    v = np.asarray(vps)
    if not paired:
        v = v[..., None, :]  # (..., 1, 3) against N segments
    dx = m[:, 1] * v[..., 2] - v[..., 1]  # (m x v) normal: (m_y v_z - v_y, v_x - m_x v_z)
    dy = v[..., 0] - m[:, 0] * v[..., 2]
    # sin of the angle between the two lines = |n_l x n_mv| / |n_mv|, n_l = (a, b) unit
    return half * np.abs(line[:, 0] * dy - line[:, 1] * dx) / np.maximum(np.hypot(dx, dy), 1e-300)
