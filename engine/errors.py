"""Errors the engine raises for bad input. Each message names the file, field or value at fault."""


class EngineError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback."""


class BundleError(EngineError):
    """A scene bundle (scene.json + PLYs) is missing, malformed or inconsistent."""


class CameraModelError(EngineError):
    """Unknown camera model, or parameters that do not fit the model."""


class CancelledError(EngineError):
    """The job was cancelled by the user."""
