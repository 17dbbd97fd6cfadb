# SPDX-License-Identifier: GPL-3.0-or-later
"""Pointmap network speed: CPU small-config forward times (`python -m bench pointmap`) and, on a CUDA machine,
the full-size GPU sweep against the reference (`python -m bench.bench_pointmap --gpu [--reference DUST3R_DIR]`).

CPU rows (`run()`): the small test networks (tests/test_pointmap_checkpoint.TINY shapes) forward on one pair,
and preparing one 12-megapixel photo (decode + Lanczos resize + crop), which bounds end-to-end time.

GPU sweep (`main()`): DUSt3R_ViTLarge_BaseDecoder_512_dpt's architecture with random weights (throughput does not
depend on weight values), 512x384 inputs. For each batch size: pairs/s and peak GPU memory of
`engine.pointmap.infer.predict_pairs` (bf16 autocast, heads float32, each image encoded once, results copied to
host numpy) and, with --reference (a naver/dust3r checkout with croco inside, importable with its own
dependencies: einops, huggingface_hub, scipy, a torchvision stand-in is enough), of the reference's own
`dust3r.inference.inference` loop on the same pairs in the same run (float32, as it runs by default, and with its
fp16 autocast switch). It also reports the agreement of our bf16 output with the reference's float32 output for
the same weights, and --e2e N times N photos with a swin-10 graph from JPEG files to pairs.npz.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import Report, Row, median_time

FULL_512_DPT = ("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', "
                "img_size=(512, 512), head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), "
                "conf_mode=('exp', 1, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, "
                "dec_depth=12, dec_num_heads=12)")
SMALL = {  # the test networks' shapes
    "linear": "AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(512, 512), head_type='linear', "
              "output_mode='pts3d', enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=24, dec_depth=2, "
              "dec_num_heads=2)",
    "dpt": "AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(512, 512), head_type='dpt', output_mode='pts3d', "
           "enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=24, dec_depth=10, dec_num_heads=2)",
}


def config_of(model_string: str):
    from engine.pointmap.checkpoint import parse_model_string
    from engine.pointmap.config import PointmapConfig

    kind, kwargs = parse_model_string(model_string, "bench")
    return PointmapConfig.from_kwargs(kind, kwargs, "bench")


def random_net(model_string: str, device: str = "cpu"):
    """A network with CroCo's initialisation (xavier-uniform linear layers, zero biases): finite outputs."""
    import torch

    from engine.pointmap.model import build

    torch.manual_seed(0)
    net = build(config_of(model_string), None, "cpu")
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return net.to(device).eval()


def random_images(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


# --------------------------------------------------------------------------------------------------- CPU rows

def run() -> Report:
    import torch

    from engine.pointmap.preprocess import load_and_prepare, to_tensor

    report = Report("pointmap network, CPU small configs (engine.pointmap)")
    for name, (h, w) in (("linear", (224, 224)), ("linear", (384, 512)), ("dpt", (384, 512))):
        net = random_net(SMALL[name])
        x1, x2 = (to_tensor(a)[None] for a in random_images(2, h, w))

        def forward(net=net, x1=x1, x2=x2):
            with torch.inference_mode():
                net(x1, x2)

        forward()
        report.rows.append(Row(f"small {name} net, one {w}x{h} pair forward", median_time(forward, 5)))
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        photo = Path(tmp) / "photo.jpg"
        yy, xx = np.mgrid[0:3024, 0:4032]
        Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)).save(photo)
        report.rows.append(Row("prepare one 4032x3024 JPEG (decode, Lanczos to 512x384)",
                               median_time(lambda: load_and_prepare([photo]), 3)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report.notes.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} "
                        "when run; small nets: 2 encoder blocks of width 32, 2 (linear) or 10 (DPT) decoder blocks "
                        "of width 24, random weights. The DPT head's full-resolution convolutions (fixed widths "
                        "256/128, as in every official checkpoint) dominate the DPT time.")
    return report


# --------------------------------------------------------------------------------------------------- GPU sweep

