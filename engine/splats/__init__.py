"""Gaussian splats: the standard 3DGS .ply format, a differentiable renderer whose cameras are learnable
(focal, principal point, pose, lens distortion), and self-calibrating training.

Modules: `ply` (file format, numpy only), `sh` (spherical harmonics), `cameras` (learnable camera parameters,
model conversion), `project` (Gaussian projection through the camera model), `raster_torch` (compositor, any
device), `raster_gsplat` (CUDA compositor), `densify` (density control), `metrics` (loss, PSNR, SSIM), `train`
(training loop, checkpoints). Only `ply` is light; the others import torch.
"""
