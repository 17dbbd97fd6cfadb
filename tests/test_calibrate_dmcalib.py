# SPDX-License-Identifier: GPL-3.0-or-later
"""DM-Calib pipeline: weights in the diffusers layout (tiny random networks made here, nothing downloaded), the
end-to-end run on CPU, mapping intrinsics back to original pixels, and clear errors for missing or bad weights."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.calibrate import dmcalib
from engine.calibrate.camera_image import encode
from engine.calibrate.result import CalibrationError, CalibrationResult
from engine.progress import Progress

RES = 64  # processing resolution for the tiny networks (the real one is 768)


def _tiny_parts(folder: Path, unet_channels: int = 8) -> None:
    """Randomly initialised UNet / VAE / CLIP text encoder / tokenizer / DDIM scheduler saved in the diffusers
    layout; small enough to run in a second on CPU."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=16, in_channels=unet_channels, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16), latent_channels=4,
        layers_per_block=1, norm_num_groups=8, sample_size=RES).save_pretrained(folder / "vae")
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    ).save_pretrained(folder / "text_encoder")
    tokenizer = folder / "tokenizer"  # the files Stable Diffusion 2.1 ships
    tokenizer.mkdir()
    (tokenizer / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer / "merges.txt").write_text("#version: 0.2\n")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 8, "pad_token": "!"}))
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                  ).save_pretrained(folder / "scheduler")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dmcalib") / "weights"
    _tiny_parts(folder)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), cv2.resize(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), (120, 90)))
    return path


def test_tiny_model_runs_end_to_end(tiny, photo):
    events = io.StringIO()
    result = dmcalib.calibrate_dmcalib(photo, tiny, Progress("jsonl", events), steps=3, ensemble=2,
                                       processing_res=RES, device="cpu")
    events = [json.loads(line) for line in events.getvalue().splitlines()]
    stages = [(e["name"], e["total"]) for e in events if e["event"] == "stage"]
    assert stages == [("DM-Calib: loading weights", None), ("DM-Calib: denoising", 3),
                      ("DM-Calib: decoding the camera image", None)]
    assert [e["done"] for e in events if e["event"] == "progress"][-1] == 3
    assert isinstance(result, CalibrationResult)
    assert result.method == "dmcalib" and result.model == "PINHOLE"
    assert (result.width, result.height) == (120, 90)
    assert all(np.isfinite(result.params)) and result.params[0] > 0 and result.params[1] > 0
    assert np.isfinite(result.hfov_deg) and np.isfinite(result.vfov_deg)
    ex = result.extras
    assert ex["work_size"] == [64, 48] and ex["padding"] == [0, 8, 0, 8]
    assert ex["device"] == "cpu" and ex["dtype"] == "float32" and len(ex["member_hfov_deg"]) == 2
    # random weights paint no camera image: the confidence is the (low) inlier fraction times the agreement
    inliers = min(ex["inlier_fraction"].values())
    assert inliers < 0.3
    agreement = 1 / (1 + (ex["hfov_spread_deg"] / dmcalib.SPREAD_DEG) ** 2)
    assert result.confidence == pytest.approx(inliers * agreement)
    assert 0.0 <= result.confidence < 0.3
    assert "not a camera image" in result.reason
    again = CalibrationResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again.params == result.params and again.confidence == result.confidence


def test_sampling_is_deterministic_and_shaped(tiny):
    import torch

    model = dmcalib.load_dmcalib(tiny, device="cpu")
    assert model.size_multiple == 8 and tuple(model.prompt_embedding.shape) == (1, 2, 16)  # BOS + EOS, unpadded
    assert model.scheduler.config.prediction_type == "v_prediction"  # forced, whatever the config says
    image = torch.rand(3, RES, RES)
    a = model.sample(image, steps=2, ensemble=3, seed=5)
    b = model.sample(image, steps=2, ensemble=3, seed=5)
    assert a.shape == (3, 3, RES, RES) and a.dtype == np.float32
    assert np.array_equal(a, b) and np.abs(a).max() <= 1.0
    assert not np.allclose(a[0], a[1])  # the ensemble members start from different noise


