"""Demo steps for wide lenses (issue #7), in the shape of `devtools.demo`'s steps (a function of the `DemoRun`
returning a one-line summary):

  fisheye-scenes  a 180 deg equidistant and a 190 deg polynomial-lens (LENS_FIELD) fisheye scene from the generator
                  (`scenegen.generate.generate_fisheye`: a room seen from inside, photos rendered through exactly
                  the recorded lens, depth saved), each imported into Blender with `bpy.ops.unposed.import_scene`;
                  reports what Blender's camera made of each lens (the Cycles fisheye polynomial fit's RMS residual,
                  px) and where the photos are (fisheye.json)
"""
from __future__ import annotations

from devtools.demo import DemoRun, _module, _write_json

FISHEYE_SIZE = 160  # square photos
FISHEYE_VIEWS = 4
FISHEYE_SAMPLES = 4
FISHEYE_POINTS = 20000  # surface samples before visibility


def fisheye_scenes(run: DemoRun) -> str:
    import bpy
    from scenegen.generate import FISHEYE_LENSES, generate_fisheye

    c = run.config
    fit_key = _module("bridge.camera").FIT_RMS_KEY
    bundles = _module("engine.bundle")
    report, parts = {}, []
    for lens, (_, fov_deg) in FISHEYE_LENSES.items():
        bpy.ops.wm.read_homefile(use_empty=True)
        path = generate_fisheye(c.out / f"fisheye_{lens}", lens, size=FISHEYE_SIZE, n_views=FISHEYE_VIEWS,
                                samples=FISHEYE_SAMPLES, n_points=FISHEYE_POINTS, seed=c.seed)
        truth = bundles.read_bundle(path)
        bpy.ops.wm.read_homefile(use_empty=True)
        result = bpy.ops.unposed.import_scene(filepath=str(path))
        if result != {"FINISHED"}:
            raise RuntimeError(f"bpy.ops.unposed.import_scene({path}) returned {result}")
        cameras = [o.data for o in bpy.context.scene.objects if o.type == "CAMERA"]
        if len(cameras) != len(truth.images):
            raise RuntimeError(f"{path}: {len(truth.images)} images but {len(cameras)} cameras imported")
        fits = [float(data[fit_key]) for data in cameras if fit_key in data]
        blender = sorted({data.panorama_type for data in cameras})
        report[lens] = {"bundle": str(path), "photos": str(path / "images"), "fov_deg": fov_deg,
                        "model": truth.cameras[1].model, "blender": blender,
                        "fit_rms_px": max(fits) if fits else None}
        fit = f"fit RMS {max(fits):.2f} px" if fits else "no fit"
        parts.append(f"{lens} {fov_deg:.0f} deg ({report[lens]['model']}): Cycles {'/'.join(blender)}, {fit}")
    _write_json(c.out / "fisheye.json", report)
    return (f"{'; '.join(parts)}; {FISHEYE_VIEWS} photos {FISHEYE_SIZE}x{FISHEYE_SIZE} each -> "
            f"{c.out / 'fisheye_*' / 'images'}")
