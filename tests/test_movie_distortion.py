"""The MovieClip lens mapping (bridge.lens) checked against Blender's compositor Movie Distortion node.

A synthetic image of Gaussian dots at known sub-pixel positions goes through the node with a clip made by
`bridge.lens.clip_for_camera`; each dot must land where the engine's camera model (pycolmap, the reference)
distorts (or undistorts) its position.

The node moves its whole output by a translation that does not depend on the lens mapping: about 1 px
(measured here with zero coefficients, facts.md), plus a whole number of pixels that follows from how far
Blender computes the distorted frame to spill over each image edge (the node's output domain grows by
ceil(spill) pixels per side and is centred back onto the frame). So the translation is measured with zero
coefficients and removed, any remaining whole-pixel translation is removed, and what is left must be sub-pixel
exact; a wrong mapping leaves errors that no translation explains.
"""
import importlib
import os
import tempfile

import numpy as np
import pycolmap
import pytest

W, H = 200, 150
SIGMA = 1.3
# Dots every 20 px, off the pixel grid by fractions so sub-pixel errors show.
DOTS = np.array([(u, v) for u in np.arange(20.3, W - 10, 20.0) for v in np.arange(15.7, H - 10, 20.0)])
# Principal point well off the centre (so a wrong y flip shows), strong barrel distortion, tangential terms.
OPENCV = [150.0, 150.0, 97.3, 60.0, -0.2, 0.05, 0.01, -0.005]


@pytest.fixture
def unposed(addon):
    for name in ("bridge.lens", "engine.bundle"):
        importlib.import_module(f"{addon.__name__}.{name}")
    return addon


