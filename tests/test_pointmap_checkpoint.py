"""Pointmap checkpoints: both official layouts load and agree, bad files fail clearly, pickles cannot run code.

Also home of the helpers the other test_pointmap_* files import: small networks in the official layouts with
deterministic weights (an integer hash, so they do not depend on any random number generator's version) and
deterministic test images.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.pointmap import checkpoint
from engine.pointmap.config import CheckpointError, PointmapConfig
from engine.pointmap.model import parameter_shapes

# Constructor strings in the form the official .pth files store them (args.model).
_COMMON = ("pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', depth_mode=('exp', -inf, inf), "
           "conf_mode=('exp', 1, inf), enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=24, "
           "dec_num_heads=2")
TINY = {
    "linear": f"AsymmetricCroCo3DStereo({_COMMON}, img_size=(512, 512), head_type='linear', output_mode='pts3d', "
              "dec_depth=2)",
    "linear224": f"AsymmetricCroCo3DStereo({_COMMON}, img_size=(224, 224), head_type='linear', "
                 "output_mode='pts3d', dec_depth=2)",
    "dpt": f"AsymmetricCroCo3DStereo({_COMMON}, img_size=(512, 512), head_type='dpt', output_mode='pts3d', "
           "dec_depth=10)",
    "mast3r": f"AsymmetricMASt3R({_COMMON}, img_size=(512, 512), head_type='catmlp+dpt', "
              "output_mode='pts3d+desc8', two_confs=True, desc_conf_mode=('exp', 0, inf), dec_depth=10)",
}


def tiny_config(name: str) -> PointmapConfig:
    kind, kwargs = checkpoint.parse_model_string(TINY[name], name)
    return PointmapConfig.from_kwargs(kind, kwargs, name)


def hashed_uniform(seed: str, n: int) -> np.ndarray:
    """n values in [-1, 1) from a splitmix64 hash of (seed, index): exact integer arithmetic, any platform."""
    s = np.uint64(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + s
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53) * 2 - 1


def official_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The state dict of network `name` as the reference saves it: DPT `layerN_rn` aliases and `mask_token`
    included, weights ~U(+-sqrt(3/fan_in)), norms ~1, small biases. A new dict of shared, read-only tensors."""
    return dict(_official_state_dict(name))


@functools.lru_cache(maxsize=None)
def _official_state_dict(name: str) -> dict[str, torch.Tensor]:
    config = tiny_config(name)
    shapes = dict(parameter_shapes(config), mask_token=(1, 1, config.dec_embed_dim))
    state = {}
    for key, shape in shapes.items():
        u = hashed_uniform(key, int(np.prod(shape))).reshape(shape)
        if len(shape) >= 2:
            value = u * math.sqrt(3.0 / np.prod(shape[1:]))
        elif key.endswith("weight"):  # LayerNorm scale
            value = 1 + 0.1 * u
        else:
            value = 0.05 * u
        state[key] = torch.from_numpy(value.astype(np.float32))
    for key in list(state):
        alias = re.fullmatch(r"(.*\.scratch\.)layer_rn\.(\d)\.weight", key)
        if alias:
            state[f"{alias.group(1)}layer{int(alias.group(2)) + 1}_rn.weight"] = state[key]
    return state


def save_pth(path: Path, name: str, state: dict | None = None, model_string: str | None = None) -> Path:
    args = argparse.Namespace(model=model_string or TINY[name], lr=1e-4, output_dir="out", epochs=1)
    torch.save({"model": state if state is not None else official_state_dict(name), "args": args,
                "epoch": 1}, path)
    return path


