# SPDX-License-Identifier: GPL-3.0-or-later
"""The pointmap backend: the network predicts each pair's pointmaps (engine.pointmap), the global aligner puts
them into one frame (engine.align), and the result is written as a bundle with dense points and depth maps.

The pairs file (engine.pairs_file) between the two stages lives in the caller's work folder. Photos that all share
one camera (one folder and size, or one video) are aligned with shared intrinsics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import EngineError
from ..progress import Progress
from .images import Photo


class InputSizeError(EngineError):
    """The photos give network inputs of different sizes (a pairs file holds one size)."""


def reconstruct(photos: Sequence[Photo], pairs: Sequence[tuple[int, int]], weights: Path, out: Path, work: Path,
                device: str, iterations: int, record: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Reconstruct `photos` over the unordered `pairs` (each predicted both ways) into the bundle folder `out`
    (written with engine.bundle.write_bundle, so `out` may be a staging folder)."""
    import numpy as np
    import torch

    from ..align.aligner import AlignOptions, align
    from ..align.scene import load_colours, write_align_bundle
    from ..pairs_file import open_pairs, write_pairs
    from ..pointmap.checkpoint import load_model
    from ..pointmap.infer import pick_device, predict_pairs
    from ..pointmap.preprocess import load_and_prepare

    device = pick_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device}: CUDA is not available on this machine")
    progress.log(f"loading pointmap weights {weights}")
    model = load_model(weights)
    cfg = model.config
    progress.stage("prepare images", len(photos))
    prepared = load_and_prepare([p.file for p in photos], cfg.input_size, False, cfg.patch_size)
    progress.advance(len(photos))
    inputs = {pm.size: photo.name for photo, (_, pm) in zip(photos, prepared)}
    if len(inputs) > 1:
        listing = ", ".join(f"{w}x{h} ({name})" for (w, h), name in sorted(inputs.items()))
        raise InputSizeError(f"the photos give network inputs of different sizes ({listing}): the pointmap "
                             f"backend needs photos of one aspect ratio and orientation (the colmap backend "
                             f"takes any)")
    (width, height), = inputs
    images = np.stack([arr for arr, _ in prepared])
    sizes = {k: pm.original_size for k, (_, pm) in enumerate(prepared)}
    # Network pixel (u, v) is photo pixel ((u + x0) sx, (v + y0) sy): the same form as a pairs-file pixel map.
    pixel_maps = np.array([(pm.crop[0], pm.crop[1], *pm.scale) for _, pm in prepared], dtype=np.float64)
    ordered = [(i, j) for i, j in pairs] + [(j, i) for i, j in pairs]
    predictions = predict_pairs(list(images), model, ordered, device, progress)
    pairs_path = write_pairs(work / "pairs.npz", [p.name for p in photos], width, height, predictions,
                             original_sizes=np.array([sizes[k] for k in range(len(photos))]), images=images,
                             pixel_maps=pixel_maps)
    del model
    shared = len({(p.group, p.width, p.height) for p in photos}) == 1
    with open_pairs(pairs_path) as pf:
        def colours(k: int) -> np.ndarray:
            return load_colours(photos[k].file, pf.width, pf.height, pf.pixel_map(k), sizes[k])

        options = AlignOptions(iterations=iterations, device=device, shared_intrinsics=shared)
        result = align(pf, options, None, colours, progress)
        progress.stage("write bundle")
        write_align_bundle(result, pf, out, {k: photos[k].file.absolute() for k in range(len(photos))}, sizes,
                           {**record, "weights": str(weights), "loss": result.loss})
    if result.dropped:
        progress.log(f"{len(result.dropped)} image(s) share no pair with the others and were left out: "
                     f"{', '.join(result.dropped)}", "warning")
    return {"images": len(result.images), "points": len(result.points), "left_out": result.dropped}
