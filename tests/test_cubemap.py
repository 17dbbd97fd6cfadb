"""Cubemap rendering of splats for wide lenses (engine.splats.cubemap): the switch threshold and face choice against
closed-form lens geometry, the stitched image against a direct fisheye render (no seams) and against ray-traced
Gaussians over a 260-degree field (all six faces), the valid-circle mask, and gradients w.r.t. lens parameters
(parametric and the learned LENS_FIELD) and Gaussians against finite differences."""
from __future__ import annotations

import math

import pytest
import torch

from engine.projection import project, unproject_directions
from engine.splats import cubemap
from engine.splats.cubemap import FACE_NAMES, cube_faces, default_face_size, needs_cubemap, render_cubemap
from engine.splats.project import project_gaussians, quat_to_rotmat
from engine.splats.raster_torch import rasterize

FOLD = math.radians(95.0)
BACKGROUND = (0.1, 0.2, 0.3)


def lens_190(size: int, k1: float = 0.0, offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """RADIAL_FISHEYE, equidistant near the axis, folding at 95 deg (a 190-degree image circle of radius
    size / 2 - 2 px): theta_d = theta + k2 theta^5 with d theta_d / d theta = 1 - (theta / FOLD)^4. The last
    degrees before the fold are squeezed into the circle's outermost pixel."""
    k2 = -1.0 / (5.0 * FOLD ** 4)
    circle = FOLD + k2 * FOLD ** 5  # largest theta_d (0.8 FOLD)
    return torch.tensor([(size / 2 - 2) / circle, size / 2 + offset[0], size / 2 + offset[1], k1, k2],
                        dtype=torch.float64)


def equidistant(size: int, corner_deg: float) -> torch.Tensor:
    """OPENCV_FISHEYE without distortion (theta_d = theta), its corner pixel centres corner_deg off the axis."""
    f = math.hypot(size / 2 - 0.5, size / 2 - 0.5) / math.radians(corner_deg)
    return torch.tensor([f, f, size / 2, size / 2, 0, 0, 0, 0], dtype=torch.float64)


def shell(n: int, seed: int, max_angle_deg: float = 180.0, size: tuple[float, float] = (0.02, 0.05),
          dtype=torch.float32):
    """Gaussians at random directions within max_angle_deg of +Z, 1.5-3 units from the camera centre, each
    standard deviation `size` (range) times the distance."""
    g = torch.Generator().manual_seed(seed)
    lowest = math.cos(math.radians(max_angle_deg))
    z = lowest + (1 - lowest) * torch.rand(n, generator=g, dtype=torch.float64)
    phi = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    s = torch.sqrt(1 - z * z)
    dist = 1.5 + 1.5 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    means = torch.stack([s * torch.cos(phi), s * torch.sin(phi), z], -1) * dist
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    log_scales = torch.log(dist * (size[0] + (size[1] - size[0]) * torch.rand(n, 3, generator=g, dtype=torch.float64)))
    opacities = 0.3 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (means, quats, log_scales, opacities, colors)]


def pixel_rays(model: str, params: torch.Tensor, width: int, height: int):
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                          torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    rays, valid = unproject_directions(model, params, torch.stack([u, v], -1))
    return rays, valid


def face_border_distance(rays: torch.Tensor, face_size: int) -> torch.Tensor:
    """Distance in face pixels from each ray to the border of its cube face (second largest over largest
    |component| is the face-plane coordinate nearest to the border)."""
    a = rays.abs().sort(-1).values
    return (1 - a[..., 1] / a[..., 2]) * face_size / 2


def test_needs_cubemap_switches_at_the_documented_angle():
    # PINHOLE 64 x 64 with centred principal point: the widest ray is the corner pixel centre's
    corner = math.hypot(31.5, 31.5)
    assert cubemap.WIDE_ANGLE_DEG == 60.0
    for widest_deg, expected in [(57.0, False), (63.0, True)]:
        f = corner / math.tan(math.radians(widest_deg))
        assert needs_cubemap("PINHOLE", [f, f, 32.0, 32.0], 64, 64) is expected
    assert needs_cubemap("RADIAL_FISHEYE", lens_190(64), 64, 64)


def test_only_the_faces_the_lens_sees():
    # 100-degree equidistant fisheye, 128 x 96: +-50 deg across, +-37.5 deg down, so +Z and the +-X faces only
    f = 64 / math.radians(50.0)
    assert cube_faces("OPENCV_FISHEYE", [f, f, 64.0, 48.0, 0, 0, 0, 0], 128, 96) == [0, 1, 4]
    # the same field as a perspective lens
    f = 64 / math.tan(math.radians(50.0))
    assert cube_faces("PINHOLE", [f, f, 64.0, 48.0], 128, 96) == [0, 1, 4]
    # 190 degrees: all four side faces, never -Z (a ray reaches -Z only beyond 125 deg)
    assert [FACE_NAMES[k] for k in cube_faces("RADIAL_FISHEYE", lens_190(64), 64, 64)] == ["+X", "-X", "+Y", "-Y",
                                                                                            "+Z"]
    # an equidistant fisheye whose corners see 140 deg from the axis does need -Z
    assert cube_faces("OPENCV_FISHEYE", equidistant(64, 140.0), 64, 64) == [0, 1, 2, 3, 4, 5]


