# SPDX-License-Identifier: GPL-3.0-or-later
"""What the aligner estimates, and what the user fixes in advance."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Known:
    """Values given in advance, by local image index; focal lengths and principal points in pointmap pixels."""
    poses: dict[int, np.ndarray] = field(default_factory=dict)  # cam_from_world 4x4, OpenCV axes
    focals: dict[int, float] = field(default_factory=dict)
    principal_points: dict[int, tuple[float, float]] = field(default_factory=dict)


@dataclass
class State:
    """Cameras (world_from_cam rotation and centre, pinhole intrinsics), sampled depths and per-edge similarities
    (world point = scale * rot @ predicted point + trans). float64 numpy arrays."""
    rot: np.ndarray  # (N, 3, 3) world_from_cam rotation
    centre: np.ndarray  # (N, 3)
    focal: np.ndarray  # (N,)
    pp: np.ndarray  # (N, 2)
    depth: np.ndarray  # (N, P) z-depth at the sampled pixels
    edge_scale: np.ndarray  # (E,)
    edge_rot: np.ndarray  # (E, 3, 3)
    edge_trans: np.ndarray  # (E, 3)

    def cam_from_world(self) -> np.ndarray:
        """(N, 4, 4) cam_from_world matrices."""
        out = np.tile(np.eye(4), (len(self.rot), 1, 1))
        out[:, :3, :3] = self.rot.transpose(0, 2, 1)
        out[:, :3, 3] = -np.einsum("nji,nj->ni", self.rot, self.centre)
        return out
