"""The one place where engine results become Blender data and back (cameras, clips, point clouds, splats)."""
