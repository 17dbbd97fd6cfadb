"""The learned lens LENS_FIELD (engine/lens_field.py, its projection in engine/projection.py): invertibility before
and after training, certified Lipschitz bounds, gradients, fits to parametric and beyond-parametric lenses against
their ground truth, parameter validation, the bundle's lens_network file, COLMAP export and splat projection."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import projection
from engine.bundle import Camera, Image, Scene, read_bundle, write_bundle
from engine.camera_models import check_params, get_model, lens_field_length
from engine.errors import BundleError, CameraModelError
from engine.interop import InteropError, colmap
from engine.lens_field import (LIPSCHITZ, LensField, field_camera, lens_field_params, load_network,
                               save_network)
from engine.splats.cameras import convert_camera
from engine.splats.project import EPS2D, project_gaussians, quat_to_rotmat

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread is faster than two on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image_pixels(width: int, height: int, n: int = 61) -> torch.Tensor:
    """A dense pixel grid offset from the fit's samples (which include the borders)."""
    u = torch.linspace(0.3, width - 0.3, n, dtype=F64)
    v = torch.linspace(0.3, height - 0.3, n, dtype=F64)
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)


def round_trip_error(params: torch.Tensor, width: int, height: int) -> tuple[float, float]:
    """(max px error of project(unproject(pixel)) over the valid pixels, fraction of pixels valid)."""
    pixels = image_pixels(width, height)
    rays, valid = projection.unproject_directions("LENS_FIELD", params, pixels)
    back, ok = projection.project("LENS_FIELD", params, rays[valid])
    assert bool(ok.all())
    return float((back - pixels[valid]).norm(dim=-1).max()), float(valid.double().mean())


def node_lipschitz(d: torch.Tensor, radius: float) -> float:
    """Largest difference quotient of the node displacements along x or y: the bilinear field's Jacobian columns
    are averages of these, so its spectral norm is at most sqrt(2) times this."""
    h = 2 * radius / (d.shape[0] - 1)
    return float(max((d[:, 1:] - d[:, :-1]).norm(dim=-1).max(), (d[1:] - d[:-1]).norm(dim=-1).max()) / h)


# A 185-degree (diagonal) OPENCV_FISHEYE with all of k1..k4 set, centre off the image centre.
W = H = 96
F_FISHEYE = math.hypot(W, H) / math.radians(185)
FISHEYE = Camera(1, "OPENCV_FISHEYE", W, H, [F_FISHEYE, F_FISHEYE * 1.01, W / 2 + 1.3, H / 2 - 0.7,
                                            0.02, -0.005, 0.001, -0.0001])


@pytest.fixture(scope="module")
def fitted():
    return field_camera(FISHEYE, grid=17, steps=60)


def test_fit_reproduces_opencv_fisheye_and_inverts(fitted):
    camera, field, rms = fitted
    assert camera.model == "LENS_FIELD" and (camera.width, camera.height) == (W, H)
    check_params(camera.model, camera.params)
    params = torch.tensor(camera.params, dtype=F64)
    pixels = image_pixels(W, H)
    rays, valid = projection.unproject_directions(FISHEYE.model, torch.tensor(FISHEYE.params, dtype=F64), pixels)
    assert bool(valid.all())
    fitted_pixels, ok = projection.project("LENS_FIELD", params, rays)
    err = (fitted_pixels - pixels).norm(dim=-1)
    assert bool(ok.all()) and rms < 0.05
    assert float(err.square().mean().sqrt()) < 0.05 and float(err.max()) < 0.2
    max_err, covered = round_trip_error(params, W, H)
    assert max_err < 1e-3 and covered == 1.0
    assert field.lipschitz_bound() <= LIPSCHITZ + 1e-9
    assert node_lipschitz(field.displacements().detach(), field.radius) * math.sqrt(2) < 1


def test_training_keeps_the_field_invertible():
    """Adam with a large learning rate on an objective that asks for a steep, twisted field: the certified bounds
    hold throughout, the node field stays a contraction, and project o unproject stays exact."""
    torch.manual_seed(3)
    field = LensField(grid=9, radius=1.4, hidden=16, blocks=2).double()
    nodes = field.nodes * field.radius
    target = 3.0 * torch.stack([nodes[:, 1], -nodes[:, 0]], -1) * nodes.norm(dim=-1, keepdim=True)  # a steep swirl
    optimiser = torch.optim.Adam(field.parameters(), lr=0.05)
    for _ in range(40):
        optimiser.zero_grad()
        (field(nodes) - target).square().sum(-1).mean().backward()
        optimiser.step()
        assert all(c < 1 for c in field.block_lipschitz()) and field.lipschitz_bound() <= LIPSCHITZ + 1e-9
    d = field.displacements().detach()
    assert float(d.abs().max()) > 0.1  # it did move
    assert node_lipschitz(d, field.radius) <= LIPSCHITZ + 1e-9
    params = field.params(40.0, 41.0, 50.0, 47.0).detach()
    max_err, covered = round_trip_error(params, 100, 96)
    assert max_err < 1e-3 and covered > 0.5


