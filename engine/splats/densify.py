"""Adaptive density control of the Gaussians (3DGS, Kerbl et al. 2023, sec. 5.2) in two interchangeable forms:

- `Densifier`: this engine's implementation, any device. Between `start` and `stop`, every `every` steps:
  splats whose mean image-plane gradient (accumulated over the views that drew them, in units of half the image
  size) exceeds `grad_threshold` are cloned when small (largest scale <= `clone_scale` x scene scale) and split in
  two when large (new means drawn from the splat's own Gaussian, scales / 1.6); then splats with opacity below
  `prune_opacity` are removed, and after the first opacity reset also those larger than `prune_scale` x scene
  scale. Every `reset_every` steps opacities are clamped to 2 x `prune_opacity`, so splats must earn their opacity
  back or get pruned. No growth beyond `max_gaussians`.
- `GsplatDensifier`: gsplat 1.5.3's `DefaultStrategy` with the same settings (CUDA runs). Its own opacity reset
  never fires in 1.5.3 (`step % reset_every == 0 & step > 0` parses as `step % (reset_every == 0 & step) > 0`),
  so the reset is done here.

Both work on gsplat's layout: `params` maps means, scales (log), quats, opacities (logits), sh0, shN to
`torch.nn.Parameter`s, `optimizers` maps the same names to one Adam each; their state is resized alongside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .project import quat_to_rotmat


@dataclass
class DensifyConfig:
    start: int = 500
    stop: int = 15000
    every: int = 100
    reset_every: int = 3000
    grad_threshold: float = 0.0002
    clone_scale: float = 0.01
    prune_opacity: float = 0.005
    prune_scale: float = 0.1
    max_gaussians: int = 3_000_000


def resize_params(params: dict, optimizers: dict, param_fn: Callable[[str, torch.Tensor], torch.Tensor],
                  state_fn: Callable[[torch.Tensor], torch.Tensor], names: list[str] | None = None) -> None:
    """Replace each parameter p by param_fn(name, p) and each of its Adam moments v by state_fn(v)."""
    for name in names or list(params):
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        params[name] = new
        optimizer = optimizers[name]
        state = optimizer.state.pop(old, {})
        for key, value in list(state.items()):
            if key != "step" and torch.is_tensor(value) and value.dim() > 0:
                state[key] = state_fn(value)
        optimizer.param_groups[0]["params"] = [new]
        if state:
            optimizer.state[new] = state


class Densifier:
    """This engine's density control (module docstring)."""

    def __init__(self, config: DensifyConfig, scene_scale: float) -> None:
        self.config = config
        self.scene_scale = scene_scale
        self.grad2d: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"grad2d": self.grad2d, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad2d, self.count = state["grad2d"], state["count"]

    def accumulate(self, n: int, means2d_grad: torch.Tensor, visible: torch.Tensor, width: int, height: int,
                   n_views: int) -> None:
        """Add one view's image-plane gradient norms (means2d_grad (N, 2) in pixels, the loss averaged over
        `n_views` views) of the splats it drew."""
        if self.grad2d is None or len(self.grad2d) != n:
            self.grad2d = torch.zeros(n, device=means2d_grad.device)
            self.count = torch.zeros(n, device=means2d_grad.device)
        scale = torch.tensor([width / 2.0 * n_views, height / 2.0 * n_views], device=means2d_grad.device)
        norms = (means2d_grad[visible] * scale).norm(dim=-1).float()
        self.grad2d.index_add_(0, torch.nonzero(visible).flatten(), norms)
        self.count.index_add_(0, torch.nonzero(visible).flatten(), torch.ones_like(norms))

    @torch.no_grad()
    def step(self, step: int, params: dict, optimizers: dict) -> dict[str, int]:
        """Refine after the optimiser step of `step`; returns counts of cloned/split/pruned splats (or {})."""
        c = self.config
        out: dict[str, int] = {}
        if step >= c.stop:
            return out
        if step > c.start and step % c.every == 0 and self.grad2d is not None:
            out = self._refine(step, params, optimizers)
            self.grad2d.zero_()
            self.count.zero_()
        if step > 0 and step % c.reset_every == 0:
            reset_opacities(params, optimizers, 2 * c.prune_opacity)
            out["reset"] = 1
        return out

    def _refine(self, step: int, params: dict, optimizers: dict) -> dict[str, int]:
        c = self.config
        n = len(params["means"])
        grads = self.grad2d / self.count.clamp_min(1)
        large = torch.exp(params["scales"]).max(-1).values > c.clone_scale * self.scene_scale
        grow = grads > c.grad_threshold
        room = max(0, c.max_gaussians - n)
        if int(grow.sum()) > room:  # keep the strongest gradients (a split adds one splat, a clone one)
            keep = torch.topk(torch.where(grow, grads, torch.zeros_like(grads)), room).indices
            grow = torch.zeros_like(grow)
            grow[keep] = True
        clone, split = grow & ~large, grow & large
        self._clone(params, optimizers, clone)
        split = torch.cat([split, torch.zeros(int(clone.sum()), dtype=torch.bool, device=split.device)])
        self._split(params, optimizers, split)
        prune = torch.sigmoid(params["opacities"]) < c.prune_opacity
        if step > c.reset_every:
            prune |= torch.exp(params["scales"]).max(-1).values > c.prune_scale * self.scene_scale
        self._remove(params, optimizers, prune)
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum())}

    def _extend_stats(self, rows: torch.Tensor | None, keep: torch.Tensor | None = None) -> None:
        for name in ("grad2d", "count"):
            value = getattr(self, name)
            if keep is not None:
                value = value[keep]
            if rows is not None:
                value = torch.cat([value, value[rows]])
            setattr(self, name, value)

    def _clone(self, params: dict, optimizers: dict, mask: torch.Tensor) -> None:
        rows = torch.nonzero(mask).flatten()
        if len(rows):
            resize_params(params, optimizers, lambda _, p: torch.cat([p, p[rows]]),
                          lambda v: torch.cat([v, torch.zeros_like(v[rows])]))
            self._extend_stats(rows)

    def _split(self, params: dict, optimizers: dict, mask: torch.Tensor) -> None:
        rows = torch.nonzero(mask).flatten()
        if not len(rows):
            return
        rest = torch.nonzero(~mask).flatten()
        scales = torch.exp(params["scales"][rows])
        rot = quat_to_rotmat(params["quats"][rows])
        noise = torch.randn(2, len(rows), 3, device=scales.device, dtype=scales.dtype)
        offsets = torch.einsum("nij,bnj->bni", rot, noise * scales)  # samples of N(0, R S^2 R^T)

        def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
            if name == "means":
                new = (p[rows] + offsets).reshape(-1, 3)
            elif name == "scales":
                new = torch.log(scales / 1.6).repeat(2, 1)
            else:
                new = p[rows].repeat(2, *[1] * (p.dim() - 1))
            return torch.cat([p[rest], new])

        resize_params(params, optimizers, param_fn,
                      lambda v: torch.cat([v[rest], torch.zeros(2 * len(rows), *v.shape[1:], dtype=v.dtype,
                                                                device=v.device)]))
        self._extend_stats(None, rest)
        self.grad2d = torch.cat([self.grad2d, torch.zeros(2 * len(rows), device=self.grad2d.device)])
        self.count = torch.cat([self.count, torch.zeros(2 * len(rows), device=self.count.device)])

    def _remove(self, params: dict, optimizers: dict, mask: torch.Tensor) -> None:
        keep = torch.nonzero(~mask).flatten()
        if len(keep) < len(mask):
            resize_params(params, optimizers, lambda _, p: p[keep], lambda v: v[keep])
            self._extend_stats(None, keep)


