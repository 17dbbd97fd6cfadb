"""The pointmap network reproduces the reference implementation (naver/dust3r, croco, mast3r) in float32.

tests/data/pointmap/reference_<head>.npz hold the reference's outputs for the small networks of
test_pointmap_checkpoint.TINY (weights from its integer hash, saved in the official .pth layout) on one pair of
synthetic images of different orientations (32x48 and 48x32). The reference commits are stored in each file.
Bar: per-pixel relative difference < 1e-4 for every output (see `max_rel`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pointmap_checkpoint import (
    TINY,
    network_input,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    save_pth,
)

from engine.pointmap import checkpoint
from engine.pointmap.infer import predict_pairs
from engine.pointmap.rope import Rope2D

DATA = Path(__file__).parent / "data" / "pointmap"
SHAPES = ((32, 48), (48, 32))


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-pixel relative difference: |a - b| / |b| for maps of scalars (confidences), of vector
    norms for (H, W, C) maps (points, descriptors)."""
    if a.ndim == 3:
        return float((np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)).max())
    return float((np.abs(a - b) / np.abs(b)).max())


@pytest.mark.parametrize("name", ["linear", "dpt", "mast3r"])
def test_matches_reference_outputs(name, tmp_path):
    golden = np.load(DATA / f"reference_{name}.npz")
    assert str(golden["model"]) == TINY[name], "golden file made for another network"
    assert {"dust3r", "croco"} <= set(json.loads(str(golden["reference"])))
    model = checkpoint.load_model(save_pth(tmp_path / f"{name}.pth", name))
    img1, img2 = network_input(*SHAPES[0], 0)[None], network_input(*SHAPES[1], 1)[None]
    with torch.inference_mode():
        res1, res2 = model(img1, img2)
    ours = {"pts3d_1": res1["pts3d"], "conf_1": res1["conf"], "pts3d_2": res2["pts3d"], "conf_2": res2["conf"]}
    if name == "mast3r":
        ours.update(desc_1=res1["desc"], desc_conf_1=res1["desc_conf"], desc_2=res2["desc"],
                    desc_conf_2=res2["desc_conf"])
    assert set(ours) == set(golden.files) - {"model", "reference"}
    for key, value in ours.items():
        value = value[0].numpy()
        assert value.shape == golden[key].shape, key
        assert max_rel(value, golden[key]) < 1e-4, (key, max_rel(value, golden[key]))


def test_pair_inference_matches_reference_and_encodes_each_image_once(tmp_path):
    """predict_pairs (batched, cached encoder) gives the reference's numbers for both orders of a pair."""
    golden = np.load(DATA / "reference_linear.npz")
    model = checkpoint.load_model(save_pth(tmp_path / "linear.pth", "linear"))
    images = [network_input(*SHAPES[0], 0), network_input(*SHAPES[1], 1), network_input(*SHAPES[0], 0)]
    images = [((t.permute(1, 2, 0) * 0.5 + 0.5) * 255).round().to(torch.uint8).numpy() for t in images]
    encoded = []
    original_encode = model.encode
    model.encode = lambda x: encoded.append(len(x)) or original_encode(x)
    stream = predict_pairs(images, model, [(0, 1), (2, 1), (1, 0), (1, 2), (0, 2)], device="cpu", batch_size=4)
    preds = [next(stream)]
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()  # no mode leaks to the consumer
    preds += list(stream)
    assert sum(encoded) == 3  # each image once, though 5 pairs use them
    assert [(p.i, p.j) for p in preds] == [(0, 1), (2, 1), (1, 0), (1, 2), (0, 2)]
    for p in preds[:2]:  # image 2 is image 0's pixels, so (2, 1) must give the golden (0, 1) outputs too
        assert max_rel(p.pts3d_i, golden["pts3d_1"]) < 1e-4 and max_rel(p.pts3d_j, golden["pts3d_2"]) < 1e-4
        assert max_rel(p.conf_i, golden["conf_1"]) < 1e-4 and max_rel(p.conf_j, golden["conf_2"]) < 1e-4
        assert p.pts3d_i.dtype == np.float32 and p.pts3d_i.shape == (32, 48, 3) and p.pts3d_j.shape == (48, 32, 3)
    assert np.array_equal(preds[2].pts3d_i.shape, (48, 32, 3))
    np.testing.assert_array_equal(preds[2].pts3d_i, preds[3].pts3d_i)  # same view i, identical view j pixels


def test_rope_rotates_pairs_by_patch_row_and_column():
    """Channel c and c + D/4 of each half rotate by angle pos * 100^(-2k/(D/2)): rows in half 1, columns in 2."""
    rope = Rope2D(rows=2, cols=3, head_dim=8, base=100.0, device=torch.device("cpu"))
    t = torch.zeros(1, 1, 6, 8)
    t[..., 0] = 1.0  # unit vector on the first pair of the row half
    t[..., 4 + 1] = 1.0  # and on the second pair of the column half
    out = rope.apply(t)[0, 0]
    rows, cols = torch.arange(6) // 3, torch.arange(6) % 3
    theta_col = cols * 100.0 ** (-2 / 4)  # k = 1 of the 4-wide half
    torch.testing.assert_close(out[:, 0], torch.cos(rows.float()))  # k = 0: angle = row
    torch.testing.assert_close(out[:, 2], torch.sin(rows.float()))
    torch.testing.assert_close(out[:, 5], torch.cos(theta_col))
    torch.testing.assert_close(out[:, 7], torch.sin(theta_col))
    assert out[:, [1, 3, 4, 6]].abs().max() == 0
