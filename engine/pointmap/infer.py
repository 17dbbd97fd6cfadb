"""Batched pair inference: every image encoded once, pairs decoded in batches, results streamed off the device.

`predict_pairs` walks an ordered pair list: consecutive pairs whose two images have the same sizes form a batch
(at most `batch_size` pairs); encoder tokens are computed the first time an image is needed and kept in a
byte-bounded LRU cache on the device, so (i, j) and (j, i) share one encoder pass per image. On CUDA the
transformer runs under bf16 (or fp16) autocast and the heads in float32, as the reference does; each batch's
outputs are copied to pinned host memory asynchronously while the next batch computes.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np

from ..pairs_file import PairPrediction
from ..progress import Progress

_PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def autocast_dtype(device: str, precision: str = "auto"):
    """The autocast dtype for the transformer (None: float32 throughout)."""
    import torch

    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and not device.startswith("cuda")):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


class FeatureCache:
    """Encoder tokens per image index, least recently used dropped first once `max_bytes` is exceeded."""

    def __init__(self, model, images: Sequence, device: str, max_bytes: int) -> None:
        self.model, self.images, self.device, self.max_bytes = model, images, device, max_bytes
        self._feats: OrderedDict[int, object] = OrderedDict()
        self._bytes = 0

    def get(self, indices: Sequence[int], chunk: int) -> list:
        """Tokens (N, C) for each index, encoding the missing ones together (same-shape images, `chunk` at once)."""
        import torch

        by_shape: dict[tuple, list[int]] = {}
        for i in dict.fromkeys(i for i in indices if i not in self._feats):
            by_shape.setdefault(tuple(self.images[i].shape), []).append(i)
        for missing in by_shape.values():
            for start in range(0, len(missing), chunk):
                part = missing[start:start + chunk]
                batch = torch.stack([self.images[i] for i in part]).to(self.device, non_blocking=True)
                for i, f in zip(part, self.model.encode(batch)):
                    self._feats[i] = f
                    self._bytes += f.numel() * f.element_size()
        out = []
        for i in indices:
            self._feats.move_to_end(i)
            out.append(self._feats[i])
        keep = set(indices)
        while self._bytes > self.max_bytes and len(self._feats) > len(keep):
            oldest = next(k for k in self._feats if k not in keep)
            f = self._feats.pop(oldest)
            self._bytes -= f.numel() * f.element_size()
        return out


def _batches(pairs: Sequence[tuple[int, int]], shapes: Sequence[tuple[int, int]], size: int
             ) -> Iterator[list[tuple[int, int]]]:
    """Consecutive runs of at most `size` pairs with equal (shape_i, shape_j), in the given order."""
    batch: list[tuple[int, int]] = []
    key = None
    for i, j in pairs:
        k = (shapes[i], shapes[j])
        if batch and (k != key or len(batch) == size):
            yield batch
            batch = []
        batch.append((i, j))
        key = k
    if batch:
        yield batch


def predict_pairs(images: Sequence, weights, graph: str | Sequence[tuple[int, int]] = "complete",
                  device: str = "auto", progress: Progress | None = None, batch_size: int | None = None,
                  precision: str = "auto", cache_bytes: int | None = None, square_ok: bool = False,
                  search_dirs: Sequence[str | os.PathLike] = ()) -> Iterator[PairPrediction]:
    """Pointmaps for each ordered pair (i, j) of `graph`, in graph order.

    images: image paths (prepared like the reference at the network's size), or (H, W, 3) uint8 arrays already
        prepared (see `preprocess.prepare`). weights: a `PointmapNet`, or a path / Hub id for
        `checkpoint.load_model`. graph: a pair-graph mode ("complete", "swin-K", "logwin-K", "oneref-K") or
        explicit ordered pairs. batch_size: pairs per forward (default 8 on CUDA, 2 on CPU). cache_bytes: device
        memory kept for encoder tokens (default 4 GiB).
    Yields `PairPrediction`s with float32 numpy arrays: view i's and view j's points, both in camera i's frame.
    """
    import torch

    from .checkpoint import load_model
    from .model import PointmapNet
    from .preprocess import load_and_prepare, to_tensor

    device = pick_device(device)
    amp = autocast_dtype(device, precision)
    model = weights if isinstance(weights, PointmapNet) else load_model(weights, "cpu", search_dirs)
    model = model.to(device).eval()
    if len(images) and isinstance(images[0], (str, os.PathLike)):
        prepared = [arr for arr, _ in load_and_prepare(images, model.config.input_size, square_ok,
                                                       model.config.patch_size)]
    else:
        prepared = list(images)
    tensors = [to_tensor(a) for a in prepared]
    shapes = [tuple(t.shape[-2:]) for t in tensors]
    if isinstance(graph, str):
        from ..align.graph import make_pairs

        pairs = make_pairs(len(tensors), graph)
    else:
        pairs = [(int(i), int(j)) for i, j in graph]
    bad = [(i, j) for i, j in pairs if not (0 <= i < len(tensors) and 0 <= j < len(tensors)) or i == j]
    if bad:
        raise ValueError(f"pair {bad[0]} does not name two different images among {len(tensors)}")
    batch_size = batch_size or (8 if device.startswith("cuda") else 2)
    cache = FeatureCache(model, tensors, device, cache_bytes or 4 << 30)
    if progress is not None:
        progress.stage("pointmap pairs", len(pairs))

    def run() -> Iterator[PairPrediction]:
        pending = None
        for batch in _batches(pairs, shapes, batch_size):
            # Grad/autocast modes are thread state: set them per batch, never across a yield to the caller.
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
                feats = cache.get([k for pair in batch for k in pair], chunk=2 * batch_size)
                res1, res2 = model.decode_pairs(torch.stack(feats[0::2]), torch.stack(feats[1::2]),
                                                shapes[batch[0][0]], shapes[batch[0][1]])
                outputs = _to_host((res1["pts3d"], res2["pts3d"], res1["conf"], res2["conf"]), device)
            if pending is not None:  # the previous batch's copy overlapped this batch's compute
                yield from _unpack(*pending, progress)
            pending = (batch, outputs)
        if pending is not None:
            yield from _unpack(*pending, progress)

    return run()


def _to_host(tensors: tuple, device: str) -> tuple:
    """Start copying float32 results to (pinned) host memory; returns (host tensors, completion event)."""
    import torch

    if not device.startswith("cuda"):
        return tuple(t.float().cpu() for t in tensors), None
    host = tuple(torch.empty(t.shape, dtype=torch.float32, pin_memory=True) for t in tensors)
    for h, t in zip(host, tensors):
        h.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _unpack(batch: list[tuple[int, int]], outputs: tuple, progress: Progress | None) -> Iterator[PairPrediction]:
    host, event = outputs
    if event is not None:
        event.synchronize()
    pts_i, pts_j, conf_i, conf_j = (np.asarray(h.numpy()) for h in host)
    for k, (i, j) in enumerate(batch):
        yield PairPrediction(i, j, pts_i[k], pts_j[k], conf_i[k], conf_j[k])
        if progress is not None:
            progress.advance(1)