def test_default_face_size_is_the_lens_centre_resolution():
    # an equidistant fisheye has f px per radian at its centre; a face spanning 90 deg at focal f is 2f wide
    assert default_face_size("OPENCV_FISHEYE", [35.2, 30.0, 32.0, 32.0, 0, 0, 0, 0], 64, 64) == math.ceil(2 * 35.2)
    means, quats, log_scales, opacities, colors = shell(10, 0)
    with pytest.raises(ValueError, match="face_size"):
        render_cubemap(means, quats, log_scales, opacities, colors, "RADIAL_FISHEYE", lens_190(32), torch.eye(4),
                       32, 32, rasterize, face_size=1)


def test_matches_direct_fisheye_render_without_seams(monkeypatch):
    """190-degree lens, 96 px, 3000 splats within 84 deg of the axis (where the direct render draws them whatever
    its policy for splats behind the image plane). Tolerances, mean |difference| over RGB in [0, 1]:
    - within 40 deg of the axis < 0.011: both are EWA splats on nearly the same linearisation; measured 0.0075,
      and a quarter-pixel offset of the face sampling already gives 0.0136;
    - whole valid image < 0.04 (measured 0.029): towards the edge the direct render's single linearisation of the
      fisheye at each splat's centre, and its 0.3 px^2 low-pass in the lens's (radially compressed) pixels, depart
      from the cubemap's (against ray-traced Gaussians the cubemap stays uniform: see the next test).
    Seams: pixels within 1 face pixel of a face border are no worse than interior pixels (> 3 face pixels from a
    border) at the same angle from the axis (ratio measured 0.91; without the overlap margin it is 2.6)."""
    size = 96
    params = lens_190(size).float()
    means, quats, log_scales, opacities, colors = shell(3000, 0, 84.0)
    pose, background = torch.eye(4), torch.tensor(BACKGROUND)
    direct = project_gaussians(means, quats, log_scales, opacities, "RADIAL_FISHEYE", params, pose, size, size)
    direct_image, direct_alpha = rasterize(direct, colors, opacities, size, size, background)
    rays, _ = pixel_rays("RADIAL_FISHEYE", params.double(), size, size)
    theta = torch.rad2deg(torch.acos(rays[..., 2].clamp(-1, 1)))

    def seam_ratio(render) -> float:
        err = (render.image - direct_image).abs().mean(-1)
        border = face_border_distance(rays, render.face_size)
        zone = render.valid & (theta < 80)  # leave out the outline of the splat cap at 84 deg
        at_seam, interior = zone & (border < 1), zone & (border > 3)
        bins = (theta / 5).long()
        reference = torch.stack([err[interior & (bins == b)].mean() for b in bins[at_seam].tolist()])
        assert at_seam.sum() > 100 and interior.sum() > 1000
        return float(err[at_seam].mean() / reference.mean())

    render = render_cubemap(means, quats, log_scales, opacities, colors, "RADIAL_FISHEYE", params, pose, size, size,
                            rasterize, background)
    assert render.faces == [0, 1, 2, 3, 4]
    err = (render.image - direct_image).abs().mean(-1)
    valid = render.valid
    assert float(err[valid & (theta < 40)].mean()) < 0.011
    assert float(err[valid].mean()) < 0.04
    assert float((render.alpha - direct_alpha)[valid].abs().mean()) < 0.04
    assert seam_ratio(render) < 1.25

    monkeypatch.setattr(cubemap, "FACE_MARGIN", 0)  # faces exactly 90 deg wide: border lookups half outside
    assert seam_ratio(render_cubemap(means, quats, log_scales, opacities, colors, "RADIAL_FISHEYE", params, pose,
                                     size, size, rasterize, background)) > 1.8