@pytest.fixture
def compositor(unposed, empty_scene):
    """(scene, Movie Distortion node) fed by an image of the dots, written out as the render result."""
    import bpy

    scene = empty_scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    v, u = np.mgrid[0:H, 0:W] + 0.5
    dots = np.zeros((H, W))
    for du, dv in DOTS:
        dots += np.exp(-((u - du) ** 2 + (v - dv) ** 2) / (2 * SIGMA ** 2))
    rgba = np.ones((H, W, 4), np.float32)
    rgba[..., :3] = dots[..., None]
    image = bpy.data.images.new("dots", W, H, float_buffer=True)
    image.pixels.foreach_set(rgba[::-1].ravel())  # Blender rows run bottom-up

    tree = bpy.data.node_groups.new("distort", "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    source = tree.nodes.new("CompositorNodeImage")
    source.image = image
    node = tree.nodes.new("CompositorNodeMovieDistortion")
    out = tree.nodes.new("NodeGroupOutput")
    tree.links.new(source.outputs["Image"], node.inputs["Image"])
    tree.links.new(node.outputs["Image"], out.inputs[0])
    scene.compositing_node_group = tree
    scene.render.use_compositing = True
    return scene, node


def _render(scene):
    import bpy

    fd, path = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        scene.render.image_settings.file_format = "OPEN_EXR"
        scene.render.filepath = path
        bpy.ops.render.render(write_still=True)
        image = bpy.data.images.load(path)
        pixels = np.empty(W * H * 4, np.float32)
        image.pixels.foreach_get(pixels)
        bpy.data.images.remove(image)
    finally:
        os.unlink(path)
    return pixels.reshape(H, W, 4)[::-1, :, 0]


def _centroids(image):
    import cv2

    n, labels = cv2.connectedComponents((image > 0.05).astype(np.uint8))
    v, u = np.mgrid[0:H, 0:W] + 0.5
    out = []
    for i in range(1, n):
        w = np.where(labels == i, image, 0.0)
        out.append([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])
    return np.array(out)


def _expected(model, params, mode):
    """Where the engine's model sends the dots: distorted positions of undistorted dots, or the reverse."""
    cam = pycolmap.Camera(model=model, width=W, height=H, params=params)
    fx, fy, cx, cy = cam.focal_length_x, cam.focal_length_y, cam.principal_point_x, cam.principal_point_y
    pin = pycolmap.Camera(model="PINHOLE", width=W, height=H, params=[fx, fy, cx, cy])
    if mode == "Distort":
        return cam.img_from_cam(np.c_[pin.cam_from_img(DOTS), np.ones(len(DOTS))])
    return pin.img_from_cam(np.c_[cam.cam_from_img(DOTS), np.ones(len(DOTS))])


def _pp_sensitivity(model, params, mode, h=0.5):
    """d(expected dot position)/d(principal point), (dots, 2, 2), by central differences."""
    i_cx, i_cy = (1, 2) if model in ("SIMPLE_RADIAL", "RADIAL") else (2, 3)
    cols = []
    for i in (i_cx, i_cy):
        hi, lo = list(params), list(params)
        hi[i] += h
        lo[i] -= h
        cols.append((_expected(model, hi, mode) - _expected(model, lo, mode)) / (2 * h))
    return np.stack(cols, axis=2)


def _residuals(scene, node, clip, expected, shift, match_px=8.0):
    """Measured minus expected dot positions (dots well inside the frame), each matched to the nearest dot found
    within `match_px` of its expected position plus `shift`."""
    node.clip = clip
    found = _centroids(_render(scene))
    inside = np.all((expected > 8) & (expected < [W - 8, H - 8]), axis=1)
    res = []
    for p in expected[inside] + shift:
        d = np.linalg.norm(found - p, axis=1)
        assert d.min() < match_px, f"no dot near {p}"
        res.append(found[d.argmin()] - p + shift)
    return np.array(res)


def _clip(unposed, model, params):
    return unposed.bridge.lens.clip_for_camera(unposed.engine.bundle.Camera(1, model, W, H, params), None, model)


def _node_offset(unposed, scene, node):
    zero = OPENCV[:4] + [0.0] * 4
    res = _residuals(scene, node, _clip(unposed, "OPENCV", zero), _expected("OPENCV", zero, "Distort"), 0.0)
    offset = res.mean(axis=0)
    assert np.abs(res - offset).max() < 0.01 and np.abs(offset).max() < 1.5  # a pure shift of about 1 px
    return offset


CASES = [
    ("OPENCV", OPENCV, "Distort"),
    ("OPENCV", OPENCV, "Undistort"),
    ("RADIAL", [150.0, 97.3, 60.0, -0.2, 0.05], "Distort"),
    ("FULL_OPENCV", OPENCV + [0.02, 0.0, 0.0, 0.0], "Distort"),
]


@pytest.mark.parametrize("model,params,mode", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_lens_mapping_matches_movie_distortion_node(unposed, compositor, model, params, mode):
    scene, node = compositor
    offset = _node_offset(unposed, scene, node)
    node.inputs["Type"].default_value = mode
    clip = _clip(unposed, model, params)
    expected = _expected(model, params, mode)
    res = _residuals(scene, node, clip, expected, offset) - offset
    whole = np.round(res.mean(axis=0))  # the node's whole-pixel domain shift (see the module docstring)
    assert np.abs(res.mean(axis=0) - whole).max() < 0.1
    assert np.abs(res - whole).max() < 0.1
    # A principal point error d moves the dots by (d/d pp of their positions) d, which distortion makes uneven
    # over the image: fit a translation plus d to the residuals. Measured d stays within about 0.15 px (this
    # measurement's resolution); a half-pixel convention error would show as 0.5 px.
    inside = np.all((expected > 8) & (expected < [W - 8, H - 8]), axis=1)
    sens = _pp_sensitivity(model, params, mode)[inside]
    design = np.concatenate([np.tile(np.eye(2), (len(sens), 1)), sens.reshape(-1, 2)], axis=1)
    fit, *_ = np.linalg.lstsq(design, res.reshape(-1), rcond=None)
    assert np.abs(fit[2:]).max() < 0.25


def test_alternative_mappings_are_clearly_worse(unposed, compositor):
    scene, node = compositor
    offset = _node_offset(unposed, scene, node)
    expected = _expected("OPENCV", OPENCV, "Distort")
    _, _, cx, cy, _, _, p1, p2 = OPENCV
    wrong_tangential = _clip(unposed, "OPENCV", OPENCV)
    wrong_tangential.tracking.camera.brown_p1, wrong_tangential.tracking.camera.brown_p2 = p1, p2
    wrong_flip = _clip(unposed, "OPENCV", OPENCV)
    wrong_flip.tracking.camera.principal_point_pixels = (cx, cy)  # y not flipped to Blender's bottom-up frame
    for clip in (wrong_tangential, wrong_flip):
        rough = np.median(_residuals(scene, node, clip, expected, offset, match_px=np.inf), axis=0)
        res = _residuals(scene, node, clip, expected, rough, match_px=np.inf)  # matched after the typical shift
        deviation = np.linalg.norm(res - np.median(res, axis=0), axis=1)
        assert np.median(deviation) > 1.0  # most dots off by over 1 px after any shift (right mapping: < 0.1 px)