def _start(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter()


def _stop(device: str, start: float, count: int) -> tuple[float, float]:
    """(items/s, peak GiB of GPU memory; NaN on CPU)."""
    import torch

    if device != "cuda":
        return count / (time.perf_counter() - start), float("nan")
    torch.cuda.synchronize()
    return count / (time.perf_counter() - start), torch.cuda.max_memory_allocated() / 2 ** 30


def time_ours(net, images, pairs, batch_size: int, device: str, precision: str = "bf16") -> tuple[float, float]:
    """(pairs/s, peak GiB) of predict_pairs over `pairs`, outputs consumed as host numpy arrays."""
    from engine.pointmap.infer import predict_pairs

    start = _start(device)
    for _ in predict_pairs(images, net, pairs, device, None, batch_size, precision):
        pass
    return _stop(device, start, len(pairs))


def reference_model(reference: Path, net, device: str):
    """The reference network (imported from the checkout at `reference`) holding `net`'s weights."""
    sys.path.insert(0, str(reference))
    from dust3r.model import AsymmetricCroCo3DStereo  # the official code, outside this repository

    kwargs = dict(net.config.to_kwargs())
    kwargs.update(depth_mode=tuple(kwargs["depth_mode"]), conf_mode=tuple(kwargs["conf_mode"]),
                  img_size=tuple(kwargs["img_size"]))
    ref = AsymmetricCroCo3DStereo(**kwargs)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "mask_token" or "layer" in k and "_rn" in k for k in missing), missing
    return ref.to(device).eval()


def time_reference(ref, images, pairs, batch_size: int, device: str, amp: bool) -> tuple[float, float]:
    import torch
    from dust3r.inference import inference, loss_of_one_batch  # the official code, outside this repository
    from dust3r.utils.device import collate_with_cat, to_cpu

    from engine.pointmap.preprocess import to_tensor

    views = [dict(img=to_tensor(a)[None], true_shape=np.int32([a.shape[:2]]), idx=k, instance=str(k))
             for k, a in enumerate(images)]
    ref_pairs = [(views[i], views[j]) for i, j in pairs]
    start = _start(device)
    if not amp:
        inference(ref_pairs, ref, device, batch_size=batch_size, verbose=False)
    else:  # the same loop with the reference's own autocast switch on
        with torch.no_grad():
            for k in range(0, len(ref_pairs), batch_size):
                to_cpu(loss_of_one_batch(collate_with_cat(ref_pairs[k:k + batch_size]), ref, None, device,
                                         use_amp=True))
    return _stop(device, start, len(pairs))


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(largest per-pixel relative difference, largest difference relative to the map's largest value)."""
    per_pixel = (np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1) if a.ndim == 3
                 else np.abs(a - b) / np.abs(b))
    return float(per_pixel.max()), float(np.abs(a - b).max() / np.abs(b).max())


def agreement(net, ref, images, device: str) -> dict[str, tuple[float, float]]:
    """How far ours (fp32, bf16) and the reference under its amp switch are from the reference's float32 output
    for one pair: `_rel` worst over points and confidences of both views."""
    import torch

    from engine.pointmap.infer import predict_pairs
    from engine.pointmap.preprocess import to_tensor

    x1, x2 = (to_tensor(a)[None].to(device) for a in images[:2])
    shape = torch.tensor([images[0].shape[:2]])

    def reference(amp: bool) -> list[np.ndarray]:
        with torch.no_grad(), torch.autocast(device, dtype=torch.float16, enabled=amp):
            r1, r2 = ref(dict(img=x1, true_shape=shape, instance=["0"]),
                         dict(img=x2, true_shape=shape, instance=["1"]))
        return [t[0].float().cpu().numpy() for t in (r1["pts3d"], r2["pts3d_in_other_view"], r1["conf"], r2["conf"])]

    truth = reference(False)
    candidates = {"ref amp": reference(True)} if device == "cuda" else {}
    for precision in ("fp32", "bf16"):
        pred = next(predict_pairs(images[:2], net, [(0, 1)], device, None, 1, precision))
        candidates[f"ours {precision}"] = [pred.pts3d_i, pred.pts3d_j, pred.conf_i, pred.conf_j]
    return {name: tuple(max(v) for v in zip(*(_rel(a, b) for a, b in zip(out, truth))))
            for name, out in candidates.items()}