def ray_traced(means, quats, log_scales, opacities, colors, rays, background):
    """Reference: each Gaussian contributes, along a ray through the camera centre, its peak value on the ray
    (alpha = opacity exp(-d^2 / 2), d the Mahalanobis distance of the ray from the mean), composited in order of
    the peak's distance along the ray, with the compositor's alpha rules (clamp 0.999, skip below 1/255)."""
    rot = quat_to_rotmat(quats.double())
    precision = rot @ torch.diag_embed(torch.exp(-2 * log_scales.double())) @ rot.transpose(-1, -2)
    mu = means.double()
    mpm = torch.einsum("ni,nij,nj->n", mu, precision, mu)
    out = []
    for d in rays.reshape(-1, 3).split(1024):
        pd = torch.einsum("nij,pj->pni", precision, d)
        dpd, dpm = (pd * d[:, None]).sum(-1), (pd * mu[None]).sum(-1)
        t = dpm / dpd
        alpha = (opacities.double() * torch.exp(-0.5 * (mpm - dpm * t))).clamp_max(0.999)
        alpha = torch.where((t > 0) & (alpha >= 1 / 255), alpha, torch.zeros_like(alpha))
        order = torch.argsort(t, -1)
        alpha = torch.gather(alpha, 1, order)
        transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha], 1), 1)
        color = ((alpha * transmittance[:, :-1])[..., None] * colors.double()[order]).sum(1)
        out.append(color + transmittance[:, -1:] * background.double())
    return torch.cat(out).reshape(*rays.shape[:-1], -1)


def test_whole_field_matches_ray_traced_gaussians():
    """Splats all around the camera, an equidistant fisheye whose corners see 130 deg off the axis (all six faces),
    64 px: over the whole image, including the rays beyond 90 deg that only the side and back faces see, the cubemap
    agrees with ray-traced Gaussians, and as well at the edge of the field as at its centre (mean |difference| per
    30-degree band measured 0.024-0.028). On the 190-degree lens of the previous test the direct fisheye render's
    difference from ray tracing grows from 0.022 (centre) to 0.069 (75-90 deg) while the cubemap's stays at 0.021."""
    size = 64
    params = equidistant(size, 130.0)
    means, quats, log_scales, opacities, colors = shell(800, 1, 180.0, size=(0.04, 0.09))
    background = torch.tensor(BACKGROUND)
    render = render_cubemap(means, quats, log_scales, opacities, colors, "OPENCV_FISHEYE", params.float(),
                            torch.eye(4), size, size, rasterize, background)
    assert render.faces == [0, 1, 2, 3, 4, 5]
    rays, valid = pixel_rays("OPENCV_FISHEYE", params, size, size)
    assert torch.equal(render.valid, valid)
    truth = ray_traced(means, quats, log_scales, opacities, colors, rays, background)
    err = (render.image.double() - truth).abs().mean(-1)
    theta = torch.rad2deg(torch.acos(rays[..., 2].clamp(-1, 1)))
    bands = [float(err[valid & (theta >= lo) & (theta < lo + 30)].mean()) for lo in (0, 30, 60, 90)]
    assert (valid & (theta > 90)).sum() > 100
    assert max(bands) < 0.04, bands
    assert bands[3] < 1.5 * bands[0], bands


def test_pixels_beyond_the_image_circle_are_masked():
    size = 48
    params = lens_190(size)
    f, cx, cy, _, k2 = params.tolist()
    radius = f * (FOLD + k2 * FOLD ** 5)  # the image circle: f times the largest theta_d
    means, quats, log_scales, opacities, colors = shell(800, 2, 180.0, size=(0.05, 0.1))
    background = torch.tensor(BACKGROUND)
    render = render_cubemap(means, quats, log_scales, opacities, colors, "RADIAL_FISHEYE", params.float(),
                            torch.eye(4), size, size, rasterize, background)
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    r = torch.hypot(u - cx, v - cy)
    outside, inside = r > radius + 0.1, r < radius - 1.0
    assert outside.sum() > 300 and inside.sum() > 1200
    assert not render.valid[outside].any()
    assert render.valid[inside].all()
    assert torch.all(render.alpha[~render.valid] == 0)
    assert torch.all(render.image[~render.valid] == background)
    assert float(render.alpha[inside].min()) > 0.1  # splats all around: every inside pixel sees some


def test_splats_behind_the_image_plane_land_where_the_lens_projects_them():
    size = 64
    params = equidistant(size, 130.0)
    # one small splat 93 deg off the axis (z < 0), towards +x +y
    direction = torch.tensor([math.sin(math.radians(93)) * 0.6, math.sin(math.radians(93)) * 0.8,
                              math.cos(math.radians(93))], dtype=torch.float64)
    means = (2.0 * direction)[None].float()
    quats = torch.tensor([[1.0, 0, 0, 0]])
    log_scales = torch.full((1, 3), math.log(0.03))
    opacities, colors = torch.tensor([0.9]), torch.ones(1, 3)
    render = render_cubemap(means, quats, log_scales, opacities, colors, "OPENCV_FISHEYE", params.float(),
                            torch.eye(4), size, size, rasterize)
    expected, ok = project("OPENCV_FISHEYE", params, direction)
    assert bool(ok) and 2 in render.faces
    weight = render.alpha[..., 0].double()
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    centroid = torch.stack([(weight * u).sum(), (weight * v).sum()]) / weight.sum()
    assert float(weight.max()) > 0.5
    assert float(torch.linalg.vector_norm(centroid.double() - expected)) < 0.3


