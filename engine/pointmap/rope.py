"""2D rotary position embedding (RoPE) as CroCo v2 / DUSt3R define it.

Each attention head's channels are split in two halves: the first half is rotated by the patch's row (y), the
second by its column (x). Within a half of width h, channel c and c + h/2 form a rotated pair ("rotate-half"
pairing) with angle pos * base^(-2k/h), k = c mod h/2 (Su et al., RoFormer, eq. 34, applied per axis).
Positions are integer patch coordinates, identical for every image of a given token grid, so one cos/sin
table per (grid, head width) serves the whole batch.
"""
from __future__ import annotations

import torch


class Rope2D:
    """Precomputed cos/sin for a token grid; `apply(t)` rotates q or k of shape (B, heads, rows*cols, D)."""

    def __init__(self, rows: int, cols: int, head_dim: int, base: float, device: torch.device) -> None:
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head width divisible by 4, got {head_dim}")
        half = head_dim // 2
        # Same float32 arithmetic as the reference so the angles are bit-identical.
        inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=device).float() / half))
        y = torch.arange(rows, device=device).repeat_interleave(cols)  # row of each token, row-major order
        x = torch.arange(cols, device=device).repeat(rows)
        ang_y = torch.einsum("i,j->ij", y.float(), inv_freq)  # (N, D/4)
        ang_x = torch.einsum("i,j->ij", x.float(), inv_freq)
        angles = torch.cat((ang_y, ang_y, ang_x, ang_x), dim=-1)  # (N, D)
        self.cos = angles.cos()
        # rotate_half(t) = (-t2, t1) per half; folding the minus sign into sin lets `apply` use a plain swap.
        sign = torch.ones(head_dim, device=device)
        sign[: half // 2] = -1
        sign[half: half + half // 2] = -1
        self.sin = angles.sin() * sign
        self.head_dim = head_dim
        self._cast: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {torch.float32: (self.cos, self.sin)}

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype not in self._cast:
            self._cast[t.dtype] = (self.cos.to(t.dtype), self.sin.to(t.dtype))
        cos, sin = self._cast[t.dtype]
        q = self.head_dim // 4
        swapped = t.unflatten(-1, (2, 2, q)).flip(-2).flatten(-3)  # (t1, t2) -> (t2, t1) within each half
        return t * cos + swapped * sin


class RopeCache:
    """One `Rope2D` per (rows, cols, head width, device): built on first use, reused by every layer."""

    def __init__(self, base: float) -> None:
        self.base = base
        self._tables: dict[tuple, Rope2D] = {}

    def get(self, rows: int, cols: int, head_dim: int, device: torch.device) -> Rope2D:
        key = (rows, cols, head_dim, str(device))
        if key not in self._tables:
            self._tables[key] = Rope2D(rows, cols, head_dim, self.base, device)
        return self._tables[key]
