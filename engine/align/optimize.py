# SPDX-License-Identifier: GPL-3.0-or-later
"""The global alignment objective (DUSt3R, Wang et al., CVPR 2024, Sec. 3.4) and its minimisation.

    min over depths D, cameras (R_n, c_n, K_n) and edge similarities (s_e, R_e, t_e) of
        sum_e sum_{v in (i, j)} sum_p  log(C_v^e[p]) * || X_v[p] - (s_e R_e P_v^e[p] + t_e) ||_2
    where X_n[p] = c_n + R_n D_n[p] K_n^-1 (u_p, v_p, 1) is image n's point at pixel p, P_v^e the pair's pointmaps
    (both in view i's frame) and C_v^e their confidences. The distance is unsquared (robust to outliers), and the
    weights are log-confidences as in the reference code (the paper writes C itself).

The distances are measured in world units, so shrinking the world lowers the objective: with a free world scale
everything would collapse to a point, and even with known camera poses the depths shrink to trade consistency
for smaller noise residuals. The edges' mean log scale is therefore always held at its initial value (DUSt3R
does this only when poses are unknown); with known poses that value comes from the initial fit to them. Every
term is evaluated for all edges at once on the sampled pixel grid (engine.align.sample). Parametrisation (as
DUSt3R's where it matters, so that its Adam settings carry over): log-depths; rotations as axis-angle updates
of the initial ones; translations in units of the median initial depth; focal f = exp(phi / 20); principal
point offsets in units of 10 pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..progress import Progress
from .geometry import rotation_from_vector
from .sample import Problem
from .state import Known, State

FOCAL_BREAK = 20.0
PP_UNIT = 10.0


@dataclass
class OptimOptions:
    iterations: int = 300
    lr: float = 0.01
    lr_min: float = 1e-6
    schedule: str = "cosine"  # or "linear"
    shared_intrinsics: bool = False
    optimize_pp: bool = False
    device: str = "cpu"


def learning_rate(t: float, opts: OptimOptions) -> float:
    """Learning rate at progress t in [0, 1]."""
    if opts.schedule == "cosine":
        return opts.lr_min + (opts.lr - opts.lr_min) * (1 + math.cos(t * math.pi)) / 2
    return opts.lr + (opts.lr_min - opts.lr) * t


class _EdgeTerm(torch.autograd.Function):
    """sum_{e,p} w[e,p] * sqrt(|pts[idx[e], :, p] - (sim[e] @ pred[e, :, p] + trans[e])|^2 + eps2) for points laid
    out (batch, 3, pixels), which keeps every operation on long contiguous rows. The hand-written backward keeps
    only the residual vectors and their lengths (autograd would keep several copies)."""

    @staticmethod
    def forward(ctx, pts, idx, pred, sim, trans, w, eps2):
        diff = pts.index_select(0, idx)
        diff.sub_(torch.baddbmm(trans[:, :, None], sim, pred))
        dist = diff.square().sum(1).add_(eps2).sqrt_()
        ctx.save_for_backward(idx, pred, w, diff, dist)
        ctx.num_images = pts.shape[0]
        return (w * dist).sum()

    @staticmethod
    def backward(ctx, grad):
        idx, pred, w, diff, dist = ctx.saved_tensors
        g = diff * (grad * w / dist)[:, None]  # d loss / d pts[idx]; the aligned points get -g
        grad_pts = torch.zeros((ctx.num_images, *g.shape[1:]), dtype=g.dtype, device=g.device).index_add_(0, idx, g)
        return grad_pts, None, None, -torch.bmm(g, pred.transpose(1, 2)), -g.sum(2), None, None


class _Model:
    def __init__(self, problem: Problem, state: State, known: Known, opts: OptimOptions) -> None:
        dev = torch.device(opts.device)
        f32 = dict(dtype=torch.float32, device=dev)
        n, e = problem.n, problem.num_edges
        # both views of every edge in one batch (rows 0..E-1 views i, E..2E-1 views j), laid out (2E, 3, P)
        self.pred = torch.cat([problem.pred_i, problem.pred_j]).transpose(1, 2).contiguous().to(dev)
        self.weight = torch.log(torch.cat([problem.conf_i, problem.conf_j])).to(dev)
        self.image = torch.cat([problem.pairs[:, 0], problem.pairs[:, 1]]).to(dev)
        self.pixels = problem.pixels.T.to(**f32)  # (2, P)
        self.norm = float(e * problem.pixels.shape[0])
        self.unit = float(np.median(state.depth))
        self.eps2 = (1e-6 * self.unit) ** 2
        self.rot0 = torch.tensor(state.rot, **f32)
        self.centre0 = torch.tensor(state.centre, **f32)
        self.pose_free = torch.ones(n, 1, **f32)
        for k in known.poses:
            self.pose_free[k] = 0
        self.edge_rot0 = torch.tensor(state.edge_rot, **f32)
        self.edge_trans0 = torch.tensor(state.edge_trans, **f32)
        self.mean_log_scale = float(np.log(state.edge_scale).mean())

        # focal: one shared value or one per image; known values are held (their gradient is masked to zero)
        focal_known = torch.zeros(n, 1, **f32)
        for k in known.focals:
            focal_known[k] = 1
        log_f = torch.tensor(np.log(state.focal), **f32)
        if opts.shared_intrinsics:
            self.focal_free = (focal_known.sum() == 0).to(torch.float32).reshape(1, 1)
            log_f = log_f.mean().reshape(1)
        else:
            self.focal_free = 1 - focal_known
        self.log_f0 = log_f
        self.pp0 = torch.tensor(state.pp, **f32)
        pp_known = torch.zeros(n, 1, **f32)
        for k in known.principal_points:
            pp_known[k] = 1
        self.pp_free = ((pp_known.sum() == 0).float().reshape(1, 1) if opts.shared_intrinsics else 1 - pp_known)

        self.params = {
            "log_depth": torch.tensor(np.log(state.depth), **f32),
            "rot": torch.zeros(n, 3, **f32),
            "centre": torch.zeros(n, 3, **f32),
            "focal": torch.zeros(len(log_f), **f32),
            "edge_rot": torch.zeros(e, 3, **f32),
            "edge_trans": torch.zeros(e, 3, **f32),
            "edge_log_scale": torch.tensor(np.log(state.edge_scale), **f32),
        }
        if opts.optimize_pp:
            self.params["pp"] = torch.zeros(1 if opts.shared_intrinsics else n, 2, **f32)
        for p in self.params.values():
            p.requires_grad_(True)

    def cameras(self):
        p = self.params
        rot = self.rot0 @ rotation_from_vector(p["rot"] * self.pose_free)
        centre = self.centre0 + self.unit * p["centre"] * self.pose_free
        log_f = self.log_f0 + p["focal"] * self.focal_free[:, 0] / FOCAL_BREAK
        focal = torch.exp(log_f).expand(len(rot))
        pp = self.pp0
        if "pp" in p:
            pp = pp + PP_UNIT * p["pp"] * self.pp_free
        return rot, centre, focal, pp

    def edges(self):
        p = self.params
        log_s = p["edge_log_scale"] - p["edge_log_scale"].mean() + self.mean_log_scale
        rot = self.edge_rot0 @ rotation_from_vector(p["edge_rot"])
        return torch.exp(log_s), rot, self.edge_trans0 + self.unit * p["edge_trans"]

    def loss(self) -> torch.Tensor:
        rot, centre, focal, pp = self.cameras()
        # image points x = c + R d K^-1 (u, v, 1), laid out (N, 3, P)
        xy = (self.pixels[None] - pp[:, :, None]) / focal[:, None, None]
        rays = torch.cat([xy, torch.ones_like(xy[:, :1])], 1) * torch.exp(self.params["log_depth"])[:, None]
        pts = torch.baddbmm(centre[:, :, None], rot, rays)
        scale, erot, etrans = self.edges()
        sim = scale[:, None, None] * erot
        total = _EdgeTerm.apply(pts, self.image, self.pred, torch.cat([sim, sim]), torch.cat([etrans, etrans]),
                                self.weight, self.eps2)
        return total / self.norm

    def state(self) -> State:
        with torch.no_grad():
            rot, centre, focal, pp = self.cameras()
            scale, erot, etrans = self.edges()
            depth = torch.exp(self.params["log_depth"])
            return State(*(t.double().cpu().numpy() for t in (rot, centre, focal, pp, depth, scale, erot, etrans)))


def optimise(problem: Problem, state: State, known: Known, opts: OptimOptions, progress: Progress,
             stage: str = "optimise") -> tuple[State, float]:
    """Minimise the objective from `state` with Adam (betas 0.9, 0.9, as DUSt3R); returns the result and loss."""
    model = _Model(problem, state, known, opts)
    optim = torch.optim.Adam(list(model.params.values()), lr=opts.lr, betas=(0.9, 0.9))
    progress.stage(stage, opts.iterations)
    loss = float("nan")
    for it in range(opts.iterations):
        for group in optim.param_groups:
            group["lr"] = learning_rate(it / opts.iterations, opts)
        optim.zero_grad(set_to_none=True)
        value = model.loss()
        value.backward()
        optim.step()
        loss = value.item()
        progress.advance(1, f"loss {loss:.4g}")
    with torch.no_grad():
        loss = float(model.loss())
    return model.state(), loss
