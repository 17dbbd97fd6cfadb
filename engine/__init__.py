"""Unposed engine: camera models, scene bundles, calibration, reconstruction and splat training.

Standalone (never imports bpy) and run as `python -m engine <command>`. Only relative imports are used so the
package also works inside the Blender add-on. Heavy dependencies (torch, pycolmap, cv2) are imported lazily by
the modules that need them, so importing `engine` itself is cheap.
"""
__version__ = "0.1.0"
