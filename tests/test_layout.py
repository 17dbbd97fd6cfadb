import subprocess
import sys

from conftest import ROOT


def test_addon_import_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, %r); import importlib; "
            "m = importlib.import_module('engine.cli'); "
            "assert 'torch' not in sys.modules, 'engine.cli imported torch'") % str(ROOT)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_never_imports_bpy():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "engine").rglob("*.py")
                 if "import bpy" in p.read_text() or "from bpy" in p.read_text()]
    assert offenders == []


def test_addon_registers_and_unregisters(addon):
    import addon_utils
    import bpy

    from conftest import ADDON_MODULE

    assert bpy.context.preferences.addons.get(ADDON_MODULE) is not None
    addon_utils.disable(ADDON_MODULE, default_set=True)
    assert bpy.context.preferences.addons.get(ADDON_MODULE) is None
    addon_utils.enable(ADDON_MODULE, default_set=True)
    assert bpy.context.preferences.addons.get(ADDON_MODULE) is not None