def test_fit_beyond_k1_k4():
    """Equidistant + strong theta^9/theta^11 terms + decentring, 190 degrees diagonal: the ground truth is the
    analytic function (sampled on a fine 65 x 65 LENS_FIELD to have a Camera). A 17 x 17 field fits it within
    0.05 px RMS (measured 0.016); the least-squares OPENCV_FISHEYE (k1..k4, no decentring) is at least 4x worse
    (measured 0.23 px)."""
    w = h = 96
    f = math.hypot(w, h) / math.radians(190)
    cx, cy = w / 2 + 0.8, h / 2 - 0.5

    def lens(a, b):
        t2 = a * a + b * b
        s = 0.002 * t2 ** 4 - 0.0006 * t2 ** 5
        return a * s + 0.003 * (t2 + 2 * a * a) - 0.004 * a * b, b * s - 0.002 * (t2 + 2 * b * b) + 0.006 * a * b

    t = torch.linspace(-1.9, 1.9, 65, dtype=F64)
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    truth = Camera(1, "LENS_FIELD", w, h, lens_field_params(f, f, cx, cy, 1.9, torch.stack(lens(gx, gy), -1)).tolist())
    pixels = image_pixels(w, h)
    rays, valid = projection.unproject_directions("LENS_FIELD", torch.tensor(truth.params, dtype=F64), pixels)
    rays = rays[valid]
    a, b = projection.equidistant_from_cam(rays)
    da, db = lens(a, b)
    expected = torch.stack([f * (a + da) + cx, f * (b + db) + cy], -1)

    def rms(camera: Camera) -> float:
        got, ok = projection.project(camera.model, torch.tensor(camera.params, dtype=F64), rays)
        assert bool(ok.all())
        return float((got - expected).square().sum(-1).mean().sqrt())

    camera, _, fit_rms = field_camera(truth, grid=17)
    opencv, _ = convert_camera(truth, "OPENCV_FISHEYE")
    field_error, opencv_error = rms(camera), rms(opencv)
    assert fit_rms < 0.05 and field_error < 0.05, (fit_rms, field_error)
    assert opencv_error > 4 * field_error and opencv_error > 0.2, (opencv_error, field_error)


def test_fit_rescales_the_focal_for_a_steep_lens():
    """A stereographic lens (r = 2 f tan(theta / 2)) over 180 degrees horizontally, 204 diagonally: relative to the
    camera's focal its radial slope reaches 2.5, beyond what the field may bend (Lipschitz 0.7), so the fit scales
    the focal (x 1.8 here) and fits the rest within 0.1 px RMS (measured 0.065)."""
    w, h = 96, 72
    f = w / 4  # r(90 deg) = 2 f tan(45 deg) = w / 2

    def lens(a, b):
        t = torch.sqrt(a * a + b * b).clamp_min(1e-12)
        s = 2 * torch.tan(t / 2) / t - 1
        return a * s, b * s

    t = torch.linspace(-1.75, 1.75, 65, dtype=F64)
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    truth = Camera(1, "LENS_FIELD", w, h, lens_field_params(f, f, w / 2, h / 2, 1.75,
                                                            torch.stack(lens(gx, gy), -1)).tolist())
    camera, field, rms = field_camera(truth, grid=17)
    assert rms < 0.1 and camera.params[0] > 1.5 * f
    assert field.lipschitz_bound() <= LIPSCHITZ + 1e-9
    assert round_trip_error(torch.tensor(camera.params, dtype=F64), w, h) == (pytest.approx(0, abs=1e-3), 1.0)


def small_field(seed: int) -> LensField:
    torch.manual_seed(seed)
    field = LensField(grid=5, radius=1.3, hidden=4, blocks=1).double()
    with torch.no_grad():  # nonzero everywhere, so every weight matters
        for p in field.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return field


