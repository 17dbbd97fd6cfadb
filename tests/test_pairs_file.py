# SPDX-License-Identifier: GPL-3.0-or-later
"""The pairs file (engine/pairs_file.py): round trips, streaming, shards, and every validation error."""
import tracemalloc
import zipfile

import numpy as np
import pytest

from engine.errors import EngineError
from engine.pairs_file import PairPrediction, centred_crop_map, merge_pairs, open_pairs, write_pairs

H, W = 6, 8
NAMES = ["a.jpg", "b.jpg", "c.jpg"]


def _pred(i, j, seed=0):
    rng = np.random.default_rng(seed)
    return PairPrediction(i, j, rng.normal(size=(H, W, 3)), rng.normal(size=(H, W, 3)),
                          1 + rng.random((H, W)), 1 + rng.random((H, W)))


PAIRS = [(0, 1), (1, 0), (1, 2), (2, 1)]


def _write(path, pairs=PAIRS, **kw):
    return write_pairs(path, kw.pop("names", NAMES), W, H, (_pred(i, j, k) for k, (i, j) in enumerate(pairs)), **kw)


def _raw(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_round_trip_load_and_chunks(tmp_path):
    sizes = np.array([[80, 60], [80, 60], [60, 80]])
    images = np.random.default_rng(1).integers(0, 255, (3, H, W, 3), dtype=np.uint8)
    path = _write(tmp_path / "pairs.npz", original_sizes=sizes, images=images)
    raw = _raw(path)  # a plain npz: every array readable with numpy alone
    assert raw["pts3d_i"].shape == (4, H, W, 3) and raw["pts3d_i"].dtype == np.float32
    assert raw["pairs"].tolist() == [list(p) for p in PAIRS] and int(raw["width"]) == W
    with open_pairs(path) as pf:
        assert pf.names == NAMES and (pf.width, pf.height) == (W, H) and pf.num_edges == 4
        np.testing.assert_array_equal(pf.original_sizes, sizes)
        np.testing.assert_array_equal(pf.image(2), images[2])
        batch = pf.load([3, 0])  # any order
        np.testing.assert_array_equal(batch.pairs, [[2, 1], [0, 1]])
        expected = _pred(2, 1, 3)
        np.testing.assert_array_equal(batch.pts3d_j[0], expected.pts3d_j.astype(np.float32))
        np.testing.assert_array_equal(batch.conf_i[1], _pred(0, 1, 0).conf_i.astype(np.float32))
        chunks = list(pf.iter_chunks(3))
        assert [len(c) for c in chunks] == [3, 1]
        np.testing.assert_array_equal(np.concatenate([c.pts3d_i for c in chunks]), raw["pts3d_i"])


def test_compressed_npz_is_read_as_a_stream(tmp_path):
    raw = _raw(_write(tmp_path / "pairs.npz"))
    np.savez_compressed(tmp_path / "small.npz", **raw)
    with open_pairs(tmp_path / "small.npz") as pf:
        for ids in ([2, 3], [0], [3, 1]):  # forward, then backwards (the stream restarts)
            np.testing.assert_array_equal(pf.load(ids).pts3d_j, raw["pts3d_j"][ids])


def test_write_streams_without_holding_all_pairs(tmp_path):
    n, h, w = 200, 48, 64
    rng = np.random.default_rng(0)

    def preds():  # a generator: write_pairs must consume it one prediction at a time
        for k in range(n):
            yield PairPrediction(k, (k + 1) % n, rng.normal(size=(h, w, 3)), rng.normal(size=(h, w, 3)),
                                 np.ones((h, w)), np.ones((h, w)))

    tracemalloc.start()
    write_pairs(tmp_path / "big.npz", [f"im{k}" for k in range(n)], w, h, preds())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    total = n * h * w * 8 * 4  # float32 bytes of all edge arrays
    assert peak < total / 5, (peak, total)  # about 2 MB of buffers, whatever the number of pairs
    assert open_pairs(tmp_path / "big.npz").num_edges == n


def test_shards_open_as_one_and_merge(tmp_path):
    a = _write(tmp_path / "s0.npz", PAIRS[:3])
    b = write_pairs(tmp_path / "s1.npz", NAMES, W, H, [_pred(2, 1, 3)])
    whole = _raw(_write(tmp_path / "whole.npz"))
    with open_pairs([a, b]) as pf:
        assert pf.pairs.tolist() == [list(p) for p in PAIRS]
        np.testing.assert_array_equal(pf.load([3, 1]).pts3d_i, whole["pts3d_i"][[3, 1]])
    merged = _raw(merge_pairs([a, b], tmp_path / "merged.npz", max_edges=2))
    for key in ("pairs", "pts3d_i", "pts3d_j", "conf_i", "conf_j"):
        np.testing.assert_array_equal(merged[key], whole[key])
    with pytest.raises(EngineError, match="must not overwrite"):
        merge_pairs([a, b], a)


def _tamper(tmp_path, **changes):
    raw = _raw(_write(tmp_path / "good.npz"))
    for k, v in changes.items():
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    np.savez(tmp_path / "bad.npz", **raw)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("changes, message", [
    (dict(pts3d_j=np.zeros((4, H, W + 1, 3), np.float32)), r"'pts3d_j' has shape \(4, 6, 9, 3\), expected"),
    (dict(conf_i=np.ones((3, H, W), np.float32)), r"'conf_i' has shape"),
    (dict(names=np.array(["a", "b", "a"])), r"duplicate name 'a'"),
    (dict(pairs=np.array([[0, 1], [1, 0], [1, 3], [2, 1]])), r"'pairs' entry 2 = \[1, 3\]"),
    (dict(pairs=np.array([[0, 1], [1, 1], [1, 2], [2, 1]])), r"'pairs' entry 1"),
    (dict(pairs=np.array([[0, 1], [1, 0], [0, 1], [2, 1]])), r"ordered pair \[0, 1\] more than once"),
    (dict(pts3d_i=None), r"missing array\(s\) pts3d_i"),
    (dict(width=np.array(8.5)), r"'width' must be one integer"),
    (dict(names=np.array(["a"]), pairs=np.zeros((0, 2), int)), r"at least 2 images"),
    (dict(pts3d_i=np.zeros((4, H, W, 3), np.int32)), r"'pts3d_i' must hold floating-point"),
    (dict(original_sizes=np.array([[80, 60], [80, 60]])), r"'original_sizes' must be an \(N, 2\)"),
])
def test_malformed_files_name_the_field(tmp_path, changes, message):
    with pytest.raises(EngineError, match=message):
        open_pairs(_tamper(tmp_path, **changes))


def test_bad_values_are_reported_when_read(tmp_path):
    pts = _raw(_write(tmp_path / "good.npz"))["pts3d_i"]
    pts[2, 1, 1, 0] = np.nan
    pf = open_pairs(_tamper(tmp_path, pts3d_i=pts))
    pf.load([0, 1])  # clean edges read fine
    with pytest.raises(EngineError, match=r"bad.npz: pair 2 \[1, 2\]: array 'pts3d_i' contains NaN"):
        pf.load([2])
    with pytest.raises(EngineError, match="NaN"):
        pf.validate()
    conf = _raw(tmp_path / "good.npz")["conf_j"]
    conf[0, 0, 0] = 0.5
    with pytest.raises(EngineError, match=r"'conf_j' has confidences below 1"):
        open_pairs(_tamper(tmp_path, conf_j=conf)).validate()


def test_shards_must_agree(tmp_path):
    a = _write(tmp_path / "a.npz", PAIRS[:2])
    b = write_pairs(tmp_path / "b.npz", ["a.jpg", "b.jpg", "x.jpg"], W, H, [_pred(1, 2)])
    with pytest.raises(EngineError, match=r"b.npz: field 'names' differs from the first shard"):
        open_pairs([a, b])
    c = _write(tmp_path / "c.npz", PAIRS[1:3])
    with pytest.raises(EngineError, match=r"ordered pair \[1, 0\] more than once"):
        open_pairs([a, c])


def test_not_a_pairs_file(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(EngineError, match="not an npz"):
        open_pairs(tmp_path / "x.npz")
    with pytest.raises(EngineError, match="not found"):
        open_pairs(tmp_path / "missing.npz")


@pytest.mark.parametrize("pred, message", [
    (PairPrediction(0, 1, np.zeros((H, W, 3)), np.zeros((H, W + 1, 3)), np.ones((H, W)), np.ones((H, W))),
     r"pts3d_j has shape \(6, 9, 3\)"),
    (PairPrediction(0, 0, np.zeros((H, W, 3)), np.zeros((H, W, 3)), np.ones((H, W)), np.ones((H, W))),
     "distinct"),
    (PairPrediction(0, 1, np.full((H, W, 3), np.inf), np.zeros((H, W, 3)), np.ones((H, W)), np.ones((H, W))),
     "'pts3d_i' contains NaN or infinite"),
])
def test_write_refuses_bad_predictions_and_leaves_nothing(tmp_path, pred, message):
    good = _pred(1, 0)
    with pytest.raises(EngineError, match=message):
        write_pairs(tmp_path / "p.npz", NAMES, W, H, [good, pred])
    assert list(tmp_path.iterdir()) == []  # no file, no spool or temporary file left


def test_write_refuses_bad_metadata(tmp_path):
    with pytest.raises(EngineError, match="duplicate name 'a'"):
        write_pairs(tmp_path / "p.npz", ["a", "a"], W, H, [_pred(0, 1)])
    with pytest.raises(EngineError, match="no pair predictions"):
        write_pairs(tmp_path / "p.npz", NAMES, W, H, [])
    with pytest.raises(EngineError, match="'images' must be a uint8 array"):
        write_pairs(tmp_path / "p.npz", NAMES, W, H, [_pred(0, 1)], images=np.zeros((3, H, W, 3)))
    assert not (tmp_path / "p.npz").exists()


def test_stored_uncompressed_for_memory_mapping(tmp_path):
    path = _write(tmp_path / "pairs.npz")
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


def test_pixel_maps_stored_or_centred_crop(tmp_path):
    # a 1000x600 photo scaled to width 512 (s = 0.512) -> 512x307.2, cropped to 512x304
    ox, oy, sx, sy = centred_crop_map(512, 304, 1000, 600)
    assert (ox, oy) == pytest.approx((0, 1.6)) and sx == sy == pytest.approx(1 / 0.512)
    assert ((256 + ox) * sx, (152 + oy) * sy) == pytest.approx((500, 300))  # centre to centre
    sizes = np.array([[80, 60], [80, 60], [60, 80]])
    with open_pairs(_write(tmp_path / "p.npz", original_sizes=sizes)) as pf:
        assert pf.pixel_map(2) == pytest.approx(centred_crop_map(W, H, 60, 80))
    maps = np.array([[0, 1, 10, 10.1]] * 3)
    with open_pairs(_write(tmp_path / "q.npz", original_sizes=sizes, pixel_maps=maps)) as pf:
        assert pf.pixel_map(1) == (0, 1, 10, 10.1)
    with open_pairs(_write(tmp_path / "r.npz")) as pf:
        assert pf.pixel_map(0) == (0, 0, 1, 1) and pf.pixel_map(0, (16, 12)) == (0, 0, 2, 2)
    with pytest.raises(EngineError, match="'pixel_maps' needs 'original_sizes'"):
        _write(tmp_path / "s.npz", pixel_maps=maps)
    with pytest.raises(EngineError, match="positive scales"):
        _write(tmp_path / "s.npz", original_sizes=sizes, pixel_maps=-maps)
