"""Splat objects in Blender: bridge.splats and the import/export/train operators (operators/splats.py).

Renders are checked against a numpy reference of the drawing model (each splat a 3D Gaussian whose peak along a
camera ray, times its opacity, is the ray's alpha there; colours composited front to back), with the camera
placed by bridge.camera, so a splat's colour must land on the pixels the camera model projects it to.
"""
from __future__ import annotations

import os
import tempfile
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

SH_C0 = 0.28209479177387814
WIDTH, HEIGHT = 64, 48


@pytest.fixture(scope="module")
def ops(addon):
    """The splat operators, registered for this module unless the add-on registers them already."""
    module = submodule(addon, "operators.splats")
    mine = [cls for cls in module.classes if not hasattr(bpy.types, cls.__name__)]
    for cls in mine:
        bpy.utils.register_class(cls)
    yield module
    for cls in reversed(mine):
        bpy.utils.unregister_class(cls)


def submodule(addon, name: str):
    """A module of the enabled add-on, e.g. submodule(addon, "bridge.splats")."""
    return import_module(f"{addon.__name__}.{name}")


def bridge(addon):
    return submodule(addon, "bridge.splats")


def ply(addon):
    return submodule(addon, "engine.splats.ply")


def random_splats(addon, n: int, degree: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return ply(addon).Splats(means=rng.normal(size=(n, 3)), quats=rng.normal(size=(n, 4)) * 1.7,
                             log_scales=rng.normal(-3, 0.5, (n, 3)), opacity_logits=rng.normal(size=n),
                             sh0=rng.normal(size=(n, 3)), shN=rng.normal(0, 0.3, (n, k, 3)))


def write_reference_ply(path: Path, splats) -> None:
    """A 3DGS .ply as the reference trainer writes it (normals, fields in its order), with plyfile directly."""
    from plyfile import PlyData, PlyElement

    n, k = len(splats), splats.shN.shape[1]
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
             + [f"f_rest_{i}" for i in range(3 * k)] + ["opacity"] + [f"scale_{i}" for i in range(3)]
             + [f"rot_{i}" for i in range(4)])
    cols = np.concatenate([splats.means, np.zeros((n, 3)), splats.sh0,
                           splats.shN.transpose(0, 2, 1).reshape(n, 3 * k), splats.opacity_logits[:, None],
                           splats.log_scales, splats.quats], axis=1).astype(np.float32)
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = cols[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))


def file_state() -> dict:
    return {name: sorted(idb.name for idb in getattr(bpy.data, name))
            for name in ("objects", "meshes", "materials", "node_groups", "collections")}