def test_gradcheck_through_the_field():
    field = small_field(0)
    names, weights = zip(*field.named_parameters())
    points = torch.tensor([[0.3, -0.2, 1.0], [-0.8, 0.5, 0.4], [0.9, 0.7, -0.1]], dtype=F64, requires_grad=True)
    fx = torch.tensor(30.0, dtype=F64, requires_grad=True)
    cx = torch.tensor(32.0, dtype=F64, requires_grad=True)

    def pixels(fx, cx, points, *values):
        state = dict(zip(names, values))
        d = torch.func.functional_call(field, state, (field.nodes * field.radius,)).reshape(5, 5, 2)
        return projection.project("LENS_FIELD", lens_field_params(fx, 31.0, cx, 30.0, field.radius, d), points)[0]

    assert torch.autograd.gradcheck(pixels, (fx, cx, points, *[w.detach().requires_grad_() for w in weights]))

    # unprojection's implicit-function gradients, w.r.t. every parameter but n (an integer) and the pixels
    params = field.params(30.0, 31.0, 32.0, 30.0).detach()
    free = torch.cat([params[:5], params[6:]]).requires_grad_()
    pix = torch.tensor([[40.0, 25.0], [10.0, 44.0], [31.0, 31.0]], dtype=F64, requires_grad=True)

    def rays(free, pix):
        full = torch.cat([free[:5], params[5:6], free[5:]])
        return projection.unproject_directions("LENS_FIELD", full, pix)

    assert bool(rays(free, pix)[1].all())
    assert torch.autograd.gradcheck(lambda p, x: rays(p, x)[0], (free, pix))


def test_distortion_jacobian_matches_autograd():
    field = small_field(1)
    params = field.params(30.0, 31.0, 32.0, 30.0).detach()
    model = get_model("LENS_FIELD")
    extra = projection.split_params("LENS_FIELD", params)[4]
    x = (torch.rand(50, dtype=F64) * 2.4 - 1.2).requires_grad_()
    y = (torch.rand(50, dtype=F64) * 2.4 - 1.2).requires_grad_()
    xd, yd, (j00, j01, j10, j11) = projection.distortion_jacobian(model, extra, x, y)
    for value, (dx, dy) in ((xd, (j00, j01)), (yd, (j10, j11))):
        gx, gy = torch.autograd.grad(value.sum(), (x, y), retain_graph=True)
        assert torch.allclose(gx, dx, atol=1e-12) and torch.allclose(gy, dy, atol=1e-12)
    # batched cameras: each reads its own grid
    other = small_field(2).params(30.0, 31.0, 32.0, 30.0).detach()
    both = torch.stack([params, other])[:, None, :]
    points = torch.randn(2, 20, 3, dtype=F64)
    batched = projection.project("LENS_FIELD", both, points)[0]
    assert torch.allclose(batched[0], projection.project("LENS_FIELD", params, points[0])[0], atol=1e-12)
    assert torch.allclose(batched[1], projection.project("LENS_FIELD", other, points[1])[0], atol=1e-12)


@pytest.mark.parametrize("change, message", [
    (lambda p: p[:-1], r"6 \+ 2 n\^2 parameters"),
    (lambda p: p[:5], r"6 \+ 2 n\^2 parameters"),
    (lambda p: p[:4] + [1.2, 2.5] + p[6:], r"parameter n .* must be a whole number .* \(n = 3\), got 2\.5"),
    (lambda p: p[:4] + [1.2, 4.0] + p[6:], r"n = 3\), got 4\.0"),
    (lambda p: p[:4] + [0.0] + p[5:], r"parameter R .* must be positive, got 0\.0"),
    (lambda p: p[:10] + [float("nan")] + p[11:], r"parameter d_4 is not finite"),
    (lambda p: [-1.0] + p[1:], r"focal length must be positive"),
])
def test_malformed_parameter_vectors_are_named(change, message):
    good = [30.0, 30.0, 32.0, 32.0, 1.2, 3.0] + [0.0] * 18
    check_params("LENS_FIELD", good)
    with pytest.raises(CameraModelError, match=message):
        check_params("LENS_FIELD", change(good))
    assert len(good) == lens_field_length(3)


def test_malformed_parameter_tensors_are_named():
    params = torch.tensor([30.0, 30.0, 32.0, 32.0, 1.2, 3.0] + [0.0] * 18, dtype=F64)
    point = torch.tensor([0.1, 0.2, 1.0], dtype=F64)
    with pytest.raises(CameraModelError, match=r"6 \+ 2 n\^2 parameters .* got 23"):
        projection.project("LENS_FIELD", params[:-1], point)
    bad_n = params.clone()
    bad_n[5] = 4.0
    with pytest.raises(CameraModelError, match=r"parameter n \(grid size\) must be 3 for 24 parameters"):
        projection.unproject_directions("LENS_FIELD", bad_n, point[:2])
    bad_r = params.clone()
    bad_r[4] = -1.0
    with pytest.raises(CameraModelError, match="parameter R"):
        projection.project("LENS_FIELD", bad_r, point)
    with pytest.raises(CameraModelError, match="variable number of parameters"):
        get_model("LENS_FIELD").num_params
    with pytest.raises(CameraModelError, match=r"shape \(n, n, 2\)"):
        lens_field_params(1.0, 1.0, 0.0, 0.0, 1.0, torch.zeros(3, 4, 2))


