"""Preferences, window-manager/scene properties and the sidebar panels: registered, and drawn without errors.

Headless Blender has no regions to draw in, so `draw()` gets a recording layout that checks each call against
Blender's own RNA: drawn properties exist on their data, operators are registered and their options exist,
icons are real icon names.
"""
from types import SimpleNamespace

import pytest

from conftest import ADDON_MODULE


class RecordingLayout:
    def __init__(self, calls=None):
        self.calls = [] if calls is None else calls
        self.use_property_split = self.use_property_decorate = False
        self.alert, self.enabled, self.active = False, True, True

    def _sub(self, *args, **kwargs):
        return RecordingLayout(self.calls)

    row = column = box = split = _sub

    def separator(self, **kwargs):
        pass

    def label(self, *, text="", icon='NONE'):
        check_icon(icon)
        self.calls.append(("label", text))

    def prop(self, data, prop, **kwargs):
        assert prop in data.bl_rna.properties, f"{data.bl_rna.identifier} has no property {prop!r}"
        check_icon(kwargs.get("icon", 'NONE'))
        self.calls.append(("prop", prop))

    def prop_search(self, data, prop, search_data, search_prop, **kwargs):
        assert prop in data.bl_rna.properties, f"{data.bl_rna.identifier} has no property {prop!r}"
        assert search_prop in search_data.bl_rna.properties, f"no collection {search_prop!r} to search"
        self.calls.append(("prop_search", prop))

    def operator(self, idname, *, text=None, icon='NONE', depress=False):
        import bpy

        check_icon(icon)
        category, name = idname.split(".")
        rna = getattr(getattr(bpy.ops, category), name).get_rna_type()  # KeyError when not registered
        self.calls.append(("operator", idname))
        return OperatorOptions(rna)

    def progress(self, *, factor, type='BAR', text=""):
        assert 0.0 <= factor <= 1.0 and type in {'BAR', 'RING'}
        self.calls.append(("progress", factor, text))


class OperatorOptions:
    def __init__(self, rna):
        object.__setattr__(self, "_rna", rna)

    def __setattr__(self, name, value):
        assert name in self._rna.properties, f"{self._rna.identifier} has no option {name!r}"


def check_icon(icon):
    import bpy

    icons = bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items
    assert icon in icons, f"unknown icon {icon!r}"


def draw(cls, context, data=None):
    """Call `cls.draw()` with a recording layout; `self` reads its other attributes from `data` (default: cls)."""
    layout = RecordingLayout()

    class Self:
        def __getattr__(self, name):
            return getattr(cls if data is None else data, name)

    me = Self()
    me.layout = layout
    cls.draw(me, context)
    return layout.calls


@pytest.fixture
def job_state(addon):
    import bpy

    state = bpy.context.window_manager.unposed_job
    yield state
    state.running, state.label, state.progress, state.text, state.message = False, "", 0.0, "", ""


def test_preferences_registered_and_drawn(addon, job_state):
    import bpy

    prefs = addon.ui.preferences.get_preferences()
    assert type(prefs).bl_idname == ADDON_MODULE == addon.ui.preferences.ADDON_PACKAGE
    assert prefs is not None and prefs.device == 'auto' and prefs.python_path == ""
    assert [i.identifier for i in prefs.bl_rna.properties["device"].enum_items] == ['auto', 'cpu', 'cuda']
    calls = draw(type(prefs), bpy.context, prefs)
    drawn = {c[1] for c in calls if c[0] == "prop"}
    assert drawn == {"python_path", "device", "dust3r_checkpoint", "dmcalib_weights", "dmcalib_base", "hub_cache"}
    assert ("operator", "unposed.setup_engine") in calls
    status = [c[1] for c in calls if c[0] == "label" and c[1].startswith("Engine: ")]
    assert status == [f"Engine: Blender's Python ({__import__('sys').executable})"]

    job_state.running, job_state.label, job_state.progress, job_state.text = True, "Set Up Engine", 0.5, "pip 1/2"
    calls = draw(type(prefs), bpy.context, prefs)
    assert ("progress", 0.5, "pip 1/2") in calls and ("operator", "unposed.cancel_job") in calls


def test_preferences_status_names_a_bad_interpreter(addon, tmp_path):
    import bpy

    prefs = addon.ui.preferences.get_preferences()
    try:
        prefs.python_path = str(tmp_path / "missing-python")
        calls = draw(type(prefs), bpy.context, prefs)
        assert any(c[0] == "label" and "does not exist" in c[1] and "missing-python" in c[1] for c in calls)
    finally:
        prefs.python_path = ""


def test_properties_registered(addon):
    import bpy

    assert bpy.context.scene.unposed.export_format == 'BUNDLE'
    assert not bpy.context.scene.unposed.export_selected_only
    state = bpy.context.window_manager.unposed_job
    assert not state.running and state.progress == 0.0
    with pytest.raises(TypeError):
        bpy.context.scene.unposed.export_format = 'OBJ'


def test_sidebar_panels(addon, empty_scene, job_state):
    import bpy

    panel = addon.ui.panel
    for cls in panel.classes:
        assert getattr(bpy.types, cls.__name__) is cls
        assert (cls.bl_space_type, cls.bl_region_type, cls.bl_category) == ('VIEW_3D', 'UI', "Unposed")

    settings = empty_scene.unposed
    settings.export_format = 'COLMAP'
    calls = draw(panel.UNPOSED_PT_import_export, bpy.context)
    assert [c for c in calls if c[0] != "label"] == [
        ("prop", "images_dir"), ("operator", "unposed.import_scene"),
        ("prop", "export_format"), ("prop", "export_selected_only"), ("operator", "unposed.export_scene")]

    # No camera has been matched yet: only the button.
    assert draw(panel.UNPOSED_PT_match_camera, bpy.context) == [("operator", "unposed.match_camera")]
    settings.reconstruct_backend, settings.reconstruct_frame_step = 'COLMAP', 3
    calls = draw(panel.UNPOSED_PT_reconstruct, bpy.context)
    assert [c for c in calls if c[0] == "operator"] == [("operator", "unposed.reconstruct")] * 2
    assert [c for c in draw(panel.UNPOSED_PT_train_splats, bpy.context) if c[0] == "operator"] == [
        ("operator", "unposed.train_splats"), ("operator", "unposed.import_splats"), ("operator", "unposed.export_splats")]


def test_job_panel_follows_the_job_state(addon, job_state):
    import bpy

    panel = addon.ui.panel.UNPOSED_PT_job
    assert not panel.poll(bpy.context)  # hidden while there is nothing to say
    job_state.running, job_state.label, job_state.progress, job_state.text = True, "Import", 0.25, "read 1/4"
    assert panel.poll(bpy.context)
    calls = draw(panel, bpy.context)
    assert calls == [("label", "Import"), ("progress", 0.25, "read 1/4"), ("operator", "unposed.cancel_job")]
    job_state.running, job_state.message = False, "Import failed: scene.json: bad width"
    assert panel.poll(bpy.context)
    assert draw(panel, bpy.context) == [("label", "Import failed: scene.json: bad width")]


def test_cancel_job_needs_a_job(addon):
    import bpy

    assert not bpy.ops.unposed.cancel_job.poll()
    with pytest.raises(RuntimeError, match="poll"):
        bpy.ops.unposed.cancel_job()
