"""Running engine commands in a subprocess from Blender: progress, cancel, engine environment."""