def lens_scene(tmp_path, camera: Camera) -> Scene:
    return Scene(cameras={camera.id: camera},
                 images=[Image(id=1, name="a.png", camera_id=camera.id, cam_from_world=np.eye(4))])


def test_bundle_keeps_the_lens_network(tmp_path, fitted):
    camera, field, _ = fitted
    camera = Camera(camera.id, camera.model, camera.width, camera.height, list(camera.params),
                    lens_network=save_network(tmp_path / "work" / "net.npz", field))
    write_bundle(lens_scene(tmp_path, camera), tmp_path / "b")
    scene = read_bundle(tmp_path / "b")
    back = scene.cameras[camera.id]
    assert back.params == camera.params
    assert back.lens_network == (tmp_path / "b" / "lens" / f"camera_{camera.id}.npz").resolve()
    loaded = load_network(back.lens_network)
    assert torch.equal(loaded.displacements(), field.displacements())
    write_bundle(scene, tmp_path / "b")  # rewriting in place carries the network over
    assert read_bundle(tmp_path / "b").cameras[camera.id].lens_network == back.lens_network

    # a network of another grid, on a parametric camera, a broken file, a pickled object: clear errors
    small = save_network(tmp_path / "small.npz", LensField(grid=9, radius=1.0))
    mismatched = Camera(camera.id, camera.model, W, H, list(camera.params), lens_network=small)
    with pytest.raises(BundleError, match=r"9x9 grid of radius 1\.0, the camera a 17x17 grid"):
        write_bundle(lens_scene(tmp_path, mismatched), tmp_path / "c")
    wrong_model = Camera(2, "OPENCV_FISHEYE", W, H, FISHEYE.params, lens_network=back.lens_network)
    with pytest.raises(BundleError, match="only for LENS_FIELD cameras, this one is OPENCV_FISHEYE"):
        write_bundle(lens_scene(tmp_path, wrong_model), tmp_path / "c")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(BundleError, match="junk.npz: not a lens network file"):
        load_network(tmp_path / "junk.npz")
    np.savez(tmp_path / "pickled.npz", format=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(BundleError, match="pickled.npz: not a lens network file"):
        load_network(tmp_path / "pickled.npz")
    with pytest.raises(BundleError, match="missing.npz: lens network file not found"):
        load_network(tmp_path / "missing.npz")
    assert not (tmp_path / "c").exists()


def test_colmap_export_refuses_the_learned_lens(tmp_path, fitted):
    with pytest.raises(InteropError, match="camera 1 uses Unposed's LENS_FIELD lens model, which COLMAP cannot"):
        colmap.write_model(lens_scene(tmp_path, fitted[0]), tmp_path / "sparse")


def test_project_gaussians_through_the_field():
    """means2d equal engine.projection.project, the EWA covariance uses project's Jacobian, depths are distances
    from the camera centre, and a 200-degree lens draws splats behind the image plane."""
    torch.manual_seed(4)
    field = LensField(grid=9, radius=1.85).double()
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.05 * torch.randn_like(p))
    focal = W / math.radians(200)
    params = field.params(focal, focal, W / 2, H / 2).detach()
    assert float(field.displacements().detach().abs().max()) > 0.01
    g = torch.Generator().manual_seed(5)
    directions = torch.nn.functional.normalize(torch.randn(300, 3, generator=g, dtype=F64), dim=-1)
    means = directions * (2.0 + torch.rand(300, 1, generator=g, dtype=F64))
    quats = torch.randn(300, 4, generator=g, dtype=F64)
    log_scales = torch.log(torch.rand(300, 3, generator=g, dtype=F64) * 0.02 + 0.01)
    opacities = torch.full((300,), 0.8, dtype=F64)
    proj = project_gaussians(means, quats, log_scales, opacities, "LENS_FIELD", params, torch.eye(4, dtype=F64), W, H)
    pixels, valid = projection.project("LENS_FIELD", params, means)
    vis = proj.visible
    assert bool(valid[vis].all()) and int(vis.sum()) > 100
    assert int((vis & (means[:, 2] < 0)).sum()) > 3  # beyond 90 degrees
    assert torch.allclose(proj.means2d[vis], pixels[vis], atol=1e-9)
    assert torch.allclose(proj.depths, means.norm(dim=-1))
    rot = quat_to_rotmat(quats)
    sigma3 = rot @ torch.diag_embed(torch.exp(2 * log_scales)) @ rot.transpose(-1, -2)
    for i in torch.nonzero(vis).flatten()[:40].tolist():
        jac = torch.autograd.functional.jacobian(lambda p: projection.project("LENS_FIELD", params, p)[0], means[i])
        cov = jac @ sigma3[i] @ jac.T + EPS2D * torch.eye(2, dtype=F64)
        a, b, c = proj.conics[i]
        assert torch.allclose(torch.linalg.inv(cov), torch.stack([a, b, b, c]).reshape(2, 2), rtol=1e-9), i


