# SPDX-License-Identifier: GPL-3.0-or-later
"""DM-Calib: the intrinsics of one photo from a diffusion model that paints its Camera Image (`camera_image`).

Re-implemented from Deng et al. 2024 (arXiv 2411.17240) and its inference code (JunyuanDeng/DM-Calib):
  1. The photo, as displayed (EXIF orientation applied by `image_io`), is resized so its long side is
     `processing_res` (768) and zero-padded (black) symmetrically to a square; pixels are mapped to [-1, 1].
  2. A Stable-Diffusion-2.1-style latent diffusion model generates the Camera Image: the UNet takes 8 channels,
     the noisy latent and 0.18215 x the VAE's mode latent of the photo; the text condition is the CLIP embedding
     of the empty prompt (just its BOS and EOS tokens, unpadded, as the reference encodes it); DDIM with
     v-prediction, no classifier-free guidance, `steps` steps; `ensemble` samples from independent noise run as
     one batch.
  3. The samples are decoded by the VAE and merged by a per-pixel median (the reference takes the mean; the median
     keeps one diverged sample from bending the result), the padding is cropped off, and fx, fy, cx, cy are fitted
     in the resized frame by the pixel-residual RANSAC of `camera_image.decode`, then scaled back to the original
     pixels (a pure per-axis scale, pixel centres being at +0.5).
Confidence = (the smaller of the two axes' inlier fractions: how much of the output is one consistent pinhole
camera) x (ensemble agreement 1 / (1 + (spread / SPREAD_DEG)^2), spread being the largest difference between a
single sample's hFoV and the merged one). Output that is not a Camera Image (wrong or untrained weights) has few
inliers, so it gets a low confidence rather than a confident wrong answer.

Weights (diffusers layout; the user downloads them, nothing is fetched here): `weights` is a local folder or a
Hugging Face Hub id read from the local Hub cache only. Its UNet is `unet/` or `calib/unet/` (the DM-Calib
release, juneyoung9/DM-Calib, keeps it in calib/unet). `vae/`, `text_encoder/`, `tokenizer/` and `scheduler/`
are taken from beside that UNet when present, else from the `base` model (folder or Hub id), by default
stabilityai/stable-diffusion-2-1 as the reference uses; that repository was withdrawn from the Hub, so any copy of
it (or of its vae/, text_encoder/, tokenizer/, scheduler/ folders) can be named instead. The scheduler is always
DDIM with v-prediction. Models run in fp16 on CUDA and fp32 on CPU unless `precision` says otherwise.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import Progress
from .camera_image import CameraImageFit, decode
from .image_io import LoadedImage, load_image
from .result import CalibrationError, CalibrationResult, field_of_view_deg

DEFAULT_WEIGHTS = "juneyoung9/DM-Calib"
DEFAULT_BASE = "stabilityai/stable-diffusion-2-1"
PROCESSING_RES = 768
STEPS = 20
ENSEMBLE = 3
IMAGE_LATENT_SCALE = 0.18215  # the reference scales the image latent by SD's constant, not the VAE config's
SPREAD_DEG = 5.0  # ensemble hFoV spread that halves the confidence
MIN_SIDE = 32  # smaller photos are refused
PRECISIONS = ("auto", "fp16", "fp32")

# Component folders of the diffusers layout: the files each needs (any one of each tuple).
_WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}
_OTHER_FILES = {
    "tokenizer": (("tokenizer.json",), ("vocab.json", "merges.txt")),  # either layout
    "scheduler": (("scheduler_config.json",),),
}
_BASE_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")


# ---------------------------------------------------------------------------------------------- finding weights

def _unet_folder(root: Path) -> Path | None:
    for candidate in (root / "unet", root / "calib" / "unet"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def _is_repo_id(spec: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", spec) is not None


def _hub_snapshot(repo_id: str, cache_dir: str | os.PathLike | None) -> Path | None:
    """The locally cached snapshot folder of a Hub repository (never downloads), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _hub_cache_dir(cache_dir: str | os.PathLike | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)


