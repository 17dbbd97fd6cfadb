"""The extension package: Blender's validator accepts the manifest, the build zip holds the add-on and none of
the development files, and Blender installs and enables it from disk."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from conftest import ROOT
from devtools import extension


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory):
    return extension.build(tmp_path_factory.mktemp("dist"))


def test_manifest_passes_blenders_validator():
    assert "Success" in extension.validate(ROOT)


def test_validator_rejects_a_bad_manifest(tmp_path):
    """The check is real: the same manifest with a tagline ending in a full stop is refused, naming the field."""
    text = (ROOT / "blender_manifest.toml").read_text(encoding="utf-8")
    tagline = tomllib.loads(text)["tagline"]
    (tmp_path / "blender_manifest.toml").write_text(text.replace(tagline, tagline + "."), encoding="utf-8")
    shutil.copy(ROOT / "__init__.py", tmp_path / "__init__.py")
    with pytest.raises(extension.ExtensionToolError, match="tagline"):
        extension.validate(tmp_path)


def test_build_zip_holds_the_addon_and_no_development_files(built_zip):
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text(encoding="utf-8"))
    assert built_zip.name == f"{manifest['id']}-{manifest['version']}.zip"
    names = zipfile.ZipFile(built_zip).namelist()
    for required in ("blender_manifest.toml", "__init__.py", "engine/__init__.py", "engine/bundle.py",
                     "bridge/camera.py", "operators/__init__.py", "LICENSE.md"):
        assert required in names, required
    for excluded in ("tests/", "scenegen/", "devtools/", "bench/", ".venv/", ".git/", "out/", "dist/"):
        assert not any(n.startswith(excluded) for n in names), excluded
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_blender_installs_and_enables_the_zip(built_zip, tmp_path):
    """Install from disk into a fresh Blender (separate process, own user folder): the add-on registers."""
    script = (
        "import sys, bpy\n"
        "bpy.ops.wm.read_factory_settings(use_empty=True)\n"
        "r = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo='user_default',"
        " enable_on_install=True)\n"
        "assert r == {'FINISHED'}, r\n"
        "assert 'bl_ext.user_default.unposed' in bpy.context.preferences.addons.keys()\n"
        "print(bpy.ops.unposed.import_scene.get_rna_type().identifier)\n"
    )
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user")}
    proc = subprocess.run([sys.executable, "-c", script, str(built_zip)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UNPOSED_OT_import_scene" in proc.stdout