def save_hub(folder: Path, name: str) -> Path:
    """The Hugging Face layout: config.json (constructor kwargs) + model.safetensors (one name per tensor)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(name)
    (folder / "config.json").write_text(json.dumps(config.to_kwargs()))
    state = {k: v for k, v in official_state_dict(name).items() if not re.search(r"layer\d_rn", k)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic (h, w, 3) uint8 picture: smooth gradients plus hashed texture."""
    yy, xx = np.mgrid[0:h, 0:w]
    noise = ((hashed_uniform(f"img{seed}", h * w).reshape(h, w) + 1) * 127.5).astype(np.int64)
    img = np.stack([(xx * (5 + seed) + yy * 3) % 256, (xx * yy // (seed + 1)) % 251, noise], -1)
    return img.astype(np.uint8)


def network_input(h: int, w: int, seed: int) -> torch.Tensor:
    from engine.pointmap.preprocess import to_tensor

    return to_tensor(synthetic_image(h, w, seed))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny networks run fastest on one thread (and are not slowed by a busy machine); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def linear_pth(tmp_path_factory) -> Path:
    return save_pth(tmp_path_factory.mktemp("pth") / "tiny_linear.pth", "linear")


def _forward(model, seed: int = 0):
    img1, img2 = network_input(48, 64, seed)[None], network_input(64, 48, seed + 1)[None]
    with torch.inference_mode():
        return model(img1, img2)


def test_pth_and_hub_layouts_load_the_same_network(linear_pth, tmp_path):
    hub = save_hub(tmp_path / "hub", "linear")
    from_pth = checkpoint.load_model(linear_pth)
    from_hub = checkpoint.load_model(hub)
    from_file = checkpoint.load_model(hub / "model.safetensors")
    assert from_pth.config == from_hub.config == tiny_config("linear")
    (a1, a2), (b1, b2), (c1, c2) = _forward(from_pth), _forward(from_hub), _forward(from_file)
    for key in ("pts3d", "conf"):
        assert torch.equal(a1[key], b1[key]) and torch.equal(a2[key], b2[key])
        assert torch.equal(a1[key], c1[key]) and torch.equal(a2[key], c2[key])
    assert a2["pts3d"].shape == (1, 64, 48, 3) and torch.isfinite(a2["pts3d"]).all()
    assert float(a1["conf"].min()) >= 1.0


def test_dpt_aliases_and_missing_second_decoder(tmp_path):
    state = official_state_dict("dpt")
    assert "downstream_head1.dpt.scratch.layer1_rn.weight" in state  # the official alias pair
    no_dec2 = {k: v for k, v in state.items() if not k.startswith("dec_blocks2.")}
    config, mapped = checkpoint.read_weights(save_pth(tmp_path / "a.pth", "dpt", no_dec2))
    assert torch.equal(mapped["dec_blocks2.3.cross_attn.projq.weight"], state["dec_blocks.3.cross_attn.projq.weight"])
    assert not any(re.search(r"layer\d_rn", k) for k in mapped) and "mask_token" not in mapped

    bad = dict(state)
    bad["downstream_head2.dpt.scratch.layer3_rn.weight"] = bad["downstream_head2.dpt.scratch.layer3_rn.weight"] + 1
    with pytest.raises(CheckpointError, match=r"layer3_rn\.weight' and its alias 'downstream_head2\.dpt\.scratch"
                                              r"\.layer_rn\.2\.weight' hold different values"):
        checkpoint.read_weights(save_pth(tmp_path / "b.pth", "dpt", bad))


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"enc_blocks.1.mlp.fc1.weight": torch.zeros(128, 31)}),
     r"tensor 'enc_blocks\.1\.mlp\.fc1\.weight' has shape \(128, 31\), expected \(128, 32\)"),
    (lambda s: s.pop("dec_norm.bias"), r"tensor 'dec_norm\.bias' missing"),
    (lambda s: s.update({"extra.weight": torch.zeros(3)}), r"unexpected tensor 'extra\.weight'"),
    (lambda s: s.update({"enc_norm.weight": torch.ones(32, dtype=torch.int64)}),
     r"tensor 'enc_norm\.weight' has dtype torch\.int64"),
    (lambda s: s.update({"mask_token": torch.zeros(1, 1, 7)}), r"tensor 'mask_token' has shape \(1, 1, 7\)"),
])
def test_bad_tensors_are_named(tmp_path, change, message):
    state = official_state_dict("linear")
    change(state)
    path = save_pth(tmp_path / "bad.pth", "linear", state)
    with pytest.raises(CheckpointError, match=message) as err:
        checkpoint.load_model(path)
    assert str(path) in str(err.value)