@pytest.mark.parametrize("calibrate, margin", [(("focal", "pose"), "CALIBRATION_MARGIN"), (("pose",), "FIT_MARGIN")])
def test_training_fields_span_beyond_the_start_only_when_calibrated(calibrate, margin):
    """`--lens field`: a field whose focal or distortion will be calibrated gets the wider grid (room for a lens
    wider than its start); one kept fixed is fitted with the ordinary margin."""
    from types import SimpleNamespace

    import engine.lens_field as lens_field
    from engine.splats.train import training_cameras

    camera = Camera(1, "OPENCV_FISHEYE", 96, 96, [40.0, 40.0, 48.0, 48.0, 0.0, 0.0, 0.0, 0.0])
    _, _, fields = training_cameras(SimpleNamespace(cameras={1: camera}), "field", calibrate)
    reach = 48.0 / 40.0  # equidistant: the image's side is 48 px off-axis, a ray of 48 / f radians
    assert fields[0].radius == pytest.approx(getattr(lens_field, margin) * reach, rel=0.02)


def test_the_radial_profile_held_beyond_an_extent_continues_linearly():
    """`hold_radial_beyond`: inside the extent the radial block keeps its polynomial, beyond it each ray's
    displacement grows in proportion to the distance from the centre (P held at its value there); a bad extent
    is refused by name."""
    field = LensField(9, 1.5).double()  # the MLP branches start at zero: the field is the radial block alone
    with torch.no_grad():
        field.radial.coeffs.copy_(torch.tensor([0.0, 0.05, -0.03, 0.0, 0.0, 0.0, 0.0], dtype=F64))
    direction = torch.tensor([0.6, 0.8], dtype=F64)
    radii = torch.linspace(0.05, 1.4, 28, dtype=F64)  # |point| in radians, up to 0.93 of the grid's radius
    before = field(radii[:, None] * direction)
    field.hold_radial_beyond(0.25)  # |point| / radius = 0.5: 0.75 radians
    after = field(radii[:, None] * direction)
    inside, outside = radii <= 0.75, radii > 0.75
    assert torch.allclose(after[inside], before[inside], atol=1e-12)
    ratio = after[outside].norm(dim=-1) / radii[outside]  # D = x P(T): the same factor along the ray
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9)
    assert not torch.allclose(after[outside], before[outside], atol=1e-4)  # the polynomial bent there
    field.hold_radial_beyond(0.5)  # never raised again
    assert field.radial_extent == 0.25
    with torch.no_grad():  # MLP branches too, and a radial profile spending most of the Lipschitz budget
        field.radial.coeffs.mul_(12.0)
        noise = torch.Generator().manual_seed(1)
        for layer in field.residual[0].layers:
            layer.weight.add_(0.3 * torch.randn(layer.weight.shape, dtype=F64, generator=noise))
    points = 1.5 * torch.rand(400, 2, dtype=F64, generator=torch.Generator().manual_seed(2)) * 2 - 1.5
    with torch.no_grad():
        before, cap = field(points), float(field._cap())
        field.hold_radial_beyond(0.1)
        after = field(points)
    inside = (points / 1.5).square().sum(-1) <= 0.1
    assert cap < 0.9 and int(inside.sum()) > 20  # the cap was active: the rescaling matters
    assert torch.allclose(after[inside], before[inside], atol=1e-12)
    assert field.lipschitz_bound() <= LIPSCHITZ + 1e-12
    resumed = LensField(9, 1.5).double()  # a training checkpoint keeps the held extent with the weights
    resumed.set_geometry(field.geometry())
    resumed.load_state_dict(field.state_dict())
    assert resumed.radial_extent == 0.1 and torch.allclose(resumed(points).detach(), after, atol=1e-14)
    with pytest.raises(CameraModelError, match="radial extent must be a positive number, got nan"):
        field.hold_radial_beyond(float("nan"))
