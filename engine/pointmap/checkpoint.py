"""Finding and safely loading pointmap weights: the official `.pth` layout and the Hugging Face layout.

`.pth` (naver's downloads): a torch zip/pickle holding {'model': state dict, 'args': argparse.Namespace whose
`model` field is the constructor call, e.g. "AsymmetricCroCo3DStereo(enc_depth=24, ...)"}. It is read with
`torch.load(weights_only=True)` and only `argparse.Namespace` allow-listed, so a pickle that would run code is
refused before anything runs; the constructor string is parsed as a Python expression tree (never evaluated).

Hub layout: a folder with config.json (the constructor's keyword arguments) and model.safetensors, given as a
path or as a Hub id ("naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt") found in the local Hugging Face cache. No
download happens here: the cache is only read.

Key mapping (as the reference's loader does): DPT `scratch.layerN_rn` aliases `scratch.layer_rn.{N-1}`; a
checkpoint without `dec_blocks2` uses `dec_blocks` for both decoders; CroCo's unused `mask_token` is dropped.
Every other tensor must be present with exactly the shape the described network needs.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable

from .config import CheckpointError, PointmapConfig

HUB_FILES = ("config.json", "model.safetensors")
_CLASSES = {"AsymmetricCroCo3DStereo": "dust3r", "AsymmetricMASt3R": "mast3r"}
_OFFICIAL_ORG = "naver"


# ---------------------------------------------------------------------------------------------- finding weights

def find_weights(spec: str | os.PathLike, search_dirs: Iterable[str | os.PathLike] = (),
                 hub_cache: str | os.PathLike | None = None) -> Path | None:
    """Where the weights named by `spec` are on this machine, or None.

    `spec` may be a `.pth` / `.safetensors` file, a Hub-layout folder, a name found in `search_dirs` (as
    NAME, NAME.pth or a folder NAME/), or a Hub id ("org/name"; a bare official name such as
    "DUSt3R_ViTLarge_BaseDecoder_512_dpt" also tries "naver/<name>") present in the Hugging Face cache
    (`hub_cache`, default: huggingface_hub's). Never downloads.
    """
    path = Path(spec).expanduser()
    if path.is_file() or _is_hub_folder(path):
        return path
    name = str(spec)
    for d in search_dirs:
        for candidate in (Path(d) / name, Path(d) / f"{name}.pth"):
            if candidate.is_file() or _is_hub_folder(candidate):
                return candidate
    for repo_id in _repo_ids(name):
        folder = _hub_cached_folder(repo_id, hub_cache)
        if folder is not None:
            return folder
    return None


def resolve_weights(spec: str | os.PathLike, search_dirs: Iterable[str | os.PathLike] = (),
                    hub_cache: str | os.PathLike | None = None) -> Path:
    """`find_weights`, or a CheckpointError that says where it looked and how to get the weights."""
    search_dirs = list(search_dirs)
    found = find_weights(spec, search_dirs, hub_cache)
    if found is not None:
        return found
    name = str(spec)
    where = [f"no file or Hub-layout folder (config.json + model.safetensors) at {name!r}"]
    if search_dirs:
        where.append("nothing named so in " + ", ".join(str(d) for d in search_dirs))
    for repo in _repo_ids(name):
        where.append(f"{repo!r} is not in the Hugging Face cache ({_hub_cache_dir(hub_cache)}); "
                     f"download it once with `hf download {repo}`")
    raise CheckpointError(f"pointmap weights {name!r} not found: " + "; ".join(where))


def _repo_ids(name: str) -> list[str]:
    """Hub ids `name` may stand for: itself, or naver/<name> for a bare official model name."""
    if _looks_like_repo_id(name):
        return [name]
    if re.fullmatch(r"(DUSt3R|MASt3R)_[\w.-]+", name):
        return [f"{_OFFICIAL_ORG}/{name}"]
    return []


def _is_hub_folder(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in HUB_FILES)


def _looks_like_repo_id(name: str) -> bool:
    """"org/name" as the Hub spells ids (and not a relative path to a checkpoint file)."""
    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None and ".." not in name
            and "--" not in name and not name.endswith((".pth", ".pt", ".ckpt", ".bin", ".safetensors")))


def _hub_cache_dir(hub_cache: str | os.PathLike | None) -> str:
    if hub_cache is not None:
        return str(hub_cache)
    try:
        from huggingface_hub import constants
    except ImportError:
        return "huggingface_hub is not installed"
    return str(constants.HF_HUB_CACHE)


def _hub_cached_folder(repo_id: str, hub_cache: str | os.PathLike | None) -> Path | None:
    """The cached snapshot folder holding both Hub files of `repo_id`, without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        files = [try_to_load_from_cache(repo_id, f, cache_dir=hub_cache) for f in HUB_FILES]
    except ValueError:  # huggingface_hub's HFValidationError: not a valid repo id after all
        return None
    if not all(isinstance(f, str) for f in files):
        return None
    folders = {Path(f).parent for f in files}
    return folders.pop() if len(folders) == 1 else None


# ---------------------------------------------------------------------------------------------- reading weights

def read_weights(path: str | os.PathLike) -> tuple[PointmapConfig, dict[str, Any]]:
    """(architecture, state dict mapped to this engine's names, float32 CPU tensors) from a checkpoint."""
    path = Path(path)
    if path.is_dir():
        if not _is_hub_folder(path):
            raise CheckpointError(f"{path}: a Hub-layout folder needs {' and '.join(HUB_FILES)}")
        config, raw = _read_hub(path / "config.json", path / "model.safetensors")
    elif path.suffix == ".safetensors":
        config, raw = _read_hub(path.with_name("config.json"), path)
    elif path.is_file():
        config, raw = _read_pth(path)
    else:
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    return config, map_state_dict(raw, config, str(path))


def load_model(spec: str | os.PathLike, device: str = "cpu", search_dirs: Iterable[str | os.PathLike] = (),
               hub_cache: str | os.PathLike | None = None):
    """The network described and weighted by `spec` (see `find_weights`), in eval mode on `device`."""
    from .model import build

    config, state = read_weights(resolve_weights(spec, search_dirs, hub_cache))
    return build(config, state, device)


def _read_pth(path: Path) -> tuple[PointmapConfig, dict[str, Any]]:
    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        reason = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(\n\n|$)", str(exc), re.S)
        what = (f"its pickle references {found.group(1)}" if found else
                f"its pickle is not plain weights ({reason.group(1) if reason else exc})")
        raise CheckpointError(f"{path}: refused to load: {what}; unpickling it could run code. Only tensors, "
                              "containers and argparse.Namespace are allowed") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (DUSt3R/MASt3R .pth layout)")
    args = ckpt.get("args")
    model_str = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    if not isinstance(model_str, str):
        raise CheckpointError(f"{path}: no 'args.model' constructor string describing the network")
    kind, kwargs = parse_model_string(model_str, f"{path}: args.model")
    return PointmapConfig.from_kwargs(kind, kwargs, f"{path}: args.model"), ckpt["model"]


def _read_hub(config_path: Path, weights_path: Path) -> tuple[PointmapConfig, dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        kwargs = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not a readable JSON config ({exc})") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object of constructor arguments")
    mast3r_keys = {"desc_mode", "two_confs", "desc_conf_mode"}
    is_mast3r = bool(mast3r_keys & set(kwargs)) or str(kwargs.get("output_mode", "")).startswith("pts3d+desc")
    config = PointmapConfig.from_kwargs("mast3r" if is_mast3r else "dust3r", kwargs, str(config_path))
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    return config, state


def parse_model_string(text: str, source: str) -> tuple[str, dict[str, Any]]:
    """("dust3r" | "mast3r", keyword arguments) from a constructor call string, without evaluating it."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise CheckpointError(f"{source}: not a constructor call ({exc.msg}): {text!r}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in _CLASSES):
        raise CheckpointError(f"{source}: expected {' or '.join(_CLASSES)}(...), got {text!r}")
    if call.args:
        raise CheckpointError(f"{source}: positional constructor arguments are not supported: {text!r}")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise CheckpointError(f"{source}: '**' arguments are not supported: {text!r}")
        kwargs[kw.arg] = _literal(kw.value, f"{source}: argument {kw.arg}")
    return _CLASSES[call.func.id], kwargs


def _literal(node: ast.AST, source: str) -> Any:
    """Constants, tuples/lists, signed numbers and inf (`inf`, `float('inf')`, `math.inf`/`np.inf`/`torch.inf`)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(e, source) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, source)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id == "inf":
        return math.inf
    if (isinstance(node, ast.Attribute) and node.attr == "inf" and isinstance(node.value, ast.Name)
            and node.value.id in ("math", "np", "numpy", "torch")):
        return math.inf
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float"
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).strip().lower() in ("inf", "+inf", "-inf", "infinity", "-infinity")):
        return float(node.args[0].value)
    raise CheckpointError(f"{source}: unsupported expression {ast.unparse(node)!r}")


