"""Add-on preferences: the engine interpreter, compute device and model weights."""
from __future__ import annotations

import bpy

from ..jobs import engine_env
from .panel import draw_job

# The add-on's own package ("bl_ext.<repo>.unposed"): the preferences' bl_idname and the key of its user directory.
ADDON_PACKAGE = __package__.rsplit(".", 1)[0]


def _forget_engine_checks(_self, _context) -> None:
    engine_env.forget_checks()


class UNPOSED_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    python_path: bpy.props.StringProperty(
        name="Engine Python", subtype='FILE_PATH', update=_forget_engine_checks,
        description="Python interpreter that runs the engine (with requirements.txt installed). "
                    "Empty: the environment made by Set up engine, or Blender's own Python if it has everything")
    device: bpy.props.EnumProperty(
        name="Device", default='auto',
        items=(('auto', "Auto", "CUDA when available, else CPU"),
               ('cpu', "CPU", "Always compute on the CPU"),
               ('cuda', "CUDA", "Compute on an NVIDIA GPU (fails when none is available)")))
    dust3r_checkpoint: bpy.props.StringProperty(
        name="DUSt3R/MASt3R", subtype='FILE_PATH',
        description="DUSt3R or MASt3R weights: a .pth checkpoint, a folder with config.json and "
                    "model.safetensors, or a Hugging Face Hub id")
    dmcalib_weights: bpy.props.StringProperty(
        name="DM-Calib", subtype='FILE_PATH',
        description="DM-Calib UNet weights: a file or folder, or a Hugging Face Hub id")
    dmcalib_base: bpy.props.StringProperty(
        name="DM-Calib Base",
        description="Stable Diffusion 2.1 base model DM-Calib builds on (VAE and text encoder): "
                    "a folder or a Hugging Face Hub id")
    hub_cache: bpy.props.StringProperty(
        name="Hub Cache", subtype='DIR_PATH',
        description="Folder for models downloaded from the Hugging Face Hub (empty: the Hub's default)")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False

        box = layout.box()
        box.label(text="Engine", icon='CONSOLE')
        box.prop(self, "python_path")
        usable, text = engine_env.status(self.python_path)
        row = box.row()
        row.alert = not usable
        row.label(text=text, icon='CHECKMARK' if usable else 'ERROR')
        row = box.row()
        row.enabled = bpy.app.online_access
        row.operator("unposed.setup_engine", icon='IMPORT')
        if not bpy.app.online_access:
            box.label(text="Setting up needs online access (Preferences > System > Network)", icon='INFO')
        state = context.window_manager.unposed_job
        if state.running or state.message:
            draw_job(box.column(), state)
        box.prop(self, "device")

        box = layout.box()
        box.label(text="Model Weights", icon='FILE_BLANK')
        box.prop(self, "dust3r_checkpoint")
        box.prop(self, "dmcalib_weights")
        box.prop(self, "dmcalib_base")
        box.prop(self, "hub_cache")


def get_preferences(context: bpy.types.Context | None = None) -> UNPOSED_AP_preferences:
    """This add-on's preferences."""
    addon = (context or bpy.context).preferences.addons.get(ADDON_PACKAGE)
    if addon is None:
        raise RuntimeError(f"the add-on {ADDON_PACKAGE} is not enabled")
    return addon.preferences


classes: tuple = (UNPOSED_AP_preferences,)
