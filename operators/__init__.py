"""Operators (bpy.ops.unposed.*). Thin: they gather options, run jobs and call bridge/ to change the scene."""
import bpy

from . import engine_ops, io, match_camera, reconstruct, splats

classes: tuple = (*engine_ops.classes, *io.classes, *match_camera.classes, *reconstruct.classes, *splats.classes)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
