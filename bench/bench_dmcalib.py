# SPDX-License-Identifier: GPL-3.0-or-later
"""DM-Calib speed, and the accuracy cost of fewer denoising steps (`python -m bench dmcalib`).

Always (CPU): encoding and decoding a 768 x 576 Camera Image, the decode being the pixel-residual RANSAC with 30%
outliers; one calibration decodes the merged image and each ensemble member (4 decodes for an ensemble of 3).

On a CUDA machine: seconds per image of the whole pipeline (`calibrate_dmcalib`: letterbox, VAE encode, DDIM
steps, VAE decode, decodes) in fp16 at 768 px with an ensemble of 3, for 20 steps (the reference setting) and
for 10, 5 and 2, plus the peak GPU memory. Networks: the DM-Calib weights named by UNPOSED_DMCALIB_WEIGHTS (a
folder or cached Hub id; UNPOSED_DMCALIB_BASE names the base model, see engine/calibrate/dmcalib.py) when set,
else randomly initialised networks of Stable Diffusion 2.1's sizes (the same compute; no accuracy then). With
real weights the accuracy cost of fewer steps is measured on the decoded intrinsics: the hFoV difference from the
20-step result, and the hFoV error against the truth for bench_calibrate's rendered rooms when their renders are
cached (out/bench_calibrate/*.json + .png; `python -m bench calibrate` makes them), else on synthetic textures
without truth.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from . import ROOT, Report, Row, median_time

STEPS = (20, 10, 5, 2)
ENSEMBLE = 3
RES = 768
MAX_IMAGES = 10
ROOMS = ROOT / "out" / "bench_calibrate"

# Stable Diffusion 2.1 (768, v-prediction) network shapes, from its published configs; the DM-Calib UNet is the
# same but for its 8 input channels.
SD21_UNET = dict(
    sample_size=96, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768)
SD21_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
TEXT_TOKENS, TEXT_DIM = 2, 1024  # the empty prompt's CLIP embedding: BOS + EOS


def _cpu_rows(report: Report) -> None:
    from engine.calibrate.camera_image import decode, encode

    k, w, h = (665.0, 660.0, 380.0, 300.0), 768, 576
    rng = np.random.default_rng(0)
    image = encode(k, w, h)
    bad = rng.random((h, w)) < 0.3
    image[:2, bad] = rng.uniform(-1, 1, (2, int(bad.sum())))
    report.rows.append(Row(f"encode a {w} x {h} camera image", median_time(lambda: encode(k, w, h), 5)))
    report.rows.append(Row(f"decode a {w} x {h} camera image (30% outliers)", median_time(lambda: decode(image), 5)))
    fit = decode(image)
    err = max(abs(g / t - 1) for g, t in zip(fit.intrinsics, k))
    report.notes.append(f"Decode: fx, fy, cx, cy within {err:.1e} relative of the truth with 30% of the pixels "
                        f"replaced by noise (inlier fraction {fit.inlier_ratio:.3f}). One calibration with an "
                        f"ensemble of {ENSEMBLE} decodes {ENSEMBLE + 1} camera images.")


def _random_model(device: str):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from engine.calibrate.dmcalib import DMCalibModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD21_UNET).half().eval()
        vae = AutoencoderKL(**SD21_VAE).half().eval()
        text = torch.randn(1, TEXT_TOKENS, TEXT_DIM, dtype=torch.float16) * 0.1
    return DMCalibModel(unet, vae, DDIMScheduler(**SD21_SCHEDULER), text, device,
                        "random weights of Stable Diffusion 2.1's sizes")


def _images() -> list[tuple[object, float | None]]:
    """(LoadedImage, true hFoV or None): cached room renders when present, else synthetic textures."""
    from engine.calibrate.image_io import ImageHeader, LoadedImage, load_image

    cases = []
    for meta in sorted(ROOMS.glob("case_*.json"))[:MAX_IMAGES]:
        if meta.with_suffix(".png").is_file():
            cases.append((load_image(meta.with_suffix(".png")), json.loads(meta.read_text())["hfov_deg"]))
    if cases:
        return cases
    import cv2

    rng = np.random.default_rng(0)
    for w, h in ((1024, 768), (768, 1024), (1280, 720)):
        rgb = cv2.resize(rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8), (w, h))
        cases.append((LoadedImage(ImageHeader(Path(f"synthetic_{w}x{h}"), w, h, w, h, 1), rgb), None))
    return cases


def _gpu_rows(report: Report) -> None:
    import torch

    from engine.calibrate.dmcalib import DEFAULT_BASE, calibrate_dmcalib, load_dmcalib
    from engine.calibrate.result import CalibrationError

    weights = os.environ.get("UNPOSED_DMCALIB_WEIGHTS")
    start = time.perf_counter()
    model = (load_dmcalib(weights, base=os.environ.get("UNPOSED_DMCALIB_BASE", DEFAULT_BASE), device="cuda")
             if weights else _random_model("cuda"))
    load_seconds = time.perf_counter() - start
    images = _images()
    calibrate_dmcalib(images[0][0], model, steps=2, ensemble=ENSEMBLE, processing_res=RES)  # warm-up
    torch.cuda.reset_peak_memory_stats()
    hfov: dict[int, list[float | None]] = {}
    for steps in STEPS:
        times, hfov[steps] = [], []
        for loaded, _ in images:
            t0 = time.perf_counter()
            try:
                result = calibrate_dmcalib(loaded, model, steps=steps, ensemble=ENSEMBLE, processing_res=RES)
                hfov[steps].append(result.hfov_deg)
            except CalibrationError:  # random networks may paint nothing decodable: the time still counts
                hfov[steps].append(None)
            times.append(time.perf_counter() - t0)
        report.rows.append(Row(f"pipeline, GPU fp16, {RES} px, {steps} steps x ensemble {ENSEMBLE}",
                               statistics.median(times)))
    gpu = torch.cuda.get_device_name()
    report.notes.append(f"GPU: {gpu}; networks: {model.source}; loading them took {load_seconds:.1f} s; peak GPU "
                        f"memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; {len(images)} images, median "
                        f"seconds per image.")
    if not weights:
        report.notes.append("Random networks: speed only; set UNPOSED_DMCALIB_WEIGHTS for the accuracy cost of "
                            "fewer steps.")
        return
    for steps in STEPS[1:]:
        diffs = [abs(a - b) for a, b in zip(hfov[steps], hfov[STEPS[0]]) if a is not None and b is not None]
        line = f"{steps} steps: hFoV differs from {STEPS[0]} steps' by median {_median(diffs)} deg"
        truth = [abs(a - t) for a, (_, t) in zip(hfov[steps], images) if a is not None and t is not None]
        if truth:
            line += f"; hFoV error against the truth median {_median(truth)} deg"
        report.notes.append(line)
    truth = [abs(a - t) for a, (_, t) in zip(hfov[STEPS[0]], images) if a is not None and t is not None]
    if truth:
        report.notes.append(f"{STEPS[0]} steps: hFoV error against the truth median {_median(truth)} deg "
                            f"(rendered rooms, bench_calibrate).")


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "n/a"


def run() -> Report:
    report = Report("DM-Calib camera-image decode (CPU) and diffusion pipeline (GPU, when present)")
    _cpu_rows(report)
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        _gpu_rows(report)
    else:
        report.notes.append("No CUDA device here: the diffusion pipeline was not timed (run `python -m bench "
                            "dmcalib` on a GPU machine; see this module's doc).")
    return report