def end_to_end(net, n: int, graph: str, batch_size: int, device: str, write: bool) -> tuple[float, int]:
    """Seconds from n JPEG photos (1024x768) to pairs (written to a pairs.npz when `write`), and the pair count."""
    from PIL import Image

    from engine.align.graph import make_pairs
    from engine.pairs_file import write_pairs
    from engine.pointmap.infer import predict_pairs
    from engine.pointmap.preprocess import load_and_prepare

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, img in enumerate(random_images(n, 768, 1024, seed=1)):
            paths.append(Path(tmp) / f"{k:04d}.jpg")
            Image.fromarray(img).save(paths[-1], quality=90)
        pairs = make_pairs(n, graph)
        start = _start(device)
        prepared = load_and_prepare(paths, 512)
        images = [a for a, _ in prepared]
        preds = predict_pairs(images, net, pairs, device, None, batch_size, "bf16")
        if write:
            w, h = prepared[0][1].size
            write_pairs(Path(tmp) / "pairs.npz", [p.name for p in paths], w, h, preds,
                        original_sizes=np.array([pm.original_size for _, pm in prepared]))
        else:
            for _ in preds:
                pass
        rate, _ = _stop(device, start, len(pairs))
        return len(pairs) / rate, len(pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pointmap GPU sweep (full-size DUSt3R 512 DPT, random weights)")
    p.add_argument("--gpu", action="store_true", help="run the GPU sweep (needs CUDA)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script with --small")
    p.add_argument("--small", action="store_true", help="the small test network instead of the full size")
    p.add_argument("--reference", type=Path, help="a naver/dust3r checkout (repository root, croco inside)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    p.add_argument("--size", default="512x384", help="network input WxH of the timed pairs")
    p.add_argument("--images", type=int, default=16, help="images in the timed pair graph (swin-3 over them)")
    p.add_argument("--e2e", type=int, default=0, help="also time N photos, swin-10 graph, files to pairs")
    p.add_argument("--record", action="store_true", help="write the section into bench/RESULTS.md")
    args = p.parse_args(argv)
    if not args.gpu:
        p.error("nothing to do: pass --gpu (the CPU rows run with `python -m bench pointmap`)")
    import torch

    from engine.align.graph import make_pairs

    from . import machine, record

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--gpu needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = True  # as the reference sets on import (croco/models/croco.py)
    net = random_net(SMALL["dpt"] if args.small else FULL_512_DPT, device)
    w, h = (int(v) for v in args.size.split("x"))
    images = random_images(args.images, h, w)
    pairs = make_pairs(args.images, "swin-3")
    ref = reference_model(args.reference, net, device) if args.reference else None
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    title = "small test network" if args.small else "full-size DUSt3R 512 DPT"
    lines = [f"## bench_pointmap_gpu: {title} pair inference on GPU", "",
             f"- machine: {machine()}; {gpu}; torch {torch.__version__}",
             f"- command: `python -m bench.bench_pointmap {' '.join(argv or sys.argv[1:])}`",
             f"- {len(pairs)} ordered pairs (swin-3 over {args.images} random {w}x{h} images), random weights", "",
             "| batch | ours bf16 pairs/s | peak GiB | ref fp32 pairs/s | peak GiB | ref amp pairs/s | peak GiB | "
             "ours / ref fp32 |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in (int(v) for v in args.batch_sizes.split(",")):
        time_ours(net, images, pairs[:b], b, device)  # warm-up (kernels, allocator)
        ours = time_ours(net, images, pairs, b, device)
        row = [f"{b}", f"{ours[0]:.2f}", f"{ours[1]:.1f}"]
        if ref is not None:
            time_reference(ref, images, pairs[:b], b, device, False)
            fp32 = time_reference(ref, images, pairs, b, device, False)
            amp = time_reference(ref, images, pairs, b, device, True)
            row += [f"{fp32[0]:.2f}", f"{fp32[1]:.1f}", f"{amp[0]:.2f}", f"{amp[1]:.1f}", f"{ours[0] / fp32[0]:.2f}x"]
        else:
            row += ["", "", "", "", ""]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    lines.append("")
    if ref is not None:
        agree = agreement(net, ref, images, device)
        lines.append("- difference from the reference's float32 output on one pair (largest per-pixel relative / "
                     "largest relative to the map's maximum; bars 1e-4 fp32, 2e-2 bf16): " +
                     ", ".join(f"{k} {a:.1e} / {b:.1e}" for k, (a, b) in agree.items()))
    if args.e2e:
        for write in (False, True):
            seconds, count = end_to_end(net, args.e2e, "swin-10", 16, device, write)
            what = "to pairs.npz on disk" if write else "outputs to host memory"
            lines.append(f"- end to end, {args.e2e} JPEG photos 1024x768, swin-10 ({count} pairs), {what}: "
                         f"{seconds:.1f} s ({count / seconds:.1f} pairs/s; target < 60 s)")
    section = "\n".join(lines)
    print(section)
    if args.record:
        record("bench_pointmap_gpu", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
