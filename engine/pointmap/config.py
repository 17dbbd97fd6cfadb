"""Architecture of a pointmap network, built from the reference constructors' keyword arguments.

The official checkpoints describe their network by the keyword arguments of DUSt3R's
`AsymmetricCroCo3DStereo` or MASt3R's `AsymmetricMASt3R` (in the `.pth` as a constructor string, in the Hub
layout as config.json). `PointmapConfig.from_kwargs` fills the same defaults those constructors (and CroCo's
base class) use and rejects anything this engine does not reproduce exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import EngineError

INF = math.inf


class CheckpointError(EngineError):
    """Pointmap weights that are missing, unsafe, or do not describe a network this engine can run."""


# Reference defaults (dust3r/model.py, mast3r/model.py, croco/models/croco.py).
_DEFAULTS: dict[str, Any] = {
    "output_mode": "pts3d", "head_type": "linear", "depth_mode": ("exp", -INF, INF),
    "conf_mode": ("exp", 1, INF), "freeze": "none", "landscape_only": True,
    "patch_embed_cls": "PatchEmbedDust3R", "img_size": 224, "patch_size": 16, "mask_ratio": 0.9,
    "enc_embed_dim": 768, "enc_depth": 12, "enc_num_heads": 12, "dec_embed_dim": 512, "dec_depth": 8,
    "dec_num_heads": 16, "mlp_ratio": 4, "norm_im2_in_dec": True, "pos_embed": "cosine",
}
_MAST3R_DEFAULTS: dict[str, Any] = {"desc_mode": "norm", "two_confs": False, "desc_conf_mode": None}
# Training-only switches: they do not change inference (the reference's own loader forces landscape_only=False,
# and both patch embeddings are the same convolution for the inputs the reference accepts).
_IGNORED = ("freeze", "landscape_only", "mask_ratio")


@dataclass(frozen=True)
class PointmapConfig:
    kind: str  # "dust3r" or "mast3r"
    img_size: tuple[int, int]
    patch_size: int
    enc_embed_dim: int
    enc_depth: int
    enc_num_heads: int
    dec_embed_dim: int
    dec_depth: int
    dec_num_heads: int
    mlp_ratio: float
    norm_im2_in_dec: bool
    rope_freq: float
    head_type: str  # "linear", "dpt" or "catmlp+dpt"
    output_mode: str  # "pts3d" or "pts3d+desc<N>"
    depth_mode: tuple[str, float, float]
    conf_mode: tuple[str, float, float] | None
    desc_mode: str = "norm"
    two_confs: bool = False
    desc_conf_mode: tuple[str, float, float] | None = None

    @property
    def desc_dim(self) -> int | None:
        """Local-feature (descriptor) channels of MASt3R's head, None for DUSt3R."""
        return int(self.output_mode[len("pts3d+desc"):]) if self.output_mode.startswith("pts3d+desc") else None

    @property
    def has_conf(self) -> bool:
        return self.conf_mode is not None

    @property
    def dpt_hooks(self) -> tuple[int, ...]:
        """Which of [encoder output, decoder layer 1..L] the DPT head reads (reference: [0, L/2, 3L/4, L])."""
        depth = self.dec_depth
        return (0, depth * 2 // 4, depth * 3 // 4, depth)

    @property
    def input_size(self) -> int:
        """The `size` argument of the reference's image loader that matches this network: 224 or 512."""
        return 224 if max(self.img_size) <= 224 else 512

    @classmethod
    def from_kwargs(cls, kind: str, kwargs: Mapping[str, Any], source: str) -> PointmapConfig:
        """Validate constructor keyword arguments (as stored in a checkpoint) and fill the reference defaults."""
        if kind not in ("dust3r", "mast3r"):
            raise CheckpointError(f"{source}: unknown network kind {kind!r}")
        defaults = dict(_DEFAULTS, **(_MAST3R_DEFAULTS if kind == "mast3r" else {}))
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise CheckpointError(f"{source}: unsupported {kind} constructor argument(s) {', '.join(unknown)}")
        a = dict(defaults, **kwargs)

        def bad(field: str, why: str) -> CheckpointError:
            return CheckpointError(f"{source}: {field}={a[field]!r} {why}")

        if a["patch_embed_cls"] not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            raise bad("patch_embed_cls", "is not a known patch embedding")
        pos = str(a["pos_embed"])
        if not pos.startswith("RoPE"):
            raise bad("pos_embed", "is not supported (DUSt3R networks use RoPE<base>, e.g. 'RoPE100')")
        try:
            rope_freq = float(pos[len("RoPE"):])
        except ValueError:
            raise bad("pos_embed", "has no numeric RoPE base") from None
        img = a["img_size"]
        img_size = (int(img), int(img)) if isinstance(img, (int, float)) else tuple(int(v) for v in img)
        patch = a["patch_size"]
        if not isinstance(patch, int) or patch <= 0:
            raise bad("patch_size", "must be a positive integer")
        if len(img_size) != 2 or any(v % patch for v in img_size):
            raise bad("img_size", f"must be two multiples of patch_size={patch}")
        for prefix in ("enc", "dec"):
            dim, heads, depth = (a[f"{prefix}_embed_dim"], a[f"{prefix}_num_heads"], a[f"{prefix}_depth"])
            if not all(isinstance(v, int) and v > 0 for v in (dim, heads, depth)):
                raise bad(f"{prefix}_embed_dim", f"/ {prefix}_num_heads / {prefix}_depth must be positive integers")
            if dim % heads or (dim // heads) % 4:
                raise bad(f"{prefix}_embed_dim", f"must split into {heads} heads of a multiple of 4 channels (2D RoPE)")
        head, out = a["head_type"], a["output_mode"]
        if kind == "dust3r" and not (head in ("linear", "dpt") and out == "pts3d"):
            raise bad("head_type", f"with output_mode={out!r} is not a DUSt3R head this engine supports")
        if kind == "mast3r":
            if head != "catmlp+dpt" or not out.startswith("pts3d+desc") or not out[10:].isdigit():
                raise bad("head_type", f"with output_mode={out!r} is not a MASt3R head this engine supports")
            if a["desc_mode"] != "norm":
                raise bad("desc_mode", "is not supported (only 'norm')")
        if head != "linear" and a["dec_depth"] <= 9:
            raise bad("dec_depth", "must be at least 10 for a DPT head")
        depth_mode = _mode(a["depth_mode"], ("linear", "square", "exp"), "depth_mode", source)
        if depth_mode[1:] != (-INF, INF):
            raise bad("depth_mode", "must be unbounded, as in the reference")
        conf_mode = None if a["conf_mode"] is None else _mode(a["conf_mode"], ("exp", "sigmoid"), "conf_mode", source)
        desc_conf = a.get("desc_conf_mode")
        desc_conf = conf_mode if desc_conf is None else _mode(desc_conf, ("exp", "sigmoid"), "desc_conf_mode", source)
        if kind == "mast3r" and conf_mode is None:
            raise bad("conf_mode", "must be set for a MASt3R head")
        return cls(kind=kind, img_size=img_size, patch_size=patch, enc_embed_dim=a["enc_embed_dim"],
                   enc_depth=a["enc_depth"], enc_num_heads=a["enc_num_heads"], dec_embed_dim=a["dec_embed_dim"],
                   dec_depth=a["dec_depth"], dec_num_heads=a["dec_num_heads"], mlp_ratio=float(a["mlp_ratio"]),
                   norm_im2_in_dec=bool(a["norm_im2_in_dec"]), rope_freq=rope_freq, head_type=head,
                   output_mode=out, depth_mode=depth_mode, conf_mode=conf_mode, desc_mode=a.get("desc_mode", "norm"),
                   two_confs=bool(a.get("two_confs", False)), desc_conf_mode=desc_conf if kind == "mast3r" else None)

    def to_kwargs(self) -> dict[str, Any]:
        """The reference constructor's keyword arguments for this network (what a Hub config.json holds)."""
        kw: dict[str, Any] = {
            "output_mode": self.output_mode, "head_type": self.head_type, "depth_mode": list(self.depth_mode),
            "conf_mode": None if self.conf_mode is None else list(self.conf_mode), "landscape_only": False,
            "patch_embed_cls": "PatchEmbedDust3R", "img_size": list(self.img_size), "patch_size": self.patch_size,
            "enc_embed_dim": self.enc_embed_dim, "enc_depth": self.enc_depth, "enc_num_heads": self.enc_num_heads,
            "dec_embed_dim": self.dec_embed_dim, "dec_depth": self.dec_depth, "dec_num_heads": self.dec_num_heads,
            "mlp_ratio": self.mlp_ratio, "norm_im2_in_dec": self.norm_im2_in_dec,
            "pos_embed": f"RoPE{self.rope_freq:g}",
        }
        if self.kind == "mast3r":
            kw.update(desc_mode=self.desc_mode, two_confs=self.two_confs,
                      desc_conf_mode=None if self.desc_conf_mode is None else list(self.desc_conf_mode))
        return kw


def _mode(value: Any, names: tuple[str, ...], field: str, source: str) -> tuple[str, float, float]:
    """A (name, vmin, vmax) post-processing mode, e.g. ('exp', 1, inf)."""
    if not isinstance(value, (list, tuple)) or len(value) != 3 or value[0] not in names:
        raise CheckpointError(f"{source}: {field}={value!r} is not one of ({'|'.join(names)}, vmin, vmax)")
    try:
        return (str(value[0]), float(value[1]), float(value[2]))
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: {field}={value!r} has non-numeric bounds") from None