def _local_or_cached(spec: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path | None:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if not path.exists() and _is_repo_id(str(spec)):
        return _hub_snapshot(str(spec), cache_dir)
    return None


def find_weights(spec: str | os.PathLike = DEFAULT_WEIGHTS, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding DM-Calib's UNet (as `unet/` or `calib/unet/`) named by `spec`, a local folder or a Hub
    id present in the local Hugging Face cache (`cache_dir`, default huggingface_hub's); None when absent."""
    root = _local_or_cached(spec, cache_dir)
    return root if root is not None and _unet_folder(root) is not None else None


def _missing_files(part: str, folder: Path) -> list[str]:
    """The files `folder` lacks to be the component `part` ([] when complete)."""
    if part in _WEIGHT_FILES:
        missing = [] if (folder / "config.json").is_file() else ["config.json"]
        if _weight_variant(part, folder) is None:
            missing.append(" or ".join(_WEIGHT_FILES[part]))
        return missing
    layouts = _OTHER_FILES[part]
    if any(all((folder / f).is_file() for f in layout) for layout in layouts):
        return []
    return [" or ".join(" + ".join(layout) for layout in layouts)]


def _weight_variant(part: str, folder: Path) -> str | None:
    """"" when `folder` has the standard weight file of `part`, "fp16" when only the fp16 variant
    (e.g. diffusion_pytorch_model.fp16.safetensors), None when neither."""
    for variant in ("", "fp16"):
        for name in _WEIGHT_FILES[part]:
            stem, ext = name.rsplit(".", 1)
            if (folder / (f"{stem}.{variant}.{ext}" if variant else name)).is_file():
                return variant
    return None


def resolve_components(weights: str | os.PathLike = DEFAULT_WEIGHTS, base: str | os.PathLike = DEFAULT_BASE,
                       cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Folder of each component (unet, vae, text_encoder, tokenizer, scheduler), every one checked for the files
    it needs; CalibrationError naming what is missing and where it was looked for."""
    root = find_weights(weights, cache_dir)
    if root is None:
        where = f"no folder {str(weights)!r} holding unet/ or calib/unet/ (with config.json)"
        if _is_repo_id(str(weights)) and not Path(weights).expanduser().exists():
            where += (f", and the Hub repository {weights} is not in the Hugging Face cache "
                      f"({_hub_cache_dir(cache_dir)}); download it once, e.g. `hf download {weights}`")
        raise CalibrationError(f"DM-Calib weights not found: {where}")
    unet = _unet_folder(root)
    parts = {"unet": unet}
    for part in _BASE_PARTS:
        for folder in (unet.parent / part, root / part):
            if folder.is_dir():
                parts[part] = folder
                break
    lacking = [p for p in _BASE_PARTS if p not in parts]
    if lacking:
        base_root = _local_or_cached(base, cache_dir)
        if base_root is None:
            hint = (f"; the Hub repository {base} is not in the Hugging Face cache ({_hub_cache_dir(cache_dir)})"
                    if _is_repo_id(str(base)) else "")
            raise CalibrationError(
                f"DM-Calib weights {root}: {', '.join(p + '/' for p in lacking)} not beside {unet} and the base model "
                f"{str(base)!r} was not found{hint}; name a local copy of Stable Diffusion 2.1 (or of those "
                f"folders) as the base model")
        for part in lacking:
            if not (base_root / part).is_dir():
                raise CalibrationError(f"DM-Calib base model {base_root} has no {part}/ folder (needed: "
                                       f"{', '.join(p + '/' for p in lacking)})")
            parts[part] = base_root / part
    for part, folder in parts.items():
        missing = _missing_files(part, folder)
        if missing:
            raise CalibrationError(f"DM-Calib {part} at {folder} is incomplete: missing {', '.join(missing)}")
    return parts


# ---------------------------------------------------------------------------------------------- loading

def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"DM-Calib: cannot read {path} ({exc})") from None
    if not isinstance(config, dict):
        raise CalibrationError(f"DM-Calib: {path} is not a JSON object")
    return config


def _check_shapes(parts: dict[str, Path]) -> None:
    """The UNet must take [noisy latent, image latent] and attend to the text encoder's states."""
    unet, vae, text = (_read_config(parts[p] / "config.json") for p in ("unet", "vae", "text_encoder"))
    latent = vae.get("latent_channels", 4)
    checks = [("in_channels", unet.get("in_channels"), 2 * latent,
               "noisy latent + image latent; a plain Stable Diffusion UNet takes 4: these are not DM-Calib weights"),
              ("out_channels", unet.get("out_channels"), latent, "the VAE's latent channels"),
              ("cross_attention_dim", unet.get("cross_attention_dim"), text.get("hidden_size"),
               "the text encoder's hidden_size")]
    for field, got, want, why in checks:
        if got != want:
            raise CalibrationError(f"DM-Calib: {parts['unet'] / 'config.json'} has {field}={got}, expected {want} "
                                   f"({why})")


def _load(part: str, folder: Path, loader, **kwargs):
    try:
        return loader(folder, **kwargs)
    except Exception as exc:  # noqa: BLE001 - diffusers/transformers/safetensors raise many types for bad files
        raise CalibrationError(f"DM-Calib: cannot load the {part} from {folder}: {type(exc).__name__}: {exc}") from None


def _pick_device(device: str) -> str:
    from ..pointmap.infer import pick_device

    return pick_device(device)


@dataclass
class DMCalibModel:
    """The loaded networks. `prompt_embedding` is the text condition, (1, tokens, dim) on `device`."""
    unet: Any
    vae: Any
    scheduler: Any
    prompt_embedding: Any
    device: str
    source: str  # where the weights came from, for reports

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def size_multiple(self) -> int:
        """Input sizes must be multiples of this: the VAE's and the UNet's downsampling together."""
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def sample(self, image, steps: int, ensemble: int, seed: int = 0, progress: Progress | None = None) -> np.ndarray:
        """`ensemble` camera images ((M, 3, S, S) float32, [-1, 1]) for one padded photo ((3, S, S) tensor in
        [0, 1]), denoised in `steps` DDIM steps from noise drawn with `seed`."""
        import torch

        s = image.shape[-1]
        if s % self.size_multiple:
            raise ValueError(f"DM-Calib: input size {s} is not a multiple of {self.size_multiple}")
        with torch.inference_mode():
            x = (image[None] * 2.0 - 1.0).to(self.device, self.dtype)
            condition = self.vae.encode(x).latent_dist.mode() * IMAGE_LATENT_SCALE
            condition = condition.expand(ensemble, -1, -1, -1)
            text = self.prompt_embedding.expand(ensemble, -1, -1)
            generator = torch.Generator("cpu").manual_seed(seed)
            latents = torch.randn((ensemble,) + tuple(condition.shape[1:]), generator=generator)
            latents = latents.to(self.device) * self.scheduler.init_noise_sigma  # float32 between steps
            self.scheduler.set_timesteps(steps, device=self.device)
            if progress is not None:
                progress.stage("DM-Calib: denoising", total=len(self.scheduler.timesteps))
            for t in self.scheduler.timesteps:
                noisy = self.scheduler.scale_model_input(latents, t).to(self.dtype)
                v = self.unet(torch.cat([noisy, condition], dim=1), t, encoder_hidden_states=text).sample
                latents = self.scheduler.step(v.float(), t, latents).prev_sample
                if progress is not None:
                    progress.advance()
            decoded = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample
            return decoded.float().clamp_(-1.0, 1.0).cpu().numpy()


def load_dmcalib(weights: str | os.PathLike = DEFAULT_WEIGHTS, *, base: str | os.PathLike = DEFAULT_BASE,
                 device: str = "auto", precision: str = "auto", cache_dir: str | os.PathLike | None = None,
                 progress: Progress | None = None) -> DMCalibModel:
    """Load DM-Calib (see the module doc for the layout) onto `device` ("auto": CUDA when available) in
    `precision` ("auto": fp16 on CUDA, fp32 on CPU). CalibrationError for missing or unreadable weights."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"DM-Calib precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = _pick_device(device)
    cuda = device.startswith("cuda")
    if precision == "fp16" and not cuda:
        raise ValueError(f"DM-Calib: fp16 needs a CUDA device, got {device!r}")
    dtype = torch.float16 if precision == "fp16" or (precision == "auto" and cuda) else torch.float32
    if progress is not None:
        progress.stage("DM-Calib: loading weights")
    parts = resolve_components(weights, base, cache_dir)
    _check_shapes(parts)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # the engine reports progress itself
    transformers_logging.disable_progress_bar()

    def variant(part: str) -> str | None:
        return _weight_variant(part, parts[part]) or None

    tokenizer = _load("tokenizer", parts["tokenizer"], CLIPTokenizer.from_pretrained)
    text_encoder = _load("text encoder", parts["text_encoder"], CLIPTextModel.from_pretrained,
                         variant=variant("text_encoder"))  # float32 on the CPU: it runs once
    with torch.inference_mode():
        ids = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
        embedding = text_encoder(ids)[0].to(device, dtype)
    del text_encoder  # only the empty prompt's embedding is needed
    scheduler = _load("scheduler", parts["scheduler"], lambda folder: DDIMScheduler.from_config(
        DDIMScheduler.load_config(folder), prediction_type="v_prediction"))
    vae = _load("VAE", parts["vae"], AutoencoderKL.from_pretrained, torch_dtype=dtype, variant=variant("vae"))
    unet = _load("UNet", parts["unet"], UNet2DConditionModel.from_pretrained, torch_dtype=dtype,
                 variant=variant("unet"))
    vae, unet = vae.to(device).eval(), unet.to(device).eval()
    return DMCalibModel(unet, vae, scheduler, embedding, device, str(parts["unet"].parent))


# ---------------------------------------------------------------------------------------------- calibration

def letterbox(loaded: LoadedImage, size: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """The photo resized so its long side is `size` and zero-padded to size x size: ((3, size, size) float32 in
    [0, 1], (width, height) of the resized photo, (left, top) padding)."""
    import cv2

    s = size / max(loaded.width, loaded.height)
    w, h = max(1, round(loaded.width * s)), max(1, round(loaded.height * s))
    rgb = loaded.rgb
    if rgb.shape[:2] != (h, w):
        shrink = rgb.shape[1] > w
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    left, top = (size - w) // 2, (size - h) // 2
    out = np.zeros((3, size, size), np.float32)
    out[:, top:top + h, left:left + w] = rgb.transpose(2, 0, 1) / np.float32(255.0)
    return out, (w, h), (left, top)


def calibrate_dmcalib(image: str | os.PathLike | LoadedImage,
                      weights: str | os.PathLike | DMCalibModel = DEFAULT_WEIGHTS, progress: Progress | None = None,
                      *, base: str | os.PathLike = DEFAULT_BASE, steps: int = STEPS, ensemble: int = ENSEMBLE,
                      processing_res: int = PROCESSING_RES, seed: int = 0, device: str = "auto",
                      precision: str = "auto", cache_dir: str | os.PathLike | None = None,
                      threshold_px: float | None = None) -> CalibrationResult:
    """Calibrate one photo with DM-Calib. `weights` is a spec (see the module doc) or a model from `load_dmcalib`
    (load once for many photos). threshold_px: RANSAC inlier distance in pixels of the resized frame (default
    `camera_image.THRESHOLD` x processing_res). CalibrationError for unreadable photos, missing weights or output
    from which no camera can be decoded."""
    import torch

    if steps < 1 or ensemble < 1:
        raise ValueError(f"DM-Calib needs steps >= 1 and ensemble >= 1, got steps={steps}, ensemble={ensemble}")
    loaded = image if isinstance(image, LoadedImage) else load_image(image, max_side=processing_res)
    path = loaded.header.path
    if min(loaded.width, loaded.height) < MIN_SIDE:
        raise CalibrationError(f"{path}: image is {loaded.width}x{loaded.height} px, too small for DM-Calib "
                               f"(needs at least {MIN_SIDE} px per side)")
    model = weights if isinstance(weights, DMCalibModel) else load_dmcalib(
        weights, base=base, device=device, precision=precision, cache_dir=cache_dir, progress=progress)
    if processing_res % model.size_multiple:
        raise ValueError(f"DM-Calib processing_res must be a multiple of {model.size_multiple}, got {processing_res}")
    padded, (w, h), (left, top) = letterbox(loaded, processing_res)
    if min(w, h) < model.size_multiple:
        raise CalibrationError(f"{path}: a {loaded.width}x{loaded.height} image is too elongated for DM-Calib (its "
                               f"short side would be {min(w, h)} px at {processing_res} px)")
    start = time.perf_counter()
    samples = model.sample(torch.from_numpy(padded), steps, ensemble, seed, progress)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress.stage("DM-Calib: decoding the camera image")
    crops = samples[:, :, top:top + h, left:left + w]
    try:
        fit = decode(np.median(crops, axis=0), threshold_px=threshold_px, seed=seed)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: DM-Calib output is not a camera image ({exc}); are these DM-Calib's "
                               f"weights?") from None
    hfov = field_of_view_deg(fit.u.focal, fit.u.centre, w)
    members = [_member_hfov(crop, fit.threshold_px, seed) for crop in crops] if ensemble > 1 else [hfov]
    spread = max(abs(m - hfov) for m in members)
    agreement = 1.0 / (1.0 + (spread / SPREAD_DEG) ** 2)
    confidence = min(1.0, max(0.0, fit.inlier_ratio * agreement))
    reason = (f"DM-Calib ({model.source}): {ensemble} sample(s) x {steps} DDIM steps at {processing_res} px; "
              f"{100 * fit.u.inliers:.0f}% / {100 * fit.v.inliers:.0f}% of pixels fit one pinhole camera (u / v)")
    if ensemble > 1:
        reason += f"; the samples' hFoV spread is {spread:.1f} deg"
    if fit.inlier_ratio < 0.5:
        reason += "; the output is mostly not a camera image (wrong or untrained weights?)"
    sx, sy = w / loaded.width, h / loaded.height
    fx, fy, cx, cy = fit.u.focal / sx, fit.v.focal / sy, fit.u.centre / sx, fit.v.centre / sy
    extras = {"weights": model.source, "steps": steps, "ensemble": ensemble, "seed": seed,
              "processing_res": processing_res, "work_size": [w, h],
              "padding": [left, top, processing_res - w - left, processing_res - h - top],
              "inlier_fraction": {"u": fit.u.inliers, "v": fit.v.inliers},
              "rms_px": {"u": fit.u.rms_px / sx, "v": fit.v.rms_px / sy},
              "member_hfov_deg": members, "hfov_spread_deg": spread,
              "device": model.device, "dtype": str(model.dtype).replace("torch.", ""), "seconds": seconds}
    return CalibrationResult.pinhole(fx, fy, cx, cy, loaded.width, loaded.height, method="dmcalib",
                                     confidence=confidence, reason=reason, extras=extras)


def _member_hfov(crop: np.ndarray, threshold_px: float, seed: int) -> float:
    """hFoV (degrees) decoded from one ensemble member alone; inf when it holds no camera image."""
    try:
        fit: CameraImageFit = decode(crop, threshold_px=threshold_px, seed=seed)
    except CalibrationError:
        return math.inf
    return field_of_view_deg(fit.u.focal, fit.u.centre, crop.shape[2])
