# SPDX-License-Identifier: GPL-3.0-or-later
"""The optimisation problem: every edge of one connected image set, sampled on a shared regular pixel grid.

The objective's pixel terms are subsampled (the same grid in every image, so per-image depths stay shared between
the edges that see them): a budget on the total number of residuals sets the grid stride. The final depth maps
and point cloud use every pixel again (engine.align.fuse).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..pairs_file import PairsFile
from ..progress import Progress
from .geometry import pixel_centres, sample_grid

CHUNK_BYTES = 64 << 20  # full-resolution edge data read at once


@dataclass
class Problem:
    images: list[int]  # pairs-file image index of each local image 0..n-1
    width: int
    height: int
    stride: int
    rows: torch.Tensor  # (h,) sampled pixel rows
    cols: torch.Tensor  # (w,) sampled pixel columns
    pixels: torch.Tensor  # (P, 2) float64 pixel centres (u, v) of the samples, row-major
    edge_ids: np.ndarray  # (E,) indices into the pairs file
    pairs: torch.Tensor  # (E, 2) long, local image indices
    pred_i: torch.Tensor  # (E, P, 3) float32
    pred_j: torch.Tensor  # (E, P, 3)
    conf_i: torch.Tensor  # (E, P)
    conf_j: torch.Tensor  # (E, P)

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def num_edges(self) -> int:
        return len(self.edge_ids)

    def subgrid(self, step: int) -> tuple["Problem", torch.Tensor]:
        """The same problem on every `step`-th sampled row and column, and the kept sample indices."""
        h, w = len(self.rows), len(self.cols)
        ri, ci = torch.arange(0, h, step), torch.arange(0, w, step)
        keep = (ri[:, None] * w + ci[None]).reshape(-1)
        return dataclasses.replace(self, stride=self.stride * step, rows=self.rows[ri], cols=self.cols[ci],
                                   pixels=self.pixels[keep], pred_i=self.pred_i[:, keep], pred_j=self.pred_j[:, keep],
                                   conf_i=self.conf_i[:, keep], conf_j=self.conf_j[:, keep]), keep


def choose_stride(num_edges: int, width: int, height: int, max_points: int, min_points: int) -> int:
    """Grid stride so that 2 * E * (samples per image) is about `max_points`, with >= ~`min_points` per image."""
    per_image = max(min_points, max_points // max(2 * num_edges, 1))
    return max(1, math.ceil(math.sqrt(width * height / per_image)))


def load_problem(pairs_file: PairsFile, images: list[int], max_points: int, min_points: int,
                 progress: Progress) -> Problem:
    """Read the edges among `images` (pairs-file indices) and keep their samples on the chosen grid."""
    local = {g: k for k, g in enumerate(images)}
    keep = np.array([int(i) in local and int(j) in local for i, j in pairs_file.pairs], dtype=bool)
    edge_ids = np.nonzero(keep)[0]
    w, h = pairs_file.width, pairs_file.height
    stride = choose_stride(len(edge_ids), w, h, max_points, min_points)
    rows, cols = sample_grid(w, h, stride)
    rn, cn = rows.numpy(), cols.numpy()
    p = len(rn) * len(cn)
    e = len(edge_ids)
    pred_i = torch.empty((e, p, 3), dtype=torch.float32)
    pred_j = torch.empty((e, p, 3), dtype=torch.float32)
    conf_i = torch.empty((e, p), dtype=torch.float32)
    conf_j = torch.empty((e, p), dtype=torch.float32)
    chunk = max(1, CHUNK_BYTES // (h * w * 8 * 4))
    progress.stage("read pairs", e)
    for start in range(0, e, chunk):
        batch = pairs_file.load(edge_ids[start:start + chunk])
        sl = slice(start, start + len(batch))

        def grid(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a[:, rn][:, :, cn])).reshape(len(batch), p, *a.shape[3:])

        pred_i[sl], pred_j[sl] = grid(batch.pts3d_i), grid(batch.pts3d_j)
        conf_i[sl], conf_j[sl] = grid(batch.conf_i), grid(batch.conf_j)
        progress.advance(len(batch))
    pairs = torch.tensor([[local[int(i)], local[int(j)]] for i, j in pairs_file.pairs[edge_ids]],
                         dtype=torch.long).reshape(-1, 2)
    return Problem(list(images), w, h, stride, rows, cols, pixel_centres(rows, cols), edge_ids, pairs,
                   pred_i, pred_j, conf_i, conf_j)