def reset_opacities(params: dict, optimizers: dict, value: float) -> None:
    """Clamp opacities to at most `value` and clear their Adam moments."""
    limit = math.log(value / (1 - value))
    resize_params(params, optimizers, lambda _, p: p.clamp_max(limit), torch.zeros_like, names=["opacities"])


class GsplatDensifier:
    """gsplat's DefaultStrategy (CUDA runs) with this engine's settings and the opacity-reset fix."""

    def __init__(self, config: DensifyConfig, scene_scale: float) -> None:
        from gsplat import DefaultStrategy

        self.config = config
        self.strategy = DefaultStrategy(prune_opa=config.prune_opacity, grow_grad2d=config.grad_threshold,
                                        grow_scale3d=config.clone_scale, prune_scale3d=config.prune_scale,
                                        refine_start_iter=config.start, refine_stop_iter=config.stop,
                                        reset_every=config.reset_every, refine_every=config.every)
        self.state = self.strategy.initialize_state(scene_scale=scene_scale)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def step(self, step: int, params: dict, optimizers: dict, info: dict[str, Any]) -> dict[str, int]:
        n = len(params["means"])
        if n < self.config.max_gaussians or step % self.config.every != 0 or step <= self.config.start:
            self.strategy.step_post_backward(params, optimizers, self.state, step, info)
        elif self.state["grad2d"] is not None:  # at the cap: skip this refinement round, keep the statistics fresh
            self.state["grad2d"].zero_()
            self.state["count"].zero_()
        out = {}
        if 0 < step < self.config.stop and step % self.config.reset_every == 0:
            reset_opacities(params, optimizers, 2 * self.config.prune_opacity)
            out["reset"] = 1
        return out