class _Oracle(dmcalib.DMCalibModel):
    """A "network" that paints the true camera image of the padded input, to check the geometry around it."""

    def __init__(self, intrinsics_work: tuple[float, float, float, float], size: tuple[int, int],
                 pad: tuple[int, int]) -> None:
        super().__init__(None, None, None, None, "cpu", "oracle")
        self.k, self.size, self.pad, self.inputs = intrinsics_work, size, pad, []

    dtype = "float32"
    size_multiple = 8

    def sample(self, image, steps, ensemble, seed=0, progress=None):
        self.inputs.append(image.numpy())
        (w, h), (left, top) = self.size, self.pad
        out = np.random.default_rng(seed).uniform(-1, 1, (ensemble, 3) + tuple(image.shape[1:])).astype(np.float32)
        out[:, :, top:top + h, left:left + w] = encode(self.k, w, h)
        return out


def test_intrinsics_come_back_in_original_pixels_of_the_displayed_image(tmp_path):
    from PIL import Image

    # stored 160 x 120, EXIF orientation 6 (rotate 90 deg clockwise): displayed 120 x 160
    stored = np.zeros((120, 160, 3), np.uint8)
    stored[:, :80] = 255  # left half of the stored image = top half of the displayed one
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    k_orig = (150.0, 152.0, 52.0, 91.0)  # displayed pixels
    w, h = 48, 64  # 120 x 160 -> long side 64
    s = 64 / 160
    oracle = _Oracle((k_orig[0] * s, k_orig[1] * s, k_orig[2] * s, k_orig[3] * s), (w, h), (8, 0))
    result = dmcalib.calibrate_dmcalib(path, oracle, ensemble=3, processing_res=RES)
    assert (result.width, result.height) == (120, 160)
    np.testing.assert_allclose(result.params, k_orig, rtol=1e-3)
    assert result.confidence > 0.99 and result.extras["hfov_spread_deg"] < 0.01
    (padded,) = oracle.inputs
    assert padded.shape == (3, RES, RES)
    assert np.all(padded[:, :, :8] == 0) and np.all(padded[:, :, 56:] == 0)  # black side bars
    assert padded[:, 2:30, 10:54].mean() > 0.95 and padded[:, 34:62, 10:54].mean() < 0.05  # top half is white


def test_rounded_resize_is_undone_per_axis(tmp_path):
    import cv2

    path = tmp_path / "odd.png"  # 121 x 90 -> 64 x 48 (47.6 rounded): the two axes scale differently
    cv2.imwrite(str(path), np.full((90, 121, 3), 128, np.uint8))
    k_orig, (w, h) = (100.0, 100.0, 61.0, 44.0), (64, 48)
    oracle = _Oracle((k_orig[0] * w / 121, k_orig[1] * h / 90, k_orig[2] * w / 121, k_orig[3] * h / 90), (w, h), (0, 8))
    result = dmcalib.calibrate_dmcalib(path, oracle, ensemble=1, processing_res=RES)
    np.testing.assert_allclose(result.params, k_orig, rtol=1e-3)
    assert result.extras["work_size"] == [64, 48] and result.extras["padding"] == [0, 8, 0, 8]


# ---------------------------------------------------------------------------------------------- weights on disk

def _copy(tiny: Path, dest: Path) -> Path:
    shutil.copytree(tiny, dest)
    return dest


def _fake_hub_cache(cache: Path, repo_id: str, files_from: dict[str, Path]) -> Path:
    """A Hugging Face cache entry (refs/main -> snapshots/<commit>/) holding `files_from` (name -> folder)."""
    entry = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = entry / "snapshots" / commit
    for name, folder in files_from.items():
        shutil.copytree(folder, snapshot / name)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    return snapshot


