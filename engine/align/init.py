# SPDX-License-Identifier: GPL-3.0-or-later
"""Initial cameras, depths and edge similarities (DUSt3R's maximum-spanning-tree initialisation).

1. Focal lengths: for each image, Weiszfeld's robust estimate on its own-frame pointmap from its best edge, with a
   centred principal point (unless known).
2. The pair graph's maximum spanning tree (edge score: mean confidence of view i times that of view j) is walked
   from its strongest edge; each new image is placed by a confidence-weighted similarity (Procrustes with scale,
   reweighted towards the L1-type objective) between a pointmap of an already placed image and its placed points.
   When the new image's own-frame prediction is used, its pose comes with the fit.
3. Images placed through another view's prediction get their pose by a similarity fit of their own best edge
   when they have one, else by PnP-RANSAC (OpenCV) on their placed points.
4. Known poses fix the frame: the tree's result is moved onto them by a similarity (two or more) or a rigid
   motion (one), and they replace the estimates.
5. Every edge's similarity is then fitted to the initial world points of both of its views.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import EngineError
from ..pose import umeyama_sim3
from ..progress import Progress
from .geometry import unproject, weiszfeld_focal, weighted_similarity
from .graph import maximum_spanning_tree
from .sample import Problem
from .state import Known, State

IRLS_ROUNDS = 3
FIT_CHUNK_BYTES = 4 << 20  # float64 points per batch of edge fits (the fit keeps about ten such arrays)


def _weights(conf: torch.Tensor) -> torch.Tensor:
    """The objective's log-confidence weights, floored so that a fit never sees only zero weights."""
    return torch.log(conf.double()).clamp_min(1e-6)


def _fit(src: torch.Tensor, dst: torch.Tensor, conf: torch.Tensor):
    """One similarity dst ~ s R src + t, (P, 3) point sets, log-confidence weights."""
    s, r, t = weighted_similarity(src[None].double(), dst[None].double(), _weights(conf)[None], IRLS_ROUNDS)
    return s[0], r[0], t[0]


def _apply(s, r, t, pts: torch.Tensor) -> torch.Tensor:
    return s * pts.double() @ r.T + t


def _pnp(points: np.ndarray, pixels: np.ndarray, focal: float | None, pp: np.ndarray, size: int,
         iterations: int) -> tuple[float, np.ndarray] | None:
    """(focal, cam_from_world) by PnP-RANSAC; with no focal, the best of 21 trial focals by inlier count."""
    import cv2

    trials = [focal] if focal is not None else np.geomspace(size / 2, size * 3, 21)
    threshold = max(1.0, 0.01 * size)
    best = None
    for f in trials:
        k = np.array([[f, 0, pp[0]], [0, f, pp[1]], [0, 0, 1]], dtype=np.float64)
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(points, pixels, k, None, iterationsCount=iterations,
                                                     reprojectionError=threshold, flags=cv2.SOLVEPNP_SQPNP)
        if ok and inliers is not None and (best is None or len(inliers) > best[0]):
            best = (len(inliers), float(f), rvec, tvec)
    if best is None:
        return None
    pose = np.eye(4)
    pose[:3, :3] = cv2.Rodrigues(best[2])[0]
    pose[:3, 3] = best[3].reshape(3)
    return best[1], pose


def _align_to_known(rot, centre, depth, known: dict[int, np.ndarray]) -> None:
    """Move the initial frame onto the known poses in place (similarity for >= 2 distinct centres, else rigid)."""
    idx = sorted(known)
    k_rot = np.stack([known[k][:3, :3].T for k in idx])  # world_from_cam
    k_centre = np.stack([-known[k][:3, :3].T @ known[k][:3, 3] for k in idx])
    spread = np.median(np.linalg.norm(k_centre[:, None] - k_centre[None], axis=-1)) if len(idx) > 1 else 0.0
    if len(idx) >= 2 and spread > 0:
        # centres plus points along the optical axes pin down rotation about the baseline too (as DUSt3R does)
        own_spread = np.median(np.linalg.norm(centre[idx][:, None] - centre[idx][None], axis=-1))
        src = np.concatenate([centre[idx], centre[idx] + own_spread / 100 * rot[idx][:, :, 2]])
        dst = np.concatenate([k_centre, k_centre + spread / 100 * k_rot[:, :, 2]])
        s, r, t = umeyama_sim3(src, dst)
    else:
        k = idx[0]
        s, r = 1.0, k_rot[0] @ rot[k].T
        t = k_centre[0] - r @ centre[k]
    centre[:] = s * centre @ r.T + t
    rot[:] = r @ rot
    depth *= s
    for n, k in enumerate(idx):
        rot[k], centre[k] = k_rot[n], k_centre[n]