class _Payload:
    """Unpickling this would create the marker file (exec of a tiny program)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("layout, message", [
    ("torch_zip", r"its pickle references (builtins\.)?exec\b"),
    ("pickle_protocol_2", r"its pickle references (builtins\.)?exec\b"),
    ("pickle_protocol_5", r"its pickle is not plain weights"),
])
def test_malicious_pickle_is_refused_without_running(tmp_path, layout, message):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if layout == "torch_zip":
        torch.save({"model": official_state_dict("linear"), "args": _Payload(marker)}, path)
    else:  # a legacy, non-zip .pth is a bare pickle
        path.write_bytes(pickle.dumps({"model": {}, "args": _Payload(marker)}, protocol=int(layout[-1])))
    with pytest.warns() if layout == "pickle_protocol_5" else contextlib.nullcontext():  # torch notes the protocol
        with pytest.raises(CheckpointError, match="refused to load: " + message):
            checkpoint.load_model(path)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        checkpoint.load_model(junk)
    no_args = tmp_path / "no_args.pth"
    torch.save({"model": official_state_dict("linear")}, no_args)
    with pytest.raises(CheckpointError, match=r"no 'args\.model' constructor string"):
        checkpoint.load_model(no_args)
    folder = tmp_path / "half_hub"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load_model(folder)
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        checkpoint.read_weights(folder)


def test_model_string_is_parsed_not_evaluated():
    kind, kw = checkpoint.parse_model_string(
        "AsymmetricMASt3R(img_size=(512, 512), depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, float('inf')),"
        " desc_conf_mode=('exp', 0, math.inf), two_confs=True, mlp_ratio=4., enc_depth=+24)", "args.model")
    assert kind == "mast3r" and kw["depth_mode"] == ("exp", -math.inf, math.inf) and kw["enc_depth"] == 24
    assert kw["conf_mode"][2] == math.inf and kw["desc_conf_mode"][2] == math.inf and kw["two_confs"] is True
    for text, message in [
        ("__import__('os').system('true')", "expected AsymmetricCroCo3DStereo or AsymmetricMASt3R"),
        ("AsymmetricCroCo3DStereo(enc_depth=eval('24'))", r"argument enc_depth: unsupported expression \"eval"),
        ("AsymmetricCroCo3DStereo(**kw)", r"'\*\*' arguments are not supported"),
        ("AsymmetricCroCo3DStereo(enc_depth=24", "not a constructor call"),
        ("AsymmetricCroCo3DStereo(24)", "positional constructor arguments"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            checkpoint.parse_model_string(text, "args.model")


@pytest.mark.parametrize("kwargs, message", [
    ({"pos_embed": "cosine"}, r"pos_embed='cosine' is not supported"),
    ({"head_type": "dpt", "dec_depth": 8}, r"dec_depth=8 must be at least 10"),
    ({"enc_embed_dim": 30, "enc_num_heads": 3}, r"must split into 3 heads of a multiple of 4 channels"),
    ({"img_size": (500, 512)}, r"img_size=\(500, 512\) must be two multiples of patch_size=16"),
    ({"unknown_flag": 1}, r"unsupported dust3r constructor argument\(s\) unknown_flag"),
    ({"depth_mode": ("exp", 0, 10)}, r"depth_mode=.* must be unbounded"),
])
def test_unsupported_architectures_fail_clearly(kwargs, message):
    base = {"pos_embed": "RoPE100"}
    with pytest.raises(CheckpointError, match=message):
        PointmapConfig.from_kwargs("dust3r", dict(base, **kwargs), "cfg")


def _fake_hub_cache(cache: Path, repo_id: str, source: Path) -> None:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/<files>}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in checkpoint.HUB_FILES:
        (snap / f).write_bytes((source / f).read_bytes())


def test_hub_id_from_offline_cache(tmp_path, linear_pth):
    cache = tmp_path / "hf_cache"
    _fake_hub_cache(cache, "naver/DUSt3R_tiny_test", save_hub(tmp_path / "src", "linear"))
    found = checkpoint.find_weights("naver/DUSt3R_tiny_test", hub_cache=cache)
    assert found is not None and (found / "config.json").is_file()
    assert checkpoint.find_weights("DUSt3R_tiny_test", hub_cache=cache) == found  # bare official name
    (a1, a2) = _forward(checkpoint.load_model("naver/DUSt3R_tiny_test", hub_cache=cache))
    (b1, b2) = _forward(checkpoint.load_model(linear_pth))
    assert torch.equal(a1["pts3d"], b1["pts3d"]) and torch.equal(a2["conf"], b2["conf"])

    with pytest.raises(CheckpointError, match=r"'naver/DUSt3R_missing' is not in the Hugging Face cache .*"
                                              r"hf download naver/DUSt3R_missing"):
        checkpoint.load_model("naver/DUSt3R_missing", hub_cache=cache)


def test_search_dirs(tmp_path, linear_pth):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "MyNet.pth"
    target.write_bytes(linear_pth.read_bytes())
    assert checkpoint.find_weights("MyNet", search_dirs=[tmp_path / "models"], hub_cache=tmp_path) == target
    assert checkpoint.find_weights("Other", search_dirs=[tmp_path / "models"], hub_cache=tmp_path) is None
