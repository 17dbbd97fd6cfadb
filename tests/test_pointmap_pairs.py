"""`python -m engine pairs`: pair graphs, the written pairs.npz, sharding + merging, and clear failures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_pointmap_checkpoint import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    save_pth,
    synthetic_image,
)

from engine.align.graph import make_pairs
from engine.cli import main
from engine.pairs_file import open_pairs
from engine.pointmap import checkpoint
from engine.pointmap.preprocess import load_and_prepare, to_tensor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    photos = root / "photos"
    photos.mkdir()
    for k in range(4):
        Image.fromarray(synthetic_image(240, 320, k)).save(photos / f"img{k}.png")
    (photos / "notes.txt").write_text("not an image")
    return root, photos, save_pth(root / "tiny224.pth", "linear224")


def _run(capsys, *argv) -> tuple[int, list[dict]]:
    code = main(["--progress", "jsonl", *map(str, argv)])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return code, events


@pytest.mark.parametrize("mode, count", [("complete", 30), ("swin-2", 24), ("swin-2-noncyclic", 18),
                                         ("logwin-2", 24), ("oneref-3", 10)])
def test_pair_graphs(mode, count):
    pairs = make_pairs(6, mode)
    assert len(pairs) == len(set(pairs)) == count
    assert {(j, i) for i, j in pairs} == set(pairs)  # every pair in both directions
    if mode.startswith("swin-2"):
        assert (0, 2) in pairs and (0, 3) not in pairs and ((5, 0) in pairs) == (mode == "swin-2")
    if mode == "oneref-3":
        assert all(3 in p for p in pairs)


def test_pairs_file_holds_the_network_outputs(setup, capsys, tmp_path):
    root, photos, weights = setup
    out = tmp_path / "pairs.npz"
    code, events = _run(capsys, "pairs", "--images", photos, "--weights", weights, "--graph", "swin-1",
                        "--out", out, "--batch-size", "3")
    assert code == 0, events[-1]
    result = events[-1]["result"]
    assert result["pairs"] == 8 and result["images"] == 4 and (result["width"], result["height"]) == (224, 224)
    progress = [e for e in events if e["event"] == "progress" and e["name"] == "pointmap pairs"]
    assert progress[-1]["done"] == progress[-1]["total"] == 8
    files = sorted(photos.glob("*.png"))
    prepared = load_and_prepare(files, size=224)
    model = checkpoint.load_model(weights)
    with open_pairs(out) as pf:
        assert pf.names == [f.name for f in files] and (pf.width, pf.height) == (224, 224)
        assert pf.pairs.tolist() == [list(p) for p in make_pairs(4, "swin-1")]
        np.testing.assert_array_equal(pf.original_sizes, [[320, 240]] * 4)
        np.testing.assert_array_equal(pf.image(2), prepared[2][0])
        batch = pf.load([5])  # pair (1, 0)
        i, j = batch.pairs[0]
        with torch.inference_mode():
            res_i, res_j = model(to_tensor(prepared[i][0])[None], to_tensor(prepared[j][0])[None])
        np.testing.assert_allclose(batch.pts3d_i[0], res_i["pts3d"][0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.pts3d_j[0], res_j["pts3d"][0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.conf_j[0], res_j["conf"][0].numpy(), rtol=1e-5)


def test_shards_merge_into_the_single_run_file(setup, capsys, tmp_path):
    root, photos, weights = setup
    common = ["--images", *sorted(photos.glob("*.png")), "--weights", weights, "--graph", "complete"]
    assert _run(capsys, "pairs", *common, "--out", tmp_path / "full.npz")[0] == 0
    shards = [tmp_path / f"part{k}.npz" for k in (1, 2, 3)]
    for k, shard in enumerate(shards, start=1):
        code, events = _run(capsys, "pairs", *common, "--shard", f"{k}/3", "--out", shard)
        assert code == 0 and events[-1]["result"]["pairs"] == 4 and events[-1]["result"]["graph_pairs"] == 12
    assert _run(capsys, "pairs", "--merge", *shards, "--out", tmp_path / "merged.npz")[0] == 0
    full, merged = np.load(tmp_path / "full.npz"), np.load(tmp_path / "merged.npz")
    assert sorted(full.files) == sorted(merged.files)
    for key in full.files:
        if key.startswith(("pts3d", "conf")):  # batch composition differs between runs: float32 noise only
            np.testing.assert_allclose(merged[key], full[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(merged[key], full[key], err_msg=key)


def test_clear_failures(setup, capsys, tmp_path):
    root, photos, weights = setup
    code, events = _run(capsys, "pairs", "--images", photos, "--weights", "naver/DUSt3R_absent", "--out",
                        tmp_path / "x.npz")
    assert code == 2 and "pointmap weights 'naver/DUSt3R_absent' not found" in events[-1]["message"]
    code, events = _run(capsys, "pairs", "--images", photos, "--weights", weights, "--shard", "4/3", "--out",
                        tmp_path / "x.npz")
    assert code == 2 and "--shard '4/3'" in events[-1]["message"]
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(synthetic_image(240, 320, 0)).save(odd / "a.png")
    Image.fromarray(synthetic_image(320, 240, 1)).save(odd / "b.png")
    code, events = _run(capsys, "pairs", "--images", odd, "--weights", save_pth(tmp_path / "w.pth", "linear"),
                        "--out", tmp_path / "x.npz")
    assert code == 2 and "384x512 (b.png), 512x384 (a.png)" in events[-1]["message"]
    assert not (tmp_path / "x.npz").exists()
