"""GPU-only checks of the pointmap network (marked `gpu`, skipped without CUDA): bf16 agreement, speed, memory.

The full-size DUSt3R 512 DPT architecture with random (CroCo-style) weights; float32 agreement with the reference
is covered on CPU by test_pointmap_golden. Throughput against the reference: bench/bench_pointmap.py --gpu.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FULL_512_DPT = dict(pos_embed="RoPE100", img_size=(512, 512), head_type="dpt", output_mode="pts3d",
                    enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12,
                    dec_num_heads=12)


@pytest.fixture(scope="module")
def net():
    from engine.pointmap.config import PointmapConfig
    from engine.pointmap.model import build

    torch.manual_seed(0)
    model = build(PointmapConfig.from_kwargs("dust3r", FULL_512_DPT, "test"), None, "cpu")
    for m in model.modules():  # CroCo's initialisation keeps the random network's outputs finite
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return model.to("cuda").eval()


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (384, 512, 3))
    return [np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def test_bf16_agrees_with_float32(net):
    from engine.pointmap.infer import predict_pairs

    images = _images(3)
    pairs = [(0, 1), (1, 0), (0, 2)]
    fp32 = list(predict_pairs(images, net, pairs, "cuda", None, 3, "fp32"))
    bf16 = list(predict_pairs(images, net, pairs, "cuda", None, 3, "bf16"))
    for a, b in zip(bf16, fp32):
        for key in ("pts3d_i", "pts3d_j", "conf_i", "conf_j"):
            x, y = getattr(a, key), getattr(b, key)
            assert np.isfinite(x).all()
            assert np.abs(x - y).max() / np.abs(y).max() < 2e-2, key


def test_throughput_memory_and_single_encoding(net):
    from engine.align.graph import make_pairs
    from engine.pointmap.infer import predict_pairs

    images = _images(12)
    pairs = make_pairs(12, "swin-2")  # 48 ordered pairs
    calls = []
    encode = net.encode
    net.encode = lambda x: calls.append(len(x)) or encode(x)
    try:
        list(predict_pairs(images, net, pairs[:8], "cuda", None, 8))  # warm-up
        calls.clear()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        count = sum(1 for _ in predict_pairs(images, net, pairs, "cuda", None, 8))
        torch.cuda.synchronize()
        rate = count / (time.perf_counter() - start)
    finally:
        del net.encode
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    print(f"{rate:.1f} pairs/s at 512x384, batch 8, peak {peak:.1f} GiB")
    assert count == 48 and sum(calls) == 12
    assert peak < 24, peak
    assert rate > 5, rate