def test_weights_from_the_hub_cache_with_a_separate_base(tiny, tmp_path):
    cache = tmp_path / "hub"
    snapshot = _fake_hub_cache(cache, "someone/dm-calib", {"calib/unet": tiny / "unet"})  # the release's layout
    base = _fake_hub_cache(cache, "someone/sd21",
                           {p: tiny / p for p in ("vae", "text_encoder", "tokenizer", "scheduler")})
    assert dmcalib.find_weights("someone/dm-calib", cache_dir=cache) == snapshot
    assert dmcalib.find_weights("someone/absent", cache_dir=cache) is None
    parts = dmcalib.resolve_components("someone/dm-calib", "someone/sd21", cache_dir=cache)
    assert parts["unet"] == snapshot / "calib" / "unet" and parts["vae"] == base / "vae"
    model = dmcalib.load_dmcalib("someone/dm-calib", base="someone/sd21", cache_dir=cache, device="cpu")
    assert model.unet.config.in_channels == 8 and model.source == str(snapshot / "calib")
    with pytest.raises(CalibrationError, match=r"vae/, text_encoder/, tokenizer/, scheduler/ not beside .*"
                                               r"someone/sd21 is not in the Hugging Face cache"):
        dmcalib.resolve_components(snapshot, "someone/sd21", cache_dir=tmp_path / "empty")


def test_missing_weights_name_what_is_missing(tmp_path):
    with pytest.raises(CalibrationError, match=r"someone/dm-calib is not in the Hugging Face cache"):
        dmcalib.resolve_components("someone/dm-calib", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    assert dmcalib.find_weights(tmp_path / "empty") is None
    with pytest.raises(CalibrationError, match=r"holding unet/ or calib/unet/"):
        dmcalib.load_dmcalib(tmp_path / "empty", device="cpu")


@pytest.mark.parametrize("damage, message", [
    (lambda w: (w / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
     r"unet at .* missing diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin"),
    (lambda w: (w / "tokenizer" / "merges.txt").unlink(),
     r"tokenizer at .* missing tokenizer.json or vocab.json \+ merges.txt"),
    (lambda w: (w / "scheduler" / "scheduler_config.json").unlink(), r"scheduler at .* missing scheduler_config.json"),
    (lambda w: (w / "vae" / "config.json").write_text("{not json"), r"cannot read .*vae/config.json"),
    (lambda w: _truncate(w / "unet" / "diffusion_pytorch_model.safetensors"), r"cannot load the UNet from .*unet"),
    (lambda w: _truncate(w / "text_encoder" / "model.safetensors"),
     r"cannot load the text encoder from .*text_encoder"),
])
def test_corrupt_weight_folders_give_clear_errors(tiny, tmp_path, damage, message):
    weights = _copy(tiny, tmp_path / "weights")
    damage(weights)
    with pytest.raises(CalibrationError, match=message):
        dmcalib.load_dmcalib(weights, base=tmp_path / "no-base", device="cpu")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_missing_base_parts_and_wrong_unet_are_named(tiny, tmp_path):
    weights = tmp_path / "only-unet"
    shutil.copytree(tiny / "unet", weights / "unet")
    with pytest.raises(CalibrationError, match=r"vae/, text_encoder/, tokenizer/, scheduler/ not beside .*"
                                               r"base model .*no-base.* was not found"):
        dmcalib.load_dmcalib(weights, base=tmp_path / "no-base", device="cpu")
    assert dmcalib.resolve_components(weights, base=tiny)["vae"] == tiny / "vae"  # a local base folder
    plain = tmp_path / "plain-sd"
    _tiny_parts(plain, unet_channels=4)
    with pytest.raises(CalibrationError, match=r"in_channels=4, expected 8 .*not DM-Calib weights"):
        dmcalib.load_dmcalib(plain, device="cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        dmcalib.load_dmcalib(tiny, device="cpu", precision="fp16")


def test_fp16_variant_weight_files_are_found(tiny, tmp_path):
    weights = _copy(tiny, tmp_path / "weights")
    unet = weights / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.fp16.safetensors")
    model = dmcalib.load_dmcalib(weights, device="cpu")
    reference = dmcalib.load_dmcalib(tiny, device="cpu")
    for (name, a), (_, b) in zip(model.unet.state_dict().items(), reference.unet.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name
