"""Sidebar panel, add-on preferences and scene settings."""
import bpy

from . import panel, preferences, properties

classes: tuple = (*preferences.classes, *properties.classes, *panel.classes)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    properties.register()


def unregister() -> None:
    properties.unregister()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
