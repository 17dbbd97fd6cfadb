# SPDX-License-Identifier: GPL-3.0-or-later
"""Full-resolution depth and confidence maps and the fused point cloud, once cameras and edges are aligned.

Depth: the optimised sampled log-depths are interpolated to every pixel, then refined per pixel against all
aligned pairwise predictions of that pixel. With cameras and edge similarities fixed, the objective separates
into one 1-D problem per pixel, min_d sum_e w_e |c + d r - Y_e| (r the pixel's ray with z = 1, Y_e the aligned
predictions), solved by iteratively reweighted least squares (Weiszfeld): each pass over the pairs file gives
d = sum w'_e r.(Y_e - c) / sum w'_e |r|^2 with w'_e = w_e / |c + d_prev r - Y_e|. Edges are streamed in chunks,
so memory stays O(images x pixels) whatever the number of pairs.
Confidence: per pixel, the highest confidence any edge gives it (DUSt3R's image confidence).
Point cloud: every pixel above the confidence threshold, merged per voxel (mean position, colour, confidence);
memory grows with the number of occupied voxels, not of pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..pairs_file import PairsFile
from ..ply import Points
from ..progress import Progress
from .sample import CHUNK_BYTES, Problem
from .state import State

GREY = 160


@dataclass
class Fused:
    depth: np.ndarray  # (N, H, W) float32 z-depth
    confidence: np.ndarray  # (N, H, W) float32
    points: Points


def interpolate_depth(problem: Problem, depth: np.ndarray, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N, len(rows), len(cols)) depths at pixel rows x cols, bilinearly interpolated in log space from the
    problem's sampled grid (N, P) and clamped at its borders."""
    h, w = len(problem.rows), len(problem.cols)
    log_d = torch.log(torch.from_numpy(depth).float()).reshape(-1, 1, h, w)

    def norm(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:  # pixel index -> grid_sample's [-1, 1]
        if len(grid) == 1:
            return torch.zeros(len(x))
        return -1 + 2 * (x.float() - float(grid[0])) / float(grid[-1] - grid[0])

    gy, gx = torch.meshgrid(norm(rows, problem.rows), norm(cols, problem.cols), indexing="ij")
    coords = torch.stack([gx, gy], -1)[None]
    return torch.cat([torch.exp(F.grid_sample(d[None], coords, mode="bilinear", padding_mode="border",
                                              align_corners=True))[:, 0] for d in log_d])


def _camera_rays(state: State, images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(len(images), H*W, 3) world-frame pixel rays (camera z = 1) of the given images."""
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pix = torch.stack([u.reshape(-1), v.reshape(-1)], -1)
    pp, focal = torch.from_numpy(state.pp).float()[images], torch.from_numpy(state.focal).float()[images]
    xy = (pix[None] - pp[:, None]) / focal[:, None, None]
    rays = torch.cat([xy, torch.ones_like(xy[..., :1])], -1)
    return rays @ torch.from_numpy(state.rot).float()[images].transpose(1, 2)


def _refine(pairs_file: PairsFile, problem: Problem, state: State, depth: torch.Tensor, passes: int,
            progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    n, hw = problem.n, problem.height * problem.width
    centre = torch.from_numpy(state.centre).float()
    sim = torch.from_numpy(state.edge_scale[:, None, None] * state.edge_rot).float().transpose(1, 2)
    trans = torch.from_numpy(state.edge_trans).float()
    depth = depth.reshape(n, hw).clone()
    conf = torch.ones(n, hw)
    eps = 1e-4 * float(depth.median())
    chunk = max(1, CHUNK_BYTES // (hw * 8 * 4 * 3))
    progress.stage("fuse depth", passes * problem.num_edges)
    for p in range(passes):
        num, den = torch.zeros(n, hw), torch.zeros(n, hw)
        for start in range(0, problem.num_edges, chunk):
            sl = slice(start, start + chunk)
            batch = pairs_file.load(problem.edge_ids[sl])
            for col, pts, c in ((0, batch.pts3d_i, batch.conf_i), (1, batch.pts3d_j, batch.conf_j)):
                img = problem.pairs[sl, col]
                c = torch.from_numpy(c).reshape(len(img), hw)
                if p == 0:
                    conf.scatter_reduce_(0, img[:, None].expand_as(c), c, "amax")
                aligned = torch.baddbmm(trans[sl, None], torch.from_numpy(pts).reshape(len(img), hw, 3), sim[sl])
                r, rel = _camera_rays(state, img, problem.width, problem.height), aligned - centre[img, None]
                resid = (depth[img, :, None] * r - rel).norm(dim=-1)
                w = torch.log(c) / resid.clamp_min(eps)
                num.index_add_(0, img, w * (rel * r).sum(-1))
                den.index_add_(0, img, w * (r * r).sum(-1))
            progress.advance(len(batch))
        update = num / den.clamp_min(1e-30)
        depth = torch.where((den > 0) & (update > 0), update, depth)
    return depth.reshape(n, problem.height, problem.width), conf.reshape(n, problem.height, problem.width)


class _VoxelGrid:
    """Running per-voxel sums (position, colour, confidence) and counts; voxels are keyed by one int64 packing
    21 bits per axis, so points more than 2^20 voxels from the origin are dropped (far-off garbage)."""

    LIMIT = 1 << 20
    MERGE_ROWS = 1 << 22  # merge the pending rows once there are this many

    def __init__(self, size: float) -> None:
        self.size = size
        self.keys = np.zeros(0, np.int64)
        self.sums = np.zeros((0, 7), np.float32)  # float32 is exact enough for means of a few hundred points
        self.counts = np.zeros(0, np.float32)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_rows = 0

    def add(self, values: np.ndarray) -> None:
        """float32 rows x y z r g b confidence."""
        idx = np.floor(values[:, :3] / self.size)
        ok = (np.abs(idx) < self.LIMIT).all(1)
        idx = idx[ok].astype(np.int64) + self.LIMIT
        self.pending.append(((idx[:, 0] << 42) | (idx[:, 1] << 21) | idx[:, 2], values[ok]))
        self.pending_rows += int(ok.sum())
        if self.pending_rows >= self.MERGE_ROWS:
            self._merge()

    def _merge(self) -> None:
        keys = np.concatenate([self.keys] + [k for k, _ in self.pending])
        sums = np.concatenate([self.sums] + [v for _, v in self.pending])
        counts = np.concatenate([self.counts] + [np.ones(len(k), np.float32) for k, _ in self.pending])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.sums = np.empty((len(self.keys), sums.shape[1]), np.float32)
        for c in range(sums.shape[1]):
            self.sums[:, c] = np.bincount(inverse, sums[:, c], len(self.keys))
        self.counts = np.bincount(inverse, counts, len(self.keys)).astype(np.float32)
        self.pending, self.pending_rows = [], 0

    def points(self) -> Points:
        self._merge()
        mean = self.sums / self.counts[:, None]
        return Points(mean[:, :3], np.clip(np.round(mean[:, 3:6]), 0, 255), mean[:, 6])


def fuse(pairs_file: PairsFile, problem: Problem, state: State, min_conf: float, refine_passes: int,
         voxel_size: float | None, colours: Callable[[int], np.ndarray | None], progress: Progress) -> Fused:
    """Depth and confidence maps for every image of `problem`, and the voxel-merged coloured point cloud.

    `refine_passes` (>= 1) is the number of reweighted least-squares passes over the pairs. `colours(k)` gives
    pairs-file image k as (H, W, 3) uint8 at the pointmap size, or None (grey points).
    `voxel_size` defaults to the footprint of one pixel at the median depth.
    """
    full = interpolate_depth(problem, state.depth, torch.arange(problem.height), torch.arange(problem.width))
    depth, conf = _refine(pairs_file, problem, state, full, refine_passes, progress)
    if voxel_size is None:
        voxel_size = float(depth.median()) / float(np.median(state.focal))
    grid = _VoxelGrid(voxel_size)
    progress.stage("fuse points", problem.n)
    for k in range(problem.n):
        mask = (conf[k].reshape(-1) > min_conf).numpy()
        rays = _camera_rays(state, torch.tensor([k]), problem.width, problem.height)[0]
        xyz = (torch.from_numpy(state.centre[k]).float() + depth[k].reshape(-1, 1) * rays).numpy()[mask]
        rgb = colours(problem.images[k])
        rgb = np.full((len(xyz), 3), GREY) if rgb is None else rgb.reshape(-1, 3)[mask]
        grid.add(np.concatenate([xyz, rgb, conf[k].reshape(-1, 1).numpy()[mask]], 1, dtype=np.float32))
        progress.advance()
    return Fused(depth.numpy(), conf.numpy(), grid.points())