# ---------------------------------------------------------------------------------------------- key mapping

def map_state_dict(raw: dict[str, Any], config: PointmapConfig, source: str) -> dict[str, Any]:
    """Official names -> this engine's names, with every tensor's presence, dtype and shape checked."""
    import torch

    from .model import parameter_shapes

    state: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        alias = re.fullmatch(r"(.*\.scratch\.)layer([1-4])_rn\.(weight|bias)", key)
        name = f"{alias.group(1)}layer_rn.{int(alias.group(2)) - 1}.{alias.group(3)}" if alias else key
        if name in state:
            if not torch.equal(state[name], value):
                raise CheckpointError(f"{source}: {key!r} and its alias {name!r} hold different values")
            continue
        state[name] = value
    if not any(k.startswith("dec_blocks2.") for k in state):
        state.update({"dec_blocks2." + k[len("dec_blocks."):]: v
                      for k, v in list(state.items()) if k.startswith("dec_blocks.")})
    expected = parameter_shapes(config)
    mask = state.pop("mask_token", None)
    if mask is not None and tuple(mask.shape) != (1, 1, config.dec_embed_dim):
        raise CheckpointError(f"{source}: tensor 'mask_token' has shape {tuple(mask.shape)}, "
                              f"expected {(1, 1, config.dec_embed_dim)}")
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: tensor {missing[0]!r}{more} missing for the network its config describes")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]!r}{more} for the network its config "
                              "describes")
    for key, shape in expected.items():
        value = state[key]
        if tuple(value.shape) != shape:
            raise CheckpointError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, expected {shape}")
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: tensor {key!r} has dtype {value.dtype}, expected floating point")
        state[key] = value.to(torch.float32)
    return state