def test_gradients_reach_lens_parameters_and_gaussians():
    """d(loss)/d(focal, cx, k1) through the sampling positions and d(loss)/d(means) through the face renders,
    against central differences (float64). The principal point is off the image centre so that no pixel centre
    lies exactly on a face border (where the face a pixel reads from, and so the loss, jumps)."""
    size = 40
    params = lens_190(size, k1=0.01, offset=(0.31, -0.27)).requires_grad_(True)
    means, quats, log_scales, opacities, colors = shell(400, 3, 180.0, size=(0.04, 0.09), dtype=torch.float64)
    means.requires_grad_(True)
    g = torch.Generator().manual_seed(4)
    weights = torch.rand(size, size, 3, generator=g, dtype=torch.float64)
    alpha_weights = torch.rand(size, size, 1, generator=g, dtype=torch.float64)
    background = torch.tensor(BACKGROUND, dtype=torch.float64)

    def loss() -> torch.Tensor:
        render = render_cubemap(means, quats, log_scales, opacities, colors, "RADIAL_FISHEYE", params,
                                torch.eye(4, dtype=torch.float64), size, size, rasterize, background, face_size=28)
        return (render.image * weights).sum() + (render.alpha * alpha_weights).sum()

    loss().backward()
    assert torch.isfinite(means.grad).all()
    theta = torch.rad2deg(torch.acos(means[:, 2] / torch.linalg.vector_norm(means, dim=-1))).detach()
    moved = means.grad.abs().sum(-1) > 0
    assert moved[theta < 80].all()  # in the 190-degree field: drawn, so they get gradients
    assert not moved[theta > 115].any()  # out of it (3.33 sigma at most 17 deg): never drawn

    def numeric(leaf: torch.Tensor, index: tuple, h: float) -> float:
        with torch.no_grad():
            leaf[index] += h
            up = float(loss())
            leaf[index] -= 2 * h
            down = float(loss())
            leaf[index] += h
        return (up - down) / (2 * h)

    for index, h in [((0,), 1e-5), ((1,), 1e-5), ((3,), 1e-6)]:  # focal, cx, k1
        expected = numeric(params, index, h)
        assert abs(expected) > 0.1, index  # the loss does depend on it
        assert float(params.grad[index]) == pytest.approx(expected, rel=2e-3), index
    drawn = torch.argsort(means.grad.abs().sum(-1), descending=True)[:2].tolist()
    for i in drawn:
        for j in range(3):
            expected = numeric(means, (i, j), 1e-6)
            assert float(means.grad[i, j]) == pytest.approx(expected, rel=2e-3, abs=1e-3), (i, j)


def test_learned_lens_field_renders_and_differentiates():
    """LENS_FIELD (the learned lens; its unprojection is a fixed-point iteration): the all-zero field is the
    equidistant lens, so it renders exactly what OPENCV_FISHEYE without distortion renders; with a displacement
    field, gradients w.r.t. focal and displacements match central differences."""
    size, n = 32, 5
    base = equidistant(size, 120.0)
    base[2:4] += torch.tensor([0.31, -0.27], dtype=torch.float64)
    head = torch.tensor([base[0], base[1], base[2], base[3], math.radians(100.0), n], dtype=torch.float64)
    field = torch.cat([head, torch.zeros(2 * n * n, dtype=torch.float64)])
    means, quats, log_scales, opacities, colors = shell(300, 5, 180.0, size=(0.04, 0.09), dtype=torch.float64)
    background = torch.tensor(BACKGROUND, dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)

    def render(model: str, params: torch.Tensor):
        return render_cubemap(means, quats, log_scales, opacities, colors, model, params, pose, size, size,
                              rasterize, background, face_size=24)

    identity, reference = render("LENS_FIELD", field), render("OPENCV_FISHEYE", base)
    assert identity.valid.all() and reference.valid.all()
    assert torch.allclose(identity.image, reference.image, atol=1e-9)

    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        field[6:] = 0.02 * torch.randn(2 * n * n, generator=g, dtype=torch.float64)
    field.requires_grad_(True)
    weights = torch.rand(size, size, 3, generator=g, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (render("LENS_FIELD", field).image * weights).sum()

    loss().backward()
    centre_node = 6 + 2 * (2 * n + 2)  # (dx, dy) of node (row 2, column 2)
    for k in (0, centre_node, centre_node + 1, 6 + 2 * (n + 1) + 1):
        with torch.no_grad():
            field[k] += 1e-6
            up = float(loss())
            field[k] -= 2e-6
            down = float(loss())
            field[k] += 1e-6
        expected = (up - down) / 2e-6
        assert abs(expected) > 0.1, k
        assert float(field.grad[k]) == pytest.approx(expected, rel=2e-3), k