def quat_matrix(q: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices of (N, 4) w-first quaternions (normalised)."""
    w, x, y, z = (np.asarray(q, np.float64) / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1).reshape(-1, 3, 3)


def covariances(splats) -> np.ndarray:
    m = quat_matrix(splats.quats) * np.exp(splats.log_scales.astype(np.float64))[:, None, :]
    return m @ m.transpose(0, 2, 1)


def sh_colour(addon, splats, dirs: np.ndarray) -> np.ndarray:
    """Display RGB (N, 3) of each splat seen along unit directions dirs (N, 3), before the clamp at 0."""
    k = splats.shN.shape[1]
    basis = bridge(addon).sh_basis(dirs, k)
    return 0.5 + SH_C0 * splats.sh0 + np.einsum("nk,nkc->nc", basis, splats.shN)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.maximum(c, 0.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# --------------------------------------------------------------------------------------------------------------
# Import / export


@pytest.mark.parametrize("degree", [0, 3])
def test_import_reference_layout(addon, empty_scene, ops, tmp_path, degree):
    splats = random_splats(addon, 500, degree)
    path = tmp_path / "scene.ply"
    write_reference_ply(path, splats)
    assert bpy.ops.unposed.import_splats(filepath=str(path)) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    b = bridge(addon)
    assert obj.name == "scene" and b.is_splats(obj) and obj.name in empty_scene.objects
    mesh = obj.data
    assert len(mesh.vertices) == 500
    sh_names = sorted(a.name for a in mesh.attributes if a.name.startswith("splat_sh_"))
    assert len(sh_names) == (degree + 1) ** 2

    def read(name, prop, width):
        out = np.empty(500 * width, np.float32)
        mesh.attributes[name].data.foreach_get(prop, out)
        return out.reshape(500, width)

    np.testing.assert_array_equal(read("position", "vector", 3), splats.means)
    np.testing.assert_array_equal(read(b.ROTATION_ATTR, "value", 4), splats.quats)  # as stored, unnormalised
    np.testing.assert_array_equal(read(b.LOG_SCALE_ATTR, "vector", 3), splats.log_scales)
    np.testing.assert_array_equal(read(b.OPACITY_ATTR, "value", 1)[:, 0], splats.opacity_logits)
    np.testing.assert_array_equal(read(b.SH_ATTRS[0], "vector", 3), splats.sh0)
    for k in range(splats.shN.shape[1]):
        np.testing.assert_array_equal(read(b.SH_ATTRS[k + 1], "vector", 3), splats.shN[:, k])
    assert empty_scene.cycles.transparent_max_bounces >= b.TRANSPARENT_BOUNCES
    assert empty_scene.cycles.min_transparent_bounces >= b.MIN_TRANSPARENT_BOUNCES


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_export_untouched_object_is_lossless(addon, empty_scene, ops, tmp_path, degree):
    original = tmp_path / "in.ply"
    ply(addon).write_splats(original, random_splats(addon, 300, degree, seed=degree))
    assert bpy.ops.unposed.import_splats(filepath=str(original)) == {"FINISHED"}
    exported = tmp_path / "out.ply"
    assert bpy.ops.unposed.export_splats(filepath=str(exported)) == {"FINISHED"}
    assert exported.read_bytes() == original.read_bytes()


def _similarity() -> np.ndarray:
    c, s = np.cos(0.7), np.sin(0.7)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    c, s = np.cos(-0.4), np.sin(-0.4)
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = 2.5 * rz @ rx, (1.0, -2.0, 0.5)
    return m


def _stretch() -> np.ndarray:  # non-uniform scale
    m = _similarity()
    m[:3, :3] = m[:3, :3] @ np.diag([1.0, 0.5, 1.8])
    return m


def _mirror() -> np.ndarray:
    m = _similarity()
    m[:3, :3] = m[:3, :3] @ np.diag([-1.0, 1.0, 1.0])
    return m


@pytest.mark.parametrize("make_matrix", [_similarity, _stretch, _mirror])
def test_export_applies_object_transform(addon, empty_scene, ops, tmp_path, make_matrix):
    from mathutils import Matrix

    splats = random_splats(addon, 400, 3, seed=5)
    path = tmp_path / "in.ply"
    ply(addon).write_splats(path, splats)
    assert bpy.ops.unposed.import_splats(filepath=str(path)) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    obj.matrix_world = Matrix(make_matrix().tolist())
    bpy.context.view_layer.update()
    m = np.array(obj.matrix_world, np.float64)  # as Blender holds it (float32)
    np.testing.assert_allclose(m, make_matrix(), atol=1e-6)
    assert bpy.ops.unposed.export_splats(filepath=str(tmp_path / "out.ply")) == {"FINISHED"}
    check_transformed(addon, ply(addon).read_splats(tmp_path / "out.ply"), splats, m,
                      similarity=make_matrix is _similarity)


def test_transform_with_shear(addon):
    """A sheared map (a parent's non-uniform scale over a rotated child) re-factors every covariance."""
    splats = random_splats(addon, 300, 2, seed=6)
    m = _similarity()
    m[:3, :3] = m[:3, :3] @ np.array([[1.0, 0.3, 0.0], [0.0, 0.5, 0.0], [0.2, 0.0, 1.8]])
    check_transformed(addon, bridge(addon).transform_splats(splats, m), splats, m, similarity=False)


def check_transformed(addon, got, splats, m: np.ndarray, similarity: bool) -> None:
    a = m[:3, :3]
    np.testing.assert_allclose(got.means, splats.means @ a.T + m[:3, 3], rtol=1e-5, atol=1e-5)
    want_cov = a @ covariances(splats) @ a.T
    np.testing.assert_allclose(covariances(got), want_cov, rtol=1e-4, atol=1e-4 * np.abs(want_cov).max())
    np.testing.assert_array_equal(got.opacity_logits, splats.opacity_logits)
    np.testing.assert_array_equal(got.sh0, splats.sh0)
    u, _, vt = np.linalg.svd(a)
    ortho = u @ vt
    if similarity:  # quaternions composed, keeping their (unnormalised) length
        np.testing.assert_allclose(quat_matrix(got.quats), ortho @ quat_matrix(splats.quats), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got.quats, axis=1), np.linalg.norm(splats.quats, axis=1),
                                   rtol=1e-5)
        np.testing.assert_allclose(got.log_scales, splats.log_scales + np.log(2.5), atol=1e-5)
    # View-dependent colour: seen along world direction d, the exported splat looks as the original did along
    # ortho^T d (for the similarity this is exact; otherwise ortho is the rotation/reflection part of A).
    dirs = np.random.default_rng(1).normal(size=(len(splats), 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    np.testing.assert_allclose(sh_colour(addon, got, dirs), sh_colour(addon, splats, dirs @ ortho), atol=1e-5)


def test_sh_basis_matches_engine(addon):
    torch = pytest.importorskip("torch")
    sh = submodule(addon, "engine.splats.sh")
    dirs = np.random.default_rng(2).normal(size=(50, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    want = sh.sh_basis(3, torch.tensor(dirs)).numpy()
    np.testing.assert_allclose(bridge(addon).sh_basis(dirs), want[:, 1:], atol=1e-12)
    np.testing.assert_allclose(bridge(addon).sh_basis(dirs, 3), want[:, 1:4], atol=1e-12)


def _garbage(path: Path) -> str:
    path.write_bytes(b"this is not a ply file at all")
    return "not a readable PLY"


def _no_rotation(path: Path) -> str:
    from plyfile import PlyData, PlyElement

    v = np.zeros(4, dtype=[(n, "f4") for n in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                                "scale_0", "scale_1", "scale_2")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))
    return "lacks field(s) rot_0, rot_1, rot_2, rot_3"


def _odd_sh(path: Path) -> str:
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(10)], "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    PlyData([PlyElement.describe(np.ones(4, dtype=[(n, "f4") for n in names]), "vertex")]).write(str(path))
    return "10 f_rest_* fields"


def _nan_mean(path: Path) -> str:
    from plyfile import PlyData

    data = PlyData.read(str(path), mmap=False)  # it is rewritten in place
    data["vertex"].data["y"][3] = np.nan
    data.write(str(path))
    return "NaN or infinite means"


def _empty(path: Path) -> str:
    from plyfile import PlyData

    data = PlyData.read(str(path), mmap=False)  # it is rewritten in place
    data["vertex"].data = data["vertex"].data[:0]
    data.write(str(path))
    return "holds no splats"


def _missing(path: Path) -> str:
    path.unlink()
    return "not found"


@pytest.mark.parametrize("breaker", [_garbage, _no_rotation, _odd_sh, _nan_mean, _empty, _missing])
def test_malformed_ply_is_refused_and_changes_nothing(addon, empty_scene, ops, tmp_path, breaker):
    path = tmp_path / "bad.ply"
    write_reference_ply(path, random_splats(addon, 8, 1))
    expected = breaker(path)
    bounces = (empty_scene.cycles.transparent_max_bounces, empty_scene.cycles.min_transparent_bounces)
    before = file_state()
    with pytest.raises(RuntimeError) as err:
        bpy.ops.unposed.import_splats(filepath=str(path))
    assert expected in str(err.value) and "bad.ply" in str(err.value)
    assert file_state() == before
    assert (empty_scene.cycles.transparent_max_bounces, empty_scene.cycles.min_transparent_bounces) == bounces


def test_display_limit_caps_the_viewport_only(addon, empty_scene):
    b = bridge(addon)
    obj = b.splats_object("many", random_splats(addon, 1000, 0), display_limit=300)
    empty_scene.collection.objects.link(obj)

    def drawn() -> int:
        depsgraph = bpy.context.evaluated_depsgraph_get()
        depsgraph.update()
        return sum(1 for inst in depsgraph.object_instances if inst.is_instance and inst.parent.original == obj)

    assert drawn() == 250  # every 4th: at most 300
    b.set_display_limit(obj, 5000)
    assert b.get_display_limit(obj) == 5000 and drawn() == 1000
    b.set_display_limit(obj, 1)
    assert drawn() == 1
    assert len(b.splats_from_object(obj)) == 1000  # the full data stays on the object


def test_export_refuses_broken_object(addon, empty_scene, ops, tmp_path):
    path = tmp_path / "in.ply"
    ply(addon).write_splats(path, random_splats(addon, 10, 0))
    assert bpy.ops.unposed.import_splats(filepath=str(path)) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    obj.data.attributes.remove(obj.data.attributes[bridge(addon).ROTATION_ATTR])
    with pytest.raises(RuntimeError, match="'splat_rotation'"):
        bpy.ops.unposed.export_splats(filepath=str(tmp_path / "out.ply"))
    assert not (tmp_path / "out.ply").exists()
    plain = bpy.data.objects.new("plain", bpy.data.meshes.new("plain"))
    empty_scene.collection.objects.link(plain)
    bpy.context.view_layer.objects.active = plain
    assert not bpy.ops.unposed.export_splats.poll()


# --------------------------------------------------------------------------------------------------------------
# Drawing


def _render_setup(addon, scene, cam_from_world: np.ndarray, fx: float = 60.0):
    """A Cycles scene with a transparent film and a camera placed by bridge.camera; returns the engine camera."""
    camera_bridge = submodule(addon, "bridge.camera")
    Camera = submodule(addon, "engine.bundle").Camera
    camera = Camera(1, "PINHOLE", WIDTH, HEIGHT, [fx, fx, WIDTH / 2 + 0.5, HEIGHT / 2 - 0.25])
    obj = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(obj)
    camera_bridge.apply_camera(scene, obj, camera)
    camera_bridge.apply_pose(obj, cam_from_world)
    scene.camera = obj
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", 4, False
    scene.cycles.filter_width = 0.01  # each sample at the pixel centre, like the reference
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    return camera


def _render(scene) -> np.ndarray:
    """(H, W, 4) scene-linear premultiplied RGBA, row 0 at the top."""
    fd, path = tempfile.mkstemp(suffix=".exr")
    os.close(fd)
    try:
        scene.render.image_settings.file_format = "OPEN_EXR"
        scene.render.filepath = path
        bpy.ops.render.render(write_still=True)
        image = bpy.data.images.load(path)
        width, height = image.size
        pixels = np.empty(width * height * 4, np.float32)
        image.pixels.foreach_get(pixels)
        bpy.data.images.remove(image)
    finally:
        os.unlink(path)
    return pixels.reshape(height, width, 4)[::-1]


def reference_render(addon, splats, camera, cam_from_world: np.ndarray) -> np.ndarray:
    """The drawing model in numpy: premultiplied linear RGBA (H, W, 4) at pixel centres."""
    b = bridge(addon)
    fx, fy, cx, cy, _ = camera.split()
    u, v = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    rays_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1).reshape(-1, 3)
    r, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    origin, rays = -r.T @ t, rays_cam @ r
    centre_dirs = splats.means - origin
    colours = srgb_to_linear(sh_colour(addon, splats, centre_dirs / np.linalg.norm(centre_dirs, axis=1,
                                                                                      keepdims=True)))
    whiten = np.linalg.inv(quat_matrix(splats.quats) * np.exp(splats.log_scales.astype(np.float64))[:, None, :])
    layers = []
    for i in range(len(splats)):
        o = whiten[i] @ (origin - splats.means[i])
        d = rays @ whiten[i].T
        dd = np.sum(d * d, 1)
        depth = -(d @ o) / dd
        miss2 = o @ o - (d @ o) ** 2 / dd
        alpha = np.minimum(b.ALPHA_MAX, 1 / (1 + np.exp(-splats.opacity_logits[i])) * np.exp(-0.5 * miss2))
        # Inside the drawn cube (whitened |w|_inf <= EXTENT_SIGMAS) somewhere along the ray: slab test.
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = (-b.EXTENT_SIGMAS - o) / d, (b.EXTENT_SIGMAS - o) / d
        hit = np.nanmax(np.minimum(t0, t1), 1) <= np.nanmin(np.maximum(t0, t1), 1)
        alpha = np.where(hit & (alpha >= b.ALPHA_MIN), alpha, 0.0)
        layers.append((depth, alpha, colours[i]))
    rgb, transmit = np.zeros((len(rays), 3)), np.ones(len(rays))
    order = np.argsort(np.stack([d for d, _, _ in layers]), axis=0)
    for rank in range(len(layers)):
        for i in range(len(layers)):
            sel = order[rank] == i
            alpha = layers[i][1][sel]
            rgb[sel] += (transmit[sel] * alpha)[:, None] * layers[i][2]
            transmit[sel] *= 1 - alpha
    return np.concatenate([rgb, 1 - transmit[:, None]], 1).reshape(camera.height, camera.width, 4)


def _look_at(centre, target) -> np.ndarray:
    centre, target = np.asarray(centre, float), np.asarray(target, float)
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    r = np.stack([x, np.cross(z, x), z])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, -r @ centre
    return out


def _project(camera, cam_from_world, xyz) -> tuple[int, int]:
    fx, fy, cx, cy, _ = camera.split()
    p = cam_from_world[:3, :3] @ xyz + cam_from_world[:3, 3]
    return int(fx * p[0] / p[2] + cx), int(fy * p[1] / p[2] + cy)


def test_render_colours_positions_and_opacity(addon, empty_scene, ops):
    """Three large splats (red and green opaque, one of them elongated and turned; blue at 27 % opacity): the
    render matches the reference pixel for pixel, each colour sits where the camera projects its mean, the faint
    one is fainter, and a viewport display limit of 1 still renders all three."""
    Splats = ply(addon).Splats
    display = np.array([[0.9, 0.15, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.95]])
    turn = np.array([np.cos(np.pi / 12), 0.0, 0.0, np.sin(np.pi / 12)])  # 30 degrees about z
    splats = Splats(means=[[-1.2, 0.4, 0.3], [1.1, 0.0, -0.2], [0.0, -0.9, 0.5]],
                    quats=[[2.0, 0.0, 0.0, 0.0], turn * 0.5, [1.0, 0.0, 0.0, 0.0]],
                    log_scales=np.log([[0.25, 0.25, 0.25], [0.45, 0.12, 0.15], [0.3, 0.3, 0.3]]),
                    opacity_logits=[6.0, 6.0, -1.0], sh0=(display - 0.5) / SH_C0, shN=np.zeros((3, 0, 3)))
    b = bridge(addon)
    obj = b.splats_object("three", splats, display_limit=1)
    empty_scene.collection.objects.link(obj)
    b.prepare_render_settings(empty_scene)
    pose = _look_at([0.3, -6.0, 1.2], [0.0, 0.0, 0.0])
    camera = _render_setup(addon, empty_scene, pose)

    depsgraph = bpy.context.evaluated_depsgraph_get()  # the viewport's: capped at one splat
    assert sum(1 for inst in depsgraph.object_instances if inst.is_instance and inst.parent.original == obj) == 1
    assert len(obj.data.vertices) == 3  # the full data stays on the object

    got = _render(empty_scene)
    want = reference_render(addon, splats, camera, pose)
    # Only where a cube's polygon edge crosses a pixel centre may the two differ, by little.
    assert np.abs(got - want).max() < 0.04, f"worst pixel off by {np.abs(got - want).max():.3f}"
    assert np.abs(got - want).mean() < 2e-4
    for i in range(3):
        u, v = _project(camera, pose, splats.means[i])
        alpha = min(b.ALPHA_MAX, 1 / (1 + np.exp(-splats.opacity_logits[i])))
        np.testing.assert_allclose(got[v, u, :3], alpha * srgb_to_linear(display[i]), atol=0.03)
        np.testing.assert_allclose(got[v, u, 3], alpha, atol=0.03)
    u, v = _project(camera, pose, splats.means[2])
    assert got[v, u, 3] < 0.3 and got[v, u, 2] < 0.35 * srgb_to_linear(display[2, 2])


def test_view_dependent_colour_follows_camera_and_object(addon, empty_scene, ops):
    """A splat with SH degree 3: its rendered colour is the SH expansion toward the camera, also after the object
    is rotated, scaled and moved (the colour rotates with it, as the exported file says)."""
    from mathutils import Matrix

    rng = np.random.default_rng(3)
    Splats = ply(addon).Splats
    splats = Splats(means=[[0.2, -0.1, 0.3]], quats=[[1.0, 0.2, -0.1, 0.3]], log_scales=np.log([[0.8, 0.6, 0.7]]),
                    opacity_logits=[8.0], sh0=np.zeros((1, 3)), shN=rng.normal(0, 0.12, (1, 15, 3)))
    b = bridge(addon)
    obj = b.splats_object("one", splats)
    empty_scene.collection.objects.link(obj)
    b.prepare_render_settings(empty_scene)
    pose = _look_at([3.0, -4.0, 2.5], splats.means[0])
    camera = _render_setup(addon, empty_scene, pose, fx=20.0)
    centre = (HEIGHT // 2, WIDTH // 2)
    got = _render(empty_scene)[centre]
    want = reference_render(addon, splats, camera, pose)[centre]
    np.testing.assert_allclose(got, want, atol=0.01)

    obj.matrix_world = Matrix(_similarity().tolist())
    moved = b.splats_from_object(obj)
    pose = _look_at([-2.0, 5.0, -3.0], moved.means[0])
    camera = _render_setup(addon, empty_scene, pose, fx=20.0)
    got = _render(empty_scene)[centre]
    want = reference_render(addon, moved, camera, pose)[centre]
    np.testing.assert_allclose(got, want, atol=0.01)
    # Had the SH not turned with the object, the colour would differ by well over the tolerance.
    direction = moved.means[0] + pose[:3, :3].T @ pose[:3, 3]
    unturned = srgb_to_linear(sh_colour(addon, splats, (direction / np.linalg.norm(direction))[None]))[0]
    assert np.abs(want[:3] - b.ALPHA_MAX * unturned).max() > 0.05


# --------------------------------------------------------------------------------------------------------------
# Training through the engine


def _tiny_bundle(addon, folder: Path) -> Path:
    """Three 32x24 PINHOLE views of a few coloured blobs, with a point cloud on them."""
    import cv2

    bundle, points = submodule(addon, "engine.bundle"), submodule(addon, "engine.ply")
    rng = np.random.default_rng(4)
    xyz = rng.normal(0, 0.4, (300, 3))
    rgb = rng.integers(40, 220, (300, 3))
    camera = bundle.Camera(1, "PINHOLE", 32, 24, [30.0, 30.0, 16.0, 12.0])
    (folder / "photos").mkdir(parents=True)
    images = []
    for i, angle in enumerate((0.0, 0.5, 1.0)):
        pose = _look_at([4 * np.sin(angle), -4 * np.cos(angle), 1.0], [0.0, 0.0, 0.0])
        cam = xyz @ pose[:3, :3].T + pose[:3, 3]
        u, v = 30 * cam[:, 0] / cam[:, 2] + 16, 30 * cam[:, 1] / cam[:, 2] + 12
        photo = np.full((24, 32, 3), 30, np.uint8)
        for x, y, c in zip(u, v, rgb):
            cv2.circle(photo, (int(x), int(y)), 1, tuple(int(k) for k in c[::-1]), -1)
        path = folder / "photos" / f"view{i}.png"
        cv2.imwrite(str(path), photo)
        images.append(bundle.Image(i + 1, path.name, 1, pose, path=path))
    scene = bundle.Scene({1: camera}, images, points.Points(xyz, rgb), units="meters")
    return bundle.write_bundle(scene, folder / "bundle")


def test_train_splats_updates_cameras_in_place(addon, empty_scene, ops, tmp_path):
    """The real engine job: the imported collection keeps its camera objects, which take the trained bundle's
    cameras (here converted to OPENCV) and poses; the splat object is added, and replaced by a second run (which
    trains on half-size photos: the cameras still come back at the photos' size)."""
    read_bundle = submodule(addon, "engine.bundle").read_bundle
    camera_from_blender = submodule(addon, "bridge.camera").camera_from_blender
    bundle = _tiny_bundle(addon, tmp_path)
    assert bpy.ops.unposed.import_scene(filepath=str(bundle)) == {"FINISHED"}
    collection = bpy.data.collections["bundle"]
    cameras = {o.name: o.session_uid for o in collection.objects if o.type == "CAMERA"}
    out = tmp_path / "trained"
    for run in range(2):
        assert bpy.ops.unposed.train_splats(filepath=str(bundle), iterations=3, lens="OPENCV", hold_out=0,
                                            downscale=run + 1, intrinsics_after_tracks=0.5 * run,
                                            rotations_after_tracks=0.5 * run,
                                            out_path=str(out)) == {"FINISHED"}
        trained = read_bundle(out)
        assert [(c.width, c.height) for c in trained.cameras.values()] == [(32, 24)]
        assert {o.name: o.session_uid for o in collection.objects if o.type == "CAMERA"} == cameras
        for image in trained.images:
            want = trained.camera_of(image)
            got, pose = camera_from_blender(empty_scene, collection.objects[image.name])
            assert got.model == want.model == "OPENCV"
            np.testing.assert_allclose(got.params, want.params, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(pose, image.cam_from_world, atol=1e-5)
        splat_objects = [o for o in bpy.data.objects if bridge(addon).is_splats(o)]
        assert len(splat_objects) == 1 and splat_objects[0].name in collection.objects
        assert len(splat_objects[0].data.vertices) == len(ply(addon).read_splats(out / trained.extras["splats"]))


def test_train_splats_errors_change_nothing(addon, empty_scene, ops, tmp_path):
    bundle = _tiny_bundle(addon, tmp_path)
    assert bpy.ops.unposed.import_scene(filepath=str(bundle)) == {"FINISHED"}
    before = file_state()
    poses = {o.name: np.array(o.matrix_world) for o in empty_scene.objects}
    with pytest.raises(RuntimeError, match="not a scene bundle"):
        bpy.ops.unposed.train_splats(filepath=str(tmp_path / "photos"))
    (tmp_path / "photos" / "view1.png").unlink()  # the engine finds a photo missing
    with pytest.raises(RuntimeError, match="view1.png"):
        bpy.ops.unposed.train_splats(filepath=str(bundle), iterations=3, hold_out=0,
                                     out_path=str(tmp_path / "trained"))
    assert file_state() == before and not (tmp_path / "trained").exists()
    assert all(np.array_equal(np.array(o.matrix_world), poses[o.name]) for o in empty_scene.objects)
