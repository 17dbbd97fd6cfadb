"""Regression heads of the pointmap network: linear, DPT, and MASt3R's DPT + local-feature MLP.

Each head reads decoder tokens ({layer: (B, N, C)}, layer 0 being the encoder output) for images of one shape
and returns per-pixel maps: 'pts3d' (B, H, W, 3), 'conf' (B, H, W) and for MASt3R 'desc' (B, H, W, D) and
'desc_conf'. Module and parameter names match the official checkpoints (`downstream_head1.dpt.scratch...`).

DPT (Ranftl et al. 2021, "Vision Transformers for Dense Prediction", sec. 3): four token layers are reassembled
into image-like maps at 1/4, 1/8, 1/16 and 1/32 of the input (project + transposed conv / strided conv), brought
to 256 channels, fused coarse-to-fine by residual conv units with 2x bilinear upsampling, and a small conv head
upsamples to full resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PointmapConfig

FEATURE_DIM = 256  # DPT fusion width in every official head
LAYER_DIMS = (96, 192, 384, 768)  # DPT reassemble widths (CroCo's DPTOutputAdapter defaults)


def make_head(config: PointmapConfig) -> nn.Module:
    if config.head_type == "linear":
        return LinearHead(config)
    if config.head_type == "dpt":
        return DPTHead(config)
    return LocalFeatureHead(config)  # "catmlp+dpt" (config validation admits nothing else)


def reg_depth(xyz: torch.Tensor, mode: tuple[str, float, float]) -> torch.Tensor:
    """Raw 3-vectors to points: 'exp' keeps the direction and maps length d to expm1(d) (DUSt3R sec. 3.2)."""
    if mode[0] == "linear":
        return xyz
    d = xyz.norm(dim=-1, keepdim=True)
    xyz = xyz / d.clip(min=1e-8)
    return xyz * (d.square() if mode[0] == "square" else torch.expm1(d))


def reg_conf(x: torch.Tensor, mode: tuple[str, float, float]) -> torch.Tensor:
    """Raw confidence to [vmin, vmax]: 'exp' gives vmin + exp(x) (DUSt3R eq. 4 uses 1 + exp)."""
    name, vmin, vmax = mode
    if name == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    return (vmax - vmin) * torch.sigmoid(x) + vmin


def postprocess(out: torch.Tensor, config: PointmapConfig) -> dict[str, torch.Tensor]:
    """(B, C, H, W) head output -> named per-pixel maps, channels [xyz, conf, desc..., desc_conf]."""
    fmap = out.permute(0, 2, 3, 1)
    res = {"pts3d": reg_depth(fmap[..., 0:3], config.depth_mode)}
    if config.conf_mode is not None:
        res["conf"] = reg_conf(fmap[..., 3], config.conf_mode)
    if config.desc_dim is not None:
        start = 3 + int(config.conf_mode is not None)
        desc = fmap[..., start:start + config.desc_dim]
        res["desc"] = desc / desc.norm(dim=-1, keepdim=True)
        if config.two_confs:
            res["desc_conf"] = reg_conf(fmap[..., start + config.desc_dim], config.desc_conf_mode)
        else:
            res["desc_conf"] = res["conf"].clone()
    return res


def _unpatchify(tokens: torch.Tensor, shape: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, rows*cols, patch*patch*C) per-token pixel blocks -> (B, C, H, W)."""
    b = tokens.shape[0]
    grid = tokens.transpose(-1, -2).reshape(b, -1, shape[0] // patch, shape[1] // patch)
    return F.pixel_shuffle(grid, patch)


class LinearHead(nn.Module):
    """Each last-layer token predicts its patch's pixels directly (DUSt3R's `LinearPts3d`)."""

    def __init__(self, config: PointmapConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = (config.dec_depth,)
        self.proj = nn.Linear(config.dec_embed_dim, (3 + int(config.has_conf)) * config.patch_size ** 2)

    def forward(self, dec: dict[int, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        out = _unpatchify(self.proj(dec[self.config.dec_depth]), shape, self.config.patch_size)
        return postprocess(out, self.config)


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPT(nn.Module):
    """The DPT adapter (CroCo's `DPTOutputAdapter` as DUSt3R uses it): four token layers -> (B, C, H, W)."""

    def __init__(self, hooks: tuple[int, ...], token_dims: tuple[int, ...], num_channels: int, patch: int) -> None:
        super().__init__()
        self.hooks = hooks
        self.patch = patch
        d = LAYER_DIMS
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(token_dims[0], d[0], 1), nn.ConvTranspose2d(d[0], d[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(token_dims[1], d[1], 1), nn.ConvTranspose2d(d[1], d[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(token_dims[2], d[2], 1)),
            nn.Sequential(nn.Conv2d(token_dims[3], d[3], 1), nn.Conv2d(d[3], d[3], 3, stride=2, padding=1)),
        ])
        self.scratch = nn.Module()
        self.scratch.layer_rn = nn.ModuleList(nn.Conv2d(dim, FEATURE_DIM, 3, padding=1, bias=False) for dim in d)
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(FEATURE_DIM))
        last = FEATURE_DIM // 2
        self.head = nn.Sequential(
            nn.Conv2d(FEATURE_DIM, FEATURE_DIM // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(FEATURE_DIM // 2, last, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last, num_channels, 1),
        )

    def forward(self, dec: dict[int, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        rows, cols = shape[0] // self.patch, shape[1] // self.patch
        maps = []
        for i, hook in enumerate(self.hooks):
            tokens = dec[hook]
            grid = tokens.transpose(-1, -2).reshape(tokens.shape[0], -1, rows, cols)
            maps.append(self.scratch.layer_rn[i](self.act_postprocess[i](grid)))
        s = self.scratch
        # The 1/32 map is ceil(rows/2) tall: after its 2x upsampling, crop to the 1/16 map's size.
        path = s.refinenet4(maps[3])[:, :, :maps[2].shape[2], :maps[2].shape[3]]
        path = s.refinenet3(path, maps[2])
        path = s.refinenet2(path, maps[1])
        path = s.refinenet1(path, maps[0])
        return self.head(path)


class DPTHead(nn.Module):
    """DUSt3R's DPT head: hooks on the encoder output and decoder layers L/2, 3L/4, L."""

    def __init__(self, config: PointmapConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = config.dpt_hooks
        dims = (config.enc_embed_dim,) + (config.dec_embed_dim,) * 3
        self.dpt = DPT(config.dpt_hooks, dims, 3 + int(config.has_conf), config.patch_size)

    def forward(self, dec: dict[int, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        return postprocess(self.dpt(dec, shape), self.config)


class LocalFeatureHead(DPTHead):
    """MASt3R's head: DPT for points + an MLP on [encoder, last decoder] tokens for local features
    (Leroy et al. 2024, "Grounding Image Matching in 3D with MASt3R", sec. 3.2)."""

    def __init__(self, config: PointmapConfig) -> None:
        super().__init__(config)
        self.layers = tuple(sorted(set(config.dpt_hooks) | {0, config.dec_depth}))
        idim = config.enc_embed_dim + config.dec_embed_dim
        out = (config.desc_dim + int(config.two_confs)) * config.patch_size ** 2
        self.head_local_features = Mlp(idim, int(4.0 * idim), out)

    def forward(self, dec: dict[int, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        pts = self.dpt(dec, shape)
        cat = torch.cat([dec[0], dec[self.config.dec_depth]], dim=-1)
        local = _unpatchify(self.head_local_features(cat), shape, self.config.patch_size)
        return postprocess(torch.cat([pts, local], dim=1), self.config)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
