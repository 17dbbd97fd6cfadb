"""Single-image calibration: intrinsics (and, from vanishing points, a rotation) from one photo.

Every method returns a `result.CalibrationResult`: `exif` (photo metadata), `vanishing` (Manhattan vanishing
points from line segments), `dmcalib` (the learned diffusion calibrator, when its weights are installed) and
`auto`, which picks among them and says why. `image_io` loads photos for all of them.
"""
