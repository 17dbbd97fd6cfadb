"""Shared fixtures.

Engine-only tests `import engine` (the repository root is on sys.path). Tests that touch Blender use the
`addon` fixture: the repository loaded as the extension `bl_ext.unposed_tests.unposed`, and must use that
module's own `addon.engine` / `addon.bridge` so objects come from one copy of the code.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_USER_DIR = tempfile.mkdtemp(prefix="unposed-blender-user-")
os.environ.setdefault("BLENDER_USER_RESOURCES", _USER_DIR)  # isolate from the developer's Blender settings

ADDON_REPO = "unposed_tests"
ADDON_MODULE = f"bl_ext.{ADDON_REPO}.unposed"


def _enable_addon():
    import addon_utils
    import bpy

    if ADDON_MODULE in sys.modules and bpy.context.preferences.addons.get(ADDON_MODULE):
        return sys.modules[ADDON_MODULE]
    repo_dir = Path(_USER_DIR) / "repo"
    repo_dir.mkdir(exist_ok=True)
    link = repo_dir / "unposed"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    repos = bpy.context.preferences.extensions.repos
    if not any(r.module == ADDON_REPO for r in repos):
        repos.new(name=ADDON_REPO, module=ADDON_REPO, custom_directory=str(repo_dir), source='USER')
    addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=_raise)
    return importlib.import_module(ADDON_MODULE)


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.fixture(scope="session")
def addon():
    """The add-on package, registered in a fresh factory-settings Blender session."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    return _enable_addon()


@pytest.fixture
def empty_scene(addon):
    """A fresh empty scene for each test (the add-on stays registered)."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
