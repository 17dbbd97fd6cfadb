"""`pairs`: run the pointmap network over a pair graph and write `pairs.npz` (see engine/pairs_file.py).

    python -m engine pairs --images DIR_OR_FILES... --weights PATH_OR_HUB_ID --graph swin-10 --out pairs.npz
    python -m engine pairs ... --shard 2/4 --out part2.npz      # the 2nd of 4 contiguous slices of the pair list
    python -m engine pairs --merge part1.npz ... part4.npz --out pairs.npz

Shards of the same graph merge into exactly the file one run would have written.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import EngineError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def add_arguments(p) -> None:
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="image files, or one folder (its .jpg/.jpeg/.png files in name order)")
    p.add_argument("--weights", metavar="PATH_OR_ID",
                   help="DUSt3R/MASt3R weights: a .pth file, a folder with config.json + model.safetensors, "
                        "or a Hugging Face id already in the local cache")
    p.add_argument("--graph", default="complete", help="pair graph: complete, swin-K, logwin-K or oneref-K "
                   "(swin/logwin accept a -noncyclic suffix); default complete")
    p.add_argument("--out", required=True, help="output pairs file (.npz)")
    p.add_argument("--shard", metavar="K/N", help="compute only the K-th (1-based) of N contiguous slices of the "
                   "pair list, to split the work across processes or machines")
    p.add_argument("--merge", nargs="+", metavar="SHARD", help="merge shard files into --out instead of running "
                   "the network")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="transformer precision (heads always run in float32); auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per forward pass (default 8 on CUDA, 2 on CPU)")
    p.add_argument("--square-ok", action="store_true",
                   help="keep square photos square (the reference crops them to 4:3 by default)")


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise EngineError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def shard_slice(num_pairs: int, k: int, n: int) -> slice:
    """The K-th of N contiguous, near-equal slices of a list of `num_pairs` pairs (K is 1-based)."""
    return slice((k - 1) * num_pairs // n, k * num_pairs // n)


def list_images(paths: list[str]) -> list[Path]:
    if len(paths) == 1 and Path(paths[0]).is_dir():
        folder = Path(paths[0])
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise EngineError(f"--images {folder}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder")
        return files
    files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise EngineError(f"--images: {f} is not a file")
    return files


def run(args, progress) -> dict:
    from ..pairs_file import merge_pairs, write_pairs

    if args.merge:
        out = merge_pairs(args.merge, args.out)
        return {"out": str(out), "merged": len(args.merge)}
    if not args.images or not args.weights:
        raise EngineError("pairs: --images and --weights are required (or --merge SHARD... to merge shards)")
    shard = parse_shard(args.shard) if args.shard else None
    if args.batch_size is not None and args.batch_size < 1:
        raise EngineError(f"--batch-size {args.batch_size}: must be at least 1")
    files = list_images(args.images)
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise EngineError(f"--images: two images are named {dup!r}; image names must be unique")

    import numpy as np
    import torch

    from ..align.graph import make_pairs
    from ..pointmap.checkpoint import load_model
    from ..pointmap.infer import pick_device, predict_pairs
    from ..pointmap.preprocess import load_and_prepare

    device = pick_device(args.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"--device {args.device}: CUDA is not available on this machine")
    progress.log(f"loading weights {args.weights}")
    model = load_model(args.weights)
    cfg = model.config
    progress.stage("preparing images", len(files))
    prepared = load_and_prepare(files, cfg.input_size, args.square_ok, cfg.patch_size)
    progress.advance(len(files))
    sizes = {pm.size for _, pm in prepared}
    if len(sizes) > 1:
        by_size = {pm.size: f.name for f, (_, pm) in zip(files, prepared)}
        listing = ", ".join(f"{w}x{h} ({name})" for (w, h), name in sorted(by_size.items()))
        raise EngineError(f"--images: the photos give network inputs of different sizes: {listing}; a pairs file "
                          "holds one size, so use photos of one aspect ratio and orientation")
    width, height = sizes.pop()
    pairs = make_pairs(len(files), args.graph)
    total = len(pairs)
    if shard is not None:
        pairs = pairs[shard_slice(total, *shard)]
        if not pairs:
            raise EngineError(f"--shard {args.shard}: this slice is empty (the graph has only {total} pairs)")
    images = np.stack([arr for arr, _ in prepared])
    predictions = predict_pairs(list(images), model, pairs, device, progress, args.batch_size, args.precision)
    out = write_pairs(args.out, names, width, height, predictions,
                      original_sizes=np.array([pm.original_size for _, pm in prepared]), images=images,
                      pixel_maps=np.array([(pm.crop[0], pm.crop[1], *pm.scale) for _, pm in prepared]))
    return {"out": str(out), "images": len(files), "pairs": len(pairs), "graph_pairs": total,
            "width": width, "height": height, "shard": args.shard, "device": device}
