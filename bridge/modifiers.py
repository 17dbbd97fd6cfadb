"""Geometry Nodes modifiers that Unposed adds: finding one of their inputs on an object."""
from __future__ import annotations

import bpy


def modifier_input(obj: bpy.types.Object, tag: str, name: str) -> tuple[bpy.types.NodesModifier, str]:
    """The nodes modifier of `obj` whose node group carries custom property `tag`, and the key of its input
    socket called `name` (set it with `mod[key] = value`)."""
    for mod in obj.modifiers:
        if mod.type == "NODES" and mod.node_group is not None and mod.node_group.get(tag):
            for item in mod.node_group.interface.items_tree:
                if item.item_type == "SOCKET" and item.in_out == "INPUT" and item.name == name:
                    return mod, item.identifier
    raise ValueError(f"object {obj.name!r} has no Unposed modifier with a {name!r} input")