def initialise(problem: Problem, known: Known, min_conf: float, pnp_iterations: int, progress: Progress) -> State:
    n, e = problem.n, problem.num_edges
    pairs = problem.pairs.numpy()
    pixels = problem.pixels
    size = max(problem.width, problem.height)
    progress.stage("initialise", n)
    scores = (problem.conf_i.double().mean(1) * problem.conf_j.double().mean(1)).numpy()
    edge_of = {(int(i), int(j)): k for k, (i, j) in enumerate(pairs)}

    pp = np.tile([problem.width / 2, problem.height / 2], (n, 1)).astype(np.float64)
    for k, value in known.principal_points.items():
        pp[k] = value
    focal: list[float | None] = [known.focals.get(k) for k in range(n)]
    own = {}  # image -> its best edge as view i (own-frame pointmap)
    for k in np.argsort(-scores, kind="stable"):
        own.setdefault(int(pairs[k, 0]), int(k))
    todo = [k for k in own if focal[k] is None]
    if todo:
        pts = problem.pred_i[[own[k] for k in todo]].double()
        f = weiszfeld_focal(pts, pixels[None] - torch.from_numpy(pp[todo])[:, None])
        for k, value in zip(todo, f.tolist()):
            focal[k] = value if np.isfinite(value) and value > 0 else None

    # walk the maximum spanning tree from its strongest edge
    tree = maximum_spanning_tree(n, pairs, scores)
    world: dict[int, torch.Tensor] = {}
    rot = np.tile(np.eye(3), (n, 1, 1))
    centre = np.zeros((n, 3))
    posed = np.zeros(n, dtype=bool)
    first = tree[0]
    a, b = map(int, pairs[first])
    world[a], world[b] = problem.pred_i[first].double(), problem.pred_j[first].double()
    posed[a] = True
    progress.advance(2)
    pending = tree[1:]
    while pending:
        for pos, edge in enumerate(pending):
            i, j = map(int, pairs[edge])
            if (i in world) != (j in world):
                break
        else:  # cannot happen for a spanning tree of a connected set
            raise EngineError("internal error: the pair graph's spanning tree is not connected")
        pending.pop(pos)
        p, q = (i, j) if i in world else (j, i)
        if (q, p) in edge_of:  # q's own-frame prediction: fit p's points, which also gives q's pose
            k = edge_of[(q, p)]
            s, r, t = _fit(problem.pred_j[k], world[p], problem.conf_j[k])
            world[q] = _apply(s, r, t, problem.pred_i[k])
            rot[q], centre[q], posed[q] = r.numpy(), t.numpy(), True
        else:
            k = edge_of[(p, q)]
            s, r, t = _fit(problem.pred_i[k], world[p], problem.conf_i[k])
            world[q] = _apply(s, r, t, problem.pred_j[k])
            if not posed[p]:
                rot[p], centre[p], posed[p] = r.numpy(), t.numpy(), True
        progress.advance()

    # images placed through another view's prediction: their own-frame edge gives the pose when there is one
    for k in np.nonzero(~posed)[0]:
        if k in own:
            edge = own[k]
            m = int(pairs[edge, 1])
            s, r, t = _fit(torch.cat([problem.pred_i[edge], problem.pred_j[edge]]),
                           torch.cat([world[k], world[m]]), torch.cat([problem.conf_i[edge], problem.conf_j[edge]]))
            rot[k], centre[k], posed[k] = r.numpy(), t.numpy(), True

    # PnP-RANSAC for the rest
    image_conf = torch.zeros((n, pixels.shape[0]), dtype=torch.float32)
    for col, conf in ((0, problem.conf_i), (1, problem.conf_j)):
        image_conf.scatter_reduce_(0, problem.pairs[:, col, None].expand_as(conf), conf, "amax")
    px = pixels.numpy()
    for k in np.nonzero(~posed)[0]:
        pts = world[k].numpy()
        mask = image_conf[k].numpy() > min_conf
        if mask.sum() < 16:
            mask[:] = True
        found = _pnp(pts[mask], px[mask], focal[k], pp[k], size, pnp_iterations)
        if found is None:
            raise EngineError(f"image {problem.images[k]}: PnP found no camera pose for its placed points; its "
                              f"pointmaps may be degenerate")
        f, cam = found
        if focal[k] is None:  # refine the trial focal on the image's points seen from the PnP pose
            cam_pts = torch.from_numpy(pts[mask] @ cam[:3, :3].T + cam[:3, 3])
            f = float(weiszfeld_focal(cam_pts[None], torch.from_numpy(px[mask] - pp[k])[None])[0])
            f, cam = _pnp(pts[mask], px[mask], f, pp[k], size, pnp_iterations) or (f, cam)
        focal[k] = f
        rot[k], centre[k] = cam[:3, :3].T, -cam[:3, :3].T @ cam[:3, 3]
    # an image whose own pointmap gave no usable focal (all points behind it): DUSt3R's default 60 degree view
    focal_arr = np.array([size / (2 * np.tan(np.radians(30))) if f is None else f for f in focal], dtype=np.float64)

    depth = np.stack([((world[k].numpy() - centre[k]) @ rot[k])[:, 2] for k in range(n)])
    floor = 1e-3 * np.median(depth[depth > 0]) if (depth > 0).any() else 1e-3
    depth = np.maximum(depth, floor)
    if known.poses:
        _align_to_known(rot, centre, depth, known.poses)

    # every edge's similarity from both views' initial world points
    pts = unproject(torch.from_numpy(rot), torch.from_numpy(centre), torch.from_numpy(focal_arr),
                    torch.from_numpy(pp), torch.from_numpy(depth), pixels)
    edge_scale, edge_rot, edge_trans = np.empty(e), np.empty((e, 3, 3)), np.empty((e, 3))
    chunk = max(1, FIT_CHUNK_BYTES // (2 * pixels.shape[0] * 3 * 8))
    for start in range(0, e, chunk):
        sl = slice(start, start + chunk)
        ii, jj = problem.pairs[sl, 0], problem.pairs[sl, 1]
        src = torch.cat([problem.pred_i[sl], problem.pred_j[sl]], 1).double()
        dst = torch.cat([pts[ii], pts[jj]], 1)
        w = _weights(torch.cat([problem.conf_i[sl], problem.conf_j[sl]], 1))
        s, r, t = weighted_similarity(src, dst, w, IRLS_ROUNDS)
        edge_scale[sl], edge_rot[sl], edge_trans[sl] = s.numpy(), r.numpy(), t.numpy()
    return State(rot, centre, focal_arr, pp, depth, edge_scale, edge_rot, edge_trans)
