"""Add-on properties: the running job's state (window manager, never saved) and the user's options (scene)."""
from __future__ import annotations

import bpy


RECONSTRUCT_BACKENDS = (
    ('AUTO', "Auto", "The pointmap network when its weights are found (Preferences), else COLMAP"),
    ('COLMAP', "COLMAP", "SIFT features and incremental mapping: needs no weights, sparse points"),
    ('POINTMAP', "Pointmap", "DUSt3R/MASt3R pointmaps and global alignment: needs weights, dense points"),
)


class UnposedJobState(bpy.types.PropertyGroup):
    """What the sidebar shows about the engine job; written by operators/job.py only."""

    running: bpy.props.BoolProperty(name="Running", default=False)
    label: bpy.props.StringProperty(name="Job", description="Name of the operator running the job")
    progress: bpy.props.FloatProperty(name="Progress", min=0.0, max=1.0, subtype='FACTOR')
    text: bpy.props.StringProperty(name="Status", description="Current stage and step")
    message: bpy.props.StringProperty(name="Message", description="Last message from the job, or how it ended")


class UnposedSceneSettings(bpy.types.PropertyGroup):
    """The user's options, saved with the .blend file."""

    images_dir: bpy.props.StringProperty(
        name="Photos", subtype='DIR_PATH',
        description="Folder holding the photos of a COLMAP or nerfstudio scene when they are not beside it")
    export_format: bpy.props.EnumProperty(
        name="Format", default='BUNDLE',
        items=(('BUNDLE', "Unposed Bundle", "scene.json with points.ply"),
               ('COLMAP', "COLMAP", "COLMAP model (cameras, images, points3D)"),
               ('NERFSTUDIO', "nerfstudio", "transforms.json with a point cloud")))
    export_selected_only: bpy.props.BoolProperty(
        name="Selected Only", default=False, description="Export only the selected cameras")
    reconstruct_backend: bpy.props.EnumProperty(
        name="Method", default='AUTO',
        items=RECONSTRUCT_BACKENDS)
    reconstruct_frame_step: bpy.props.IntProperty(
        name="Frame Step", min=1, default=1, description="Use every N-th photo or clip frame")
    reconstruct_clip: bpy.props.StringProperty(
        name="Movie Clip", description="Reconstruct from this movie clip's frames")


classes: tuple = (UnposedJobState, UnposedSceneSettings)


def register() -> None:
    bpy.types.WindowManager.unposed_job = bpy.props.PointerProperty(type=UnposedJobState)
    bpy.types.Scene.unposed = bpy.props.PointerProperty(type=UnposedSceneSettings)


def unregister() -> None:
    del bpy.types.Scene.unposed
    del bpy.types.WindowManager.unposed_job
