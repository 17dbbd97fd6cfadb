"""Scene generator: procedural Blender scenes with known cameras, rendered with Cycles, written as ground-truth
scene bundles. Used by tests, the demo and benchmarks; needs `bpy` (Blender as a Python module) and is not part
of the extension build.

    from scenegen import generate
    bundle = generate("out/room", kind="room", n_views=8, width=320, height=240, seed=0)

or `python -m scenegen --out DIR --kind room --views 8`. The pieces are usable on their own: `build_scene`
(scenes), `intrinsics` / `make_cameras` (rigs), `generate_fisheye` and `lenses` (exact fisheye and learned-lens
ground truth), `configure` / `camera_objects` / `render_views` (render) and
`coloured_points` (points). engine/bridge code is reached through the enabled add-on (`scenegen.addon.package`).
"""
from . import addon  # first: it isolates Blender's user settings when bpy is not imported yet
from . import lenses
from .generate import FISHEYE_LENSES, generate, generate_fisheye
from .points import coloured_points
from .render import Render, camera_objects, configure, render_view, render_views
from .rigs import View, intrinsics, look_at, make_cameras
from .scenes import BUILDERS, BuiltScene, build_scene

__all__ = ["BUILDERS", "FISHEYE_LENSES", "addon", "generate_fisheye", "lenses", "BuiltScene", "Render", "View", "build_scene", "camera_objects", "coloured_points",
           "configure", "generate", "intrinsics", "look_at", "make_cameras", "render_view", "render_views"]
