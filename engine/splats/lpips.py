"""LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), in plain torch: no torchvision, and weights only from files already on this machine.

Two weight files, read with `torch.load(weights_only=True)`:
- trunk: torchvision's ImageNet AlexNet state dict (`alexnet-owt-*.pth`); only `features.{0,3,6,8,10}.{weight,bias}`
  are used (classifier keys are ignored). Its `features` are conv 3->64 k11 s4 p2, ReLU, maxpool 3/2,
  conv 64->192 k5 p2, ReLU, maxpool 3/2, conv 192->384 k3 p1, ReLU, conv 384->256 k3 p1, ReLU, conv 256->256 k3 p1,
  ReLU; LPIPS taps the five ReLU outputs.
- heads: the `lpips` package's `weights/v0.1/alex.pth`, keys `lin{k}.model.1.weight` of shape (1, C_k, 1, 1):
  non-negative 1x1 convolutions without bias (index 1 because a dropout sits at index 0).

Distance (paper eq. 1): d(x, y) = sum_k mean_{h,w} sum_c w_kc (f_kc(x) / (|f_k(x)| + eps) - same for y)^2, with the
features normalised to unit length over channels (eps = 1e-10) at every pixel. Images come in [0, 1]; LPIPS's
networks take [-1, 1] followed by the v0.1 scaling layer (x - shift) / scale (both in `_prepare`).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineError

ENV_DIR = "UNPOSED_LPIPS_DIR"
TRUNK_GLOB = "alexnet-owt-*.pth"  # torchvision's file name in torch hub's cache (alexnet-owt-7be5be79.pth)
HEADS_NAME = "alex.pth"  # the lpips package's file name (lpips/weights/v0.1/alex.pth)

# torchvision `features` index -> (in, out, kernel, stride, padding, max-pool 3/2 before it)
_TRUNK = {0: (3, 64, 11, 4, 2, False), 3: (64, 192, 5, 1, 2, True), 6: (192, 384, 3, 1, 1, True),
          8: (384, 256, 3, 1, 1, False), 10: (256, 256, 3, 1, 1, False)}
_HEAD_KEY = "lin{}.model.1.weight"
# LPIPS v0.1 ScalingLayer constants (applied to [-1, 1] input)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10
MIN_SIZE = 31  # smallest side for which the trunk's second max-pool still has a 3x3 window


class LPIPS(torch.nn.Module):
    """LPIPS (v0.1, AlexNet) distance between images in [0, 1]: lower is more alike, 0 for identical images.

    Call with two (H, W, 3) images (returns a scalar) or two (N, 3, H, W) batches (returns (N,)). Build it with
    `load_lpips`; a bare `LPIPS()` has uninitialised weights. Frozen and in eval mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.ModuleDict({str(i): torch.nn.Conv2d(cin, cout, k, stride=s, padding=p)
                                             for i, (cin, cout, k, s, p, _) in _TRUNK.items()})
        self.heads = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(1, spec[1], 1, 1)) for spec in _TRUNK.values()])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.sources: tuple[Path, Path] | None = None  # (trunk file, heads file) once loaded
        self.requires_grad_(False)
        self.eval()

    def _prepare(self, image: torch.Tensor, name: str) -> torch.Tensor:
        if image.dim() == 3 and image.shape[-1] == 3:
            image = image.permute(2, 0, 1)[None]
        elif image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"LPIPS: {name} must be (H, W, 3) or (N, 3, H, W), got shape {tuple(image.shape)}")
        if min(image.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS: {name} is {image.shape[-1]}x{image.shape[-2]} px; AlexNet needs at least "
                             f"{MIN_SIZE} px on each side")
        image = image.to(self.shift)
        return ((2 * image - 1) - self.shift) / self.scale  # [0, 1] -> [-1, 1] -> v0.1 scaling layer

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs of the AlexNet trunk for prepared input `x` (N, 3, H, W)."""
        out = []
        for spec, conv in zip(_TRUNK.values(), self.features.values()):
            if spec[5]:
                x = torch.nn.functional.max_pool2d(x, kernel_size=3, stride=2)
            x = torch.relu(conv(x))
            out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        single = a.dim() == 3
        x, y = self._prepare(a, "first image"), self._prepare(b, "second image")
        if x.shape != y.shape:
            raise ValueError(f"LPIPS: images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
        total = x.new_zeros(len(x))
        for feats, head in zip(self.taps(torch.cat([x, y])), self.heads):
            unit = feats / (feats.square().sum(1, keepdim=True).sqrt() + _EPS)
            fx, fy = unit.split(len(x))
            total = total + ((fx - fy).square() * head).sum(1).mean((1, 2))
        return total[0] if single else total


# -- weights ------------------------------------------------------------------------------------------------------
def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals, truncated or foreign files
        raise EngineError(f"LPIPS weights {path}: not a torch weights file that loads safely ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise EngineError(f"LPIPS weights {path}: expected a state dict of named tensors, got {type(state).__name__}")
    return state


def _take(state: dict[str, Any], path: Path, key: str, shape: tuple[int, ...], role: str) -> torch.Tensor:
    if key not in state:
        raise EngineError(f"LPIPS {role} weights {path}: key {key!r} is missing")
    value = state[key]
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise EngineError(f"LPIPS {role} weights {path}: {key!r} should have shape {shape}, got {got}")
    if not torch.isfinite(value).all():
        raise EngineError(f"LPIPS {role} weights {path}: {key!r} holds non-finite values")
    return value


def _from_env() -> Path | None:
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return None
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise EngineError(f"{ENV_DIR}={folder!r} is not a folder")
    return path


def _find_trunk(folder: Path | None) -> Path | None:
    for where in ([folder] if folder else []) + [Path(torch.hub.get_dir()) / "checkpoints"]:
        found = sorted(where.glob(TRUNK_GLOB))
        if found:
            return found[0]
    return None


def _find_heads(folder: Path | None) -> Path | None:
    if folder is not None and (folder / HEADS_NAME).is_file():
        return folder / HEADS_NAME
    # the installed lpips package's own copy, located without importing it (it imports torchvision)
    spec = importlib.util.find_spec("lpips")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "weights" / "v0.1" / HEADS_NAME
        if path.is_file():
            return path
    return None


def _explicit(path: str | os.PathLike | None, role: str) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise EngineError(f"LPIPS {role} weights {path}: no such file")
    return path


def find_lpips_weights(trunk_path: str | os.PathLike | None = None,
                       heads_path: str | os.PathLike | None = None) -> tuple[Path | None, Path | None]:
    """(trunk file, heads file), each from: the explicit path (must exist), else the folder in $UNPOSED_LPIPS_DIR
    (`alexnet-owt-*.pth`, `alex.pth`), else torch hub's cache (trunk) / the installed lpips package (heads).
    None for a file found nowhere; nothing is downloaded."""
    trunk, heads = _explicit(trunk_path, "trunk"), _explicit(heads_path, "heads")
    if trunk is None or heads is None:
        folder = _from_env()
        trunk = trunk or _find_trunk(folder)
        heads = heads or _find_heads(folder)
    return trunk, heads


def load_lpips(trunk_path: str | os.PathLike | None = None,
               heads_path: str | os.PathLike | None = None) -> LPIPS | None:
    """The LPIPS metric from local weight files (see `find_lpips_weights`), on the CPU; None when either file is
    not on this machine. A file that exists but does not hold the expected keys and shapes is an EngineError."""
    trunk, heads = find_lpips_weights(trunk_path, heads_path)
    if trunk is None or heads is None:
        return None
    model = LPIPS()
    trunk_state, heads_state = _read(trunk), _read(heads)
    with torch.no_grad():
        for index, (cin, cout, k, *_) in _TRUNK.items():
            conv = model.features[str(index)]
            conv.weight.copy_(_take(trunk_state, trunk, f"features.{index}.weight", (cout, cin, k, k), "trunk"))
            conv.bias.copy_(_take(trunk_state, trunk, f"features.{index}.bias", (cout,), "trunk"))
        for layer, (param, spec) in enumerate(zip(model.heads, _TRUNK.values())):
            param.copy_(_take(heads_state, heads, _HEAD_KEY.format(layer), (1, spec[1], 1, 1), "heads"))
    model.sources = (trunk, heads)
    return model
