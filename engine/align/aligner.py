# SPDX-License-Identifier: GPL-3.0-or-later
"""Pairwise pointmaps -> cameras, depth maps and a fused point cloud: the whole global alignment."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..bundle import check_pose
from ..errors import EngineError
from ..pairs_file import PairsFile
from ..ply import Points
from ..progress import Progress
from .fuse import fuse, interpolate_depth
from .graph import connected_components
from .init import initialise
from .optimize import OptimOptions, optimise
from .sample import Problem, load_problem
from .state import Known, State


COARSE_STEP = 2


@dataclass
class AlignOptions:
    iterations: int = 300
    coarse_iterations: int = 600  # before those, on every 2nd sampled row and column (see _coarse); 0: none
    lr: float = 0.01
    lr_min: float = 1e-6
    schedule: str = "cosine"
    shared_intrinsics: bool = False
    optimize_pp: bool = False
    min_conf: float = 3.0  # confidence threshold for PnP points and the fused cloud
    max_points: int = 1 << 21  # budget of sampled pixel residuals in the objective (both views of all edges)
    min_points: int = 256  # sampled pixels per image at least
    disconnected: str = "largest"  # or "fail"
    device: str = "cpu"
    pnp_iterations: int = 100
    refine_passes: int = 2  # reweighted least-squares passes of the full-resolution depth (engine.align.fuse)
    voxel_size: float | None = None


@dataclass
class AlignResult:
    """Aligned images (pairs-file indices, in order) with intrinsics in pointmap pixels."""
    images: list[int]
    names: list[str]
    cam_from_world: np.ndarray  # (M, 4, 4)
    focal: np.ndarray  # (M,)
    pp: np.ndarray  # (M, 2)
    depth: np.ndarray  # (M, H, W) float32
    confidence: np.ndarray  # (M, H, W) float32
    points: Points
    loss: float
    stride: int
    components: list[list[int]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _component(pairs_file: PairsFile, mode: str, progress: Progress) -> tuple[list[int], list[list[int]]]:
    comps = connected_components(pairs_file.num_images, pairs_file.pairs)
    if len(comps) == 1:
        return comps[0], comps
    names = pairs_file.names
    listing = "; ".join("[" + ", ".join(names[k] for k in c) + "]" for c in comps)
    if mode == "fail" or len(comps[0]) < 2:
        raise EngineError(f"the pair graph is not connected: {len(comps)} groups of images share no pair "
                          f"({listing})")
    progress.log(f"the pair graph has {len(comps)} unconnected groups ({listing}); aligning the largest "
                 f"({len(comps[0])} of {len(names)} images) and leaving the others out", "warning")
    return comps[0], comps


def _shared(state: State, known: Known) -> None:
    """One focal and principal point for all images: the known ones if any, else the median of the estimates."""
    focal = [known.focals[k] for k in known.focals] or [float(np.median(state.focal))]
    state.focal[:] = float(np.mean(focal))
    pps = [known.principal_points[k] for k in known.principal_points] or [np.median(state.pp, axis=0)]
    state.pp[:] = np.mean(np.asarray(pps, dtype=np.float64), axis=0)


def _coarse(problem: Problem, state: State, known: Known, opts: OptimOptions, progress: Progress) -> State:
    """Coarse-to-fine: optimise on a subgrid first, then carry its depths back to the full sample grid.

    Adam's per-step moves are local, so an error spread along a long chain of views (a drift of the initial
    spanning tree) takes many iterations to even out; those iterations cost a quarter on a subgrid.
    """
    coarse, keep = problem.subgrid(COARSE_STEP)
    result, _ = optimise(coarse, dataclasses.replace(state, depth=state.depth[:, keep.numpy()]), known, opts,
                         progress, "optimise (coarse)")
    depth = interpolate_depth(coarse, result.depth, problem.rows, problem.cols).reshape(problem.n, -1)
    return dataclasses.replace(result, depth=depth.double().numpy())


def align(pairs_file: PairsFile, options: AlignOptions, known: Known | None = None,
          colours: Callable[[int], np.ndarray | None] | None = None, progress: Progress | None = None) -> AlignResult:
    """Globally align `pairs_file`. `known` is indexed by pairs-file image; colours(k) as in engine.align.fuse."""
    progress = progress or Progress("none")
    known = known or Known()
    if options.disconnected not in ("largest", "fail"):
        raise EngineError(f"disconnected: expected 'largest' or 'fail', got {options.disconnected!r}")
    if options.schedule not in ("cosine", "linear"):
        raise EngineError(f"schedule: expected 'cosine' or 'linear', got {options.schedule!r}")
    if options.refine_passes < 1 or options.iterations < 1:
        raise EngineError("refine_passes and iterations must be at least 1")
    images, comps = _component(pairs_file, options.disconnected, progress)
    local = {g: k for k, g in enumerate(images)}
    known_local = Known({local[g]: check_pose(p, f"known pose of image {pairs_file.names[g]!r}")
                         for g, p in known.poses.items() if g in local},
                        {local[g]: float(f) for g, f in known.focals.items() if g in local},
                        {local[g]: tuple(map(float, c)) for g, c in known.principal_points.items() if g in local})
    problem = load_problem(pairs_file, images, options.max_points, options.min_points, progress)
    progress.log(f"aligning {problem.n} images over {problem.num_edges} pairs, sampling every "
                 f"{problem.stride} pixel(s) ({problem.pixels.shape[0]} per image)")
    state = initialise(problem, known_local, options.min_conf, options.pnp_iterations, progress)
    if options.shared_intrinsics:
        _shared(state, known_local)
    opts = OptimOptions(options.iterations, options.lr, options.lr_min, options.schedule,
                        options.shared_intrinsics, options.optimize_pp, options.device)
    if options.coarse_iterations > 0 and min(len(problem.rows), len(problem.cols)) >= 2 * COARSE_STEP:
        state = _coarse(problem, state, known_local, dataclasses.replace(opts, iterations=options.coarse_iterations),
                        progress)
    state, loss = optimise(problem, state, known_local, opts, progress)
    fused = fuse(pairs_file, problem, state, options.min_conf, options.refine_passes, options.voxel_size,
                 colours or (lambda k: None), progress)
    cam_from_world = state.cam_from_world()
    for k, pose in known_local.poses.items():  # exact, not float32-rounded
        cam_from_world[k] = pose
    for k, f in known_local.focals.items():  # known intrinsics exactly as given
        state.focal[k] = f
    for k, c in known_local.principal_points.items():
        state.pp[k] = c
    if options.shared_intrinsics:
        _shared(state, known_local)
    dropped = [pairs_file.names[k] for c in comps[1:] for k in c] if len(comps) > 1 else []
    return AlignResult(images, [pairs_file.names[k] for k in images], cam_from_world, state.focal, state.pp,
                       fused.depth, fused.confidence, fused.points, loss, problem.stride, comps, dropped)
