"""The Unposed add-on as loaded in this Blender session: scenegen reaches `engine` and `bridge` through it.

The add-on's `bridge` uses relative imports into its own `engine`, so both must come from the one registered copy
of the package (the same rule the tests follow, see tests/conftest.py). If an add-on built from this repository is
already enabled (the test suite's `addon` fixture), that copy is used; otherwise the repository is linked into a
temporary user extension repository and enabled.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
REPO_MODULE = "unposed_dev"  # extension repository module name used when scenegen enables the add-on itself
ADDON_ID = "unposed"

if "bpy" not in sys.modules:  # a session of our own: keep it away from the user's Blender settings and add-ons
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="unposed-blender-user-"))


def _loaded() -> ModuleType | None:
    import bpy

    for name in bpy.context.preferences.addons.keys():
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if name.startswith("bl_ext.") and file and Path(file).resolve() == ROOT / "__init__.py":
            return module
    return None


def package() -> ModuleType:
    """The enabled Unposed add-on package built from this repository (enabling it if no copy is enabled yet)."""
    import addon_utils
    import bpy

    module = _loaded()
    if module is not None:
        return module
    repos = bpy.context.preferences.extensions.repos
    if not any(repo.module == REPO_MODULE for repo in repos):  # made by an earlier call in this session
        repo_dir = Path(tempfile.mkdtemp(prefix="unposed-extensions-"))
        (repo_dir / ADDON_ID).symlink_to(ROOT, target_is_directory=True)
        repos.new(name=REPO_MODULE, module=REPO_MODULE, custom_directory=str(repo_dir), source="USER")
    name = f"bl_ext.{REPO_MODULE}.{ADDON_ID}"
    addon_utils.enable(name, default_set=True, handle_error=_raise)
    return importlib.import_module(name)


def _raise(exc: BaseException) -> None:
    raise exc


def module(name: str) -> ModuleType:
    """A submodule of the add-on package, e.g. module("engine.bundle") or module("bridge.camera")."""
    return importlib.import_module(f"{package().__name__}.{name}")
