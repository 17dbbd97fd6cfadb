"""The pointmap network: a ViT encoder shared by both images and two cross-attending ViT decoders.

Architecture and parameter names follow DUSt3R / CroCo v2 (Wang et al. 2024, sec. 3.2; Weinzaepfel et al. 2023)
so an official state dict loads by name. Pre-norm transformer blocks (LayerNorm eps 1e-6, exact GELU), 2D RoPE
on queries and keys, attention through `scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).
Each image is encoded once (`encode`); a pair's two token sets then run through `dec_blocks` (view 1) and
`dec_blocks2` (view 2) in lockstep, each layer of one side attending to the previous layer of the other.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .config import PointmapConfig
from .heads import Mlp, make_head
from .rope import Rope2D, RopeCache

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C/heads)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, D) -> (B, N, heads*D)."""
    return x.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Rope2D) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(rope.apply(q), rope.apply(k), v)
        return self.proj(_merge(out))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, rope_x: Rope2D, rope_mem: Rope2D) -> torch.Tensor:
        q = rope_x.apply(_heads(self.projq(x), self.n_heads))
        k = rope_mem.apply(_heads(self.projk(mem), self.n_heads))
        v = _heads(self.projv(mem), self.n_heads)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, rope: Rope2D) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, norm_mem: bool) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads)
        self.cross_attn = CrossAttention(dim, n_heads)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        self.norm_y = LayerNorm(dim) if norm_mem else nn.Identity()

    def forward(self, x: torch.Tensor, mem: torch.Tensor, rope_x: Rope2D, rope_mem: Rope2D) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope_x)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(mem), rope_x, rope_mem)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.proj(img).flatten(2).transpose(1, 2)  # (B, rows*cols, dim), row-major


Shape = tuple[int, int]


class PointmapNet(nn.Module):
    """DUSt3R (linear or DPT head) or MASt3R (pointmap + local features) network for image pairs.

    `forward(img1, img2)` mirrors the reference's forward pass: images (B, 3, H, W) in [-1, 1] with H and W
    multiples of the patch size; returns two dicts with 'pts3d' (B, H, W, 3, both in view 1's frame), 'conf'
    (B, H, W) and, for MASt3R, 'desc' (B, H, W, D) and 'desc_conf'. Inference code calls `encode` once per
    image and `decode_pairs` per batch of pairs instead.
    """

    def __init__(self, config: PointmapConfig) -> None:
        super().__init__()
        c = self.config = config
        self.patch_embed = PatchEmbed(c.patch_size, c.enc_embed_dim)
        self.enc_blocks = nn.ModuleList(EncoderBlock(c.enc_embed_dim, c.enc_num_heads, c.mlp_ratio)
                                        for _ in range(c.enc_depth))
        self.enc_norm = LayerNorm(c.enc_embed_dim)
        self.decoder_embed = nn.Linear(c.enc_embed_dim, c.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio, c.norm_im2_in_dec)
                                        for _ in range(c.dec_depth))
        self.dec_blocks2 = nn.ModuleList(DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio,
                                                      c.norm_im2_in_dec) for _ in range(c.dec_depth))
        self.dec_norm = LayerNorm(c.dec_embed_dim)
        self.downstream_head1 = make_head(c)
        self.downstream_head2 = make_head(c)
        self._rope = RopeCache(c.rope_freq)
        # Decoder layers the heads read: 0 is the encoder output, L the (normalised) last decoder layer.
        self.head_layers = tuple(sorted(set(self.downstream_head1.layers)))

    def rope(self, shape: Shape, n_heads: int, dim: int, device: torch.device) -> Rope2D:
        p = self.config.patch_size
        return self._rope.get(shape[0] // p, shape[1] // p, dim // n_heads, device)

    def check_shape(self, img: torch.Tensor) -> None:
        p = self.config.patch_size
        if img.ndim != 4 or img.shape[1] != 3 or img.shape[2] % p or img.shape[3] % p:
            raise ValueError(f"images must be (B, 3, H, W) with H and W multiples of {p}, got {tuple(img.shape)}")

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, H/p * W/p, enc_dim) encoder tokens (after enc_norm)."""
        self.check_shape(img)
        c = self.config
        rope = self.rope(tuple(img.shape[-2:]), c.enc_num_heads, c.enc_embed_dim, img.device)
        x = self.patch_embed(img)
        for blk in self.enc_blocks:
            x = blk(x, rope)
        return self.enc_norm(x)

    def decode(self, feat1: torch.Tensor, feat2: torch.Tensor, shape1: Shape, shape2: Shape
               ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Both decoders on encoder tokens; returns {layer: tokens} per view for the layers the heads read."""
        c = self.config
        rope1 = self.rope(shape1, c.dec_num_heads, c.dec_embed_dim, feat1.device)
        rope2 = self.rope(shape2, c.dec_num_heads, c.dec_embed_dim, feat2.device)
        keep = self.head_layers
        out1 = {0: feat1} if 0 in keep else {}
        out2 = {0: feat2} if 0 in keep else {}
        f1, f2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        for layer, (blk1, blk2) in enumerate(zip(self.dec_blocks, self.dec_blocks2), start=1):
            f1, f2 = blk1(f1, f2, rope1, rope2), blk2(f2, f1, rope2, rope1)
            if layer == c.dec_depth:
                f1, f2 = self.dec_norm(f1), self.dec_norm(f2)
            if layer in keep:
                out1[layer], out2[layer] = f1, f2
        return out1, out2

    def heads(self, dec1: dict[int, torch.Tensor], dec2: dict[int, torch.Tensor], shape1: Shape, shape2: Shape
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Regression heads in float32 (autocast off, as the reference does)."""
        device_type = next(iter(dec1.values())).device.type
        with torch.autocast(device_type, enabled=False):
            res1 = self.downstream_head1({k: v.float() for k, v in dec1.items()}, shape1)
            res2 = self.downstream_head2({k: v.float() for k, v in dec2.items()}, shape2)
        return res1, res2

    def decode_pairs(self, feat1: torch.Tensor, feat2: torch.Tensor, shape1: Shape, shape2: Shape
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Decoders + heads for a batch of pairs whose encoder tokens are already computed."""
        dec1, dec2 = self.decode(feat1, feat2, shape1, shape2)
        return self.heads(dec1, dec2, shape1, shape2)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        shape1, shape2 = tuple(img1.shape[-2:]), tuple(img2.shape[-2:])
        if shape1 == shape2:
            feat1, feat2 = self.encode(torch.cat((img1, img2))).chunk(2)
        else:
            feat1, feat2 = self.encode(img1), self.encode(img2)
        return self.decode_pairs(feat1, feat2, shape1, shape2)


def parameter_shapes(config: PointmapConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name of the network for `config` and its shape (built on the meta device, no memory)."""
    with torch.device("meta"):
        net = PointmapNet(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def build(config: PointmapConfig, state: dict[str, torch.Tensor] | None = None,
          device: str | torch.device = "cpu") -> PointmapNet:
    """A network in eval mode on `device`; with `state`, its weights (names and shapes already checked)."""
    if state is None:
        return PointmapNet(config).to(device).eval()
    with torch.device("meta"):
        net = PointmapNet(config)
    net.load_state_dict(state, strict=True, assign=True)
    return net.to(device).eval()

