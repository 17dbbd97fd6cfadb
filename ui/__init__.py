"""Sidebar panel, add-on preferences and scene settings."""
import bpy

classes: tuple = ()


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
