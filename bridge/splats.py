# SPDX-License-Identifier: GPL-3.0-or-later
"""Gaussian splats: `engine.splats.ply.Splats` <-> Blender objects.

A splat object is a mesh of loose vertices at the Gaussians' means whose point attributes hold the raw 3DGS values
exactly as the .ply does (quaternion, log scales, opacity logit, SH coefficients), so an untouched object exports
to the same file. Data is written and read in bulk (`foreach_set`/`foreach_get`).

Drawing (shared Geometry Nodes group and material, Cycles and EEVEE):
  * each splat instances a cube [-1, 1]^3 scaled by EXTENT_SIGMAS standard deviations per axis and rotated by its
    quaternion, so the cube holds the Gaussian out to 3 sigma (where 3DGS rasterisers cut it off too);
  * its colour is the SH expansion (degrees 0-3, the reference 3DGS basis) for the direction from the scene's
    active camera to the splat, taken in the object's frame so it follows the object's transform, then sRGB ->
    linear, since training photos are sRGB-encoded and Blender renders scene-linear; opacity = sigmoid(logit);
  * the material makes a camera ray through the cube emit that colour with alpha = opacity * exp(-d^2 / 2), d the
    Mahalanobis distance of the ray from the mean: in the cube's coordinates p (whitened up to EXTENT_SIGMAS) and
    ray direction v, d^2 = k^2 (|p|^2 - (p.v)^2 / |v|^2) -- the peak of the 3D Gaussian along the ray, which the
    rasteriser's projected 2D Gaussian approximates. Alpha is clamped to ALPHA_MAX and cut below ALPHA_MIN as in
    the rasteriser; back faces are transparent, so each splat composites once;
  * in the viewport at most a display limit of splats are drawn (every n-th by index); renders draw all.
View-dependent colour follows the scene camera (the world origin when there is none), not the viewport's view;
splats are seen by camera rays only. Solid shading draws the cubes opaque.
"""
from __future__ import annotations

from typing import Any, Sequence

import bpy
import numpy as np

from ..engine.pose import rotation_to_quat
from ..engine.splats.ply import SH_C0, Splats
from .modifiers import modifier_input

SPLATS_TAG = "unposed_splats"  # object, node group and material custom property marking Unposed splats
NODE_GROUP_NAME = "Unposed Splats"
MATERIAL_NAME = "Unposed Splat"
LIMIT_INPUT = "Display Limit"
DISPLAY_LIMIT = 250_000  # default number of splats drawn in the viewport
EXTENT_SIGMAS = 3.0  # the drawn cube reaches this many standard deviations along each axis
ALPHA_MAX = 0.99  # alpha clamp and cut-off, as in the 3DGS rasteriser
ALPHA_MIN = 1.0 / 255.0
TRANSPARENT_BOUNCES = 256  # Cycles transparent bounces: every splat a ray crosses costs two
# Cycles ends paths by Russian roulette after this many transparent bounces; the default (0) makes the colour
# behind an opaque splat very noisy, so the first few splats along a ray are composited exactly.
MIN_TRANSPARENT_BOUNCES = 16

# Raw per-splat values (mesh point attributes). SH_ATTRS[0] is the degree-0 coefficient (f_dc), SH_ATTRS[k] the
# RGB triple of coefficient k of the higher degrees (shN[:, k - 1]).
ROTATION_ATTR = "splat_rotation"  # QUATERNION (w, x, y, z), stored unnormalised as read
LOG_SCALE_ATTR = "splat_log_scale"  # FLOAT_VECTOR
OPACITY_ATTR = "splat_opacity_logit"  # FLOAT
SH_ATTRS = tuple(f"splat_sh_{k}" for k in range(16))  # FLOAT_VECTOR
# Computed by the node group for the material (instance attributes).
DRAW_RGB_ATTR = "unposed_draw_rgb"
DRAW_ALPHA_ATTR = "unposed_draw_alpha"

_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
       1.445305721320277, -0.5900435899266435)
# Real SH basis functions 1..15 of the reference 3DGS code (degree 0 is the constant SH_C0) as polynomials in the
# unit direction (x, y, z): lists of (coefficient, (power of x, power of y, power of z)). The node group and
# `sh_basis` are both built from this table.
SH_POLYNOMIALS: tuple[tuple[tuple[float, tuple[int, int, int]], ...], ...] = (
    ((-_C1, (0, 1, 0)),),
    ((_C1, (0, 0, 1)),),
    ((-_C1, (1, 0, 0)),),
    ((_C2[0], (1, 1, 0)),),
    ((_C2[1], (0, 1, 1)),),
    ((2 * _C2[2], (0, 0, 2)), (-_C2[2], (2, 0, 0)), (-_C2[2], (0, 2, 0))),
    ((_C2[3], (1, 0, 1)),),
    ((_C2[4], (2, 0, 0)), (-_C2[4], (0, 2, 0))),
    ((3 * _C3[0], (2, 1, 0)), (-_C3[0], (0, 3, 0))),
    ((_C3[1], (1, 1, 1)),),
    ((4 * _C3[2], (0, 1, 2)), (-_C3[2], (2, 1, 0)), (-_C3[2], (0, 3, 0))),
    ((2 * _C3[3], (0, 0, 3)), (-3 * _C3[3], (2, 0, 1)), (-3 * _C3[3], (0, 2, 1))),
    ((4 * _C3[4], (1, 0, 2)), (-_C3[4], (3, 0, 0)), (-_C3[4], (1, 2, 0))),
    ((_C3[5], (2, 0, 1)), (-_C3[5], (0, 2, 1))),
    ((_C3[6], (3, 0, 0)), (-3 * _C3[6], (1, 2, 0))),
)
_SH_COUNTS = (0, 3, 8, 15)  # higher coefficients per SH degree 0..3


def sh_basis(dirs: np.ndarray, count: int = 15) -> np.ndarray:
    """The first `count` higher SH basis functions (3DGS order and signs) at unit directions (M, 3): (M, count)."""
    d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(d), count))
    for k, terms in enumerate(SH_POLYNOMIALS[:count]):
        for coeff, (a, b, c) in terms:
            out[:, k] += coeff * d[:, 0] ** a * d[:, 1] ** b * d[:, 2] ** c
    return out


# --------------------------------------------------------------------------------------------------------------
# Splats -> Blender


def splats_object(name: str, splats: Splats, display_limit: int = DISPLAY_LIMIT) -> bpy.types.Object:
    """A new (unlinked) splat object holding `splats` exactly; the viewport draws at most `display_limit`."""
    n = len(splats)
    mesh = bpy.data.meshes.new(name)
    try:
        mesh.vertices.add(n)
        mesh.attributes["position"].data.foreach_set("vector", splats.means.ravel())
        attrs = mesh.attributes
        attrs.new(ROTATION_ATTR, "QUATERNION", "POINT").data.foreach_set("value", splats.quats.ravel())
        attrs.new(LOG_SCALE_ATTR, "FLOAT_VECTOR", "POINT").data.foreach_set("vector", splats.log_scales.ravel())
        attrs.new(OPACITY_ATTR, "FLOAT", "POINT").data.foreach_set("value", splats.opacity_logits)
        attrs.new(SH_ATTRS[0], "FLOAT_VECTOR", "POINT").data.foreach_set("vector", splats.sh0.ravel())
        by_coefficient = np.ascontiguousarray(splats.shN.transpose(1, 0, 2))  # one pass over (N, K, 3)
        for k, values in enumerate(by_coefficient, start=1):
            attrs.new(SH_ATTRS[k], "FLOAT_VECTOR", "POINT").data.foreach_set("vector", values.ravel())
        mesh.update()
        obj = bpy.data.objects.new(name, mesh)
    except BaseException:
        bpy.data.meshes.remove(mesh)
        raise
    obj[SPLATS_TAG] = True
    # Captured radiance: seen by the camera, neither lighting nor shadowing the rest of the scene.
    obj.visible_diffuse = obj.visible_glossy = obj.visible_transmission = False
    obj.visible_volume_scatter = obj.visible_shadow = False
    mod = obj.modifiers.new("Splats", "NODES")
    mod.node_group = _node_group()
    set_display_limit(obj, display_limit)
    return obj


def is_splats(obj: bpy.types.Object | None) -> bool:
    return obj is not None and bool(obj.get(SPLATS_TAG)) and obj.type == "MESH"


def _display_limit_input(obj: bpy.types.Object) -> tuple[bpy.types.NodesModifier, str]:
    """The splat modifier of `obj` and the key of its display limit input."""
    return modifier_input(obj, SPLATS_TAG, LIMIT_INPUT)


def set_display_limit(obj: bpy.types.Object, limit: int) -> None:
    """Draw at most `limit` (>= 1) splats in the viewport, evenly strided by index; renders draw them all."""
    mod, key = _display_limit_input(obj)
    mod[key] = max(1, int(limit))
    obj.update_tag()


def get_display_limit(obj: bpy.types.Object) -> int:
    mod, key = _display_limit_input(obj)
    return int(mod[key])


def prepare_render_settings(scene: bpy.types.Scene) -> list[str]:
    """Raise Cycles' transparent bounces (maximum and minimum before Russian roulette) so rays cross many splats
    without noise; what was changed, for the user."""
    cycles = getattr(scene, "cycles", None)
    changed = []
    for key, value in (("transparent_max_bounces", TRANSPARENT_BOUNCES),
                       ("min_transparent_bounces", MIN_TRANSPARENT_BOUNCES)):
        if cycles is not None and getattr(cycles, key) < value:
            setattr(cycles, key, value)
            changed.append(f"Cycles {key.replace('_', ' ')} raised to {value}")
    return changed


# --------------------------------------------------------------------------------------------------------------
# Blender -> Splats


def _read(mesh: bpy.types.Mesh, name: str, data_type: str, width: int, obj_name: str) -> np.ndarray:
    attr = mesh.attributes.get(name)
    if attr is None or attr.domain != "POINT" or attr.data_type != data_type:
        found = "missing" if attr is None else f"a {attr.data_type} attribute on the {attr.domain} domain"
        raise ValueError(f"object {obj_name!r}: splat attribute {name!r} must be a {data_type} point attribute "
                         f"({found}); is it a splat object?")
    out = np.empty(len(mesh.vertices) * width, dtype=np.float32)
    attr.data.foreach_get("vector" if data_type == "FLOAT_VECTOR" else "value", out)
    return out.reshape(-1, width) if width > 1 else out


def splats_from_object(obj: bpy.types.Object) -> Splats:
    """The splats of `obj` in world coordinates: its transform applied to means, rotations, scales and SH.

    An object with an identity transform gives back exactly the values it holds. Rotations and uniform scales
    compose with each splat's quaternion and scales; other linear maps (non-uniform scale, shear, mirroring)
    re-factor each covariance A Sigma A^T. SH coefficients are rotated by the orthogonal factor of A.
    """
    if obj.type != "MESH":
        raise ValueError(f"object {obj.name!r} is a {obj.type.lower()}, not a splat mesh")
    mesh = obj.data
    n = len(mesh.vertices)
    means = np.empty(n * 3, dtype=np.float32)
    mesh.attributes["position"].data.foreach_get("vector", means)
    count = next(k for k in reversed(_SH_COUNTS) if all(SH_ATTRS[i] in mesh.attributes for i in range(1, k + 1)))
    shn = np.stack([_read(mesh, SH_ATTRS[k], "FLOAT_VECTOR", 3, obj.name) for k in range(1, count + 1)], axis=1) \
        if count else np.zeros((n, 0, 3), np.float32)
    splats = Splats(means=means.reshape(-1, 3), quats=_read(mesh, ROTATION_ATTR, "QUATERNION", 4, obj.name),
                    log_scales=_read(mesh, LOG_SCALE_ATTR, "FLOAT_VECTOR", 3, obj.name),
                    opacity_logits=_read(mesh, OPACITY_ATTR, "FLOAT", 1, obj.name),
                    sh0=_read(mesh, SH_ATTRS[0], "FLOAT_VECTOR", 3, obj.name), shN=shn)
    return transform_splats(splats, np.array(obj.matrix_world, dtype=np.float64))


def transform_splats(splats: Splats, matrix: np.ndarray) -> Splats:
    """`splats` moved by the affine 4x4 `matrix` (x -> A x + b); the identity returns them unchanged."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if np.array_equal(matrix, np.eye(4)):
        return splats
    a, b = matrix[:3, :3], matrix[:3, 3]
    if not np.isfinite(matrix).all() or abs(np.linalg.det(a)) < 1e-12:
        raise ValueError("the object's transform is singular (zero scale?); its splats cannot be exported")
    u, s, vt = np.linalg.svd(a)
    ortho = u @ vt  # orthogonal polar factor of A (A = ortho @ P, P symmetric positive definite)
    means = splats.means.astype(np.float64) @ a.T + b
    if np.ptp(s) <= 1e-6 * s[0] and np.linalg.det(ortho) > 0:  # similarity: rotate quaternions, add log scale
        quats = _quat_multiply(rotation_to_quat(ortho), splats.quats.astype(np.float64))
        log_scales = splats.log_scales + np.float32(np.log(s.mean()))
    else:
        quats, log_scales = _refactor_covariances(splats, a)
    shn = splats.shN
    if shn.shape[1]:  # one (K, K) @ (K, N * 3) product
        n, k = shn.shape[:2]
        rotated = _sh_rotation(ortho, k).astype(np.float32) @ shn.transpose(1, 0, 2).reshape(k, n * 3)
        shn = rotated.reshape(k, n, 3).transpose(1, 0, 2)
    return Splats(means=means, quats=quats, log_scales=log_scales, opacity_logits=splats.opacity_logits,
                  sh0=splats.sh0, shN=shn)


def _quat_multiply(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton products p * q of (w, x, y, z) quaternions, broadcast over leading axes."""
    pw, pv = p[..., :1], p[..., 1:]
    qw, qv = q[..., :1], q[..., 1:]
    w = pw * qw - np.sum(pv * qv, axis=-1, keepdims=True)
    return np.concatenate([w, pw * qv + qw * pv + np.cross(pv, qv)], axis=-1)


def _rotations_from_quats(q: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices of (N, 4) quaternions (w, x, y, z), normalised first."""
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1).reshape(-1, 3, 3)


def _quats_from_rotations(r: np.ndarray) -> np.ndarray:
    """(N, 4) unit quaternions of (N, 3, 3) rotations: Shepperd's method, each from its largest component."""
    trace = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    pick = np.argmax(np.stack([trace, r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]], axis=1), axis=1)
    q = np.empty((len(r), 4))
    # big = 4 |q_i| for the largest component i: 4 q_w^2 = 1 + trace, 4 q_x^2 = 1 + 2 r_00 - trace (y, z alike);
    # the other components are sums and differences of off-diagonal pairs over big.
    for i in range(4):
        sel = pick == i
        if not sel.any():
            continue
        s, tr = r[sel], trace[sel]
        big = np.sqrt(np.maximum(1.0 + tr if i == 0 else 1.0 + 2.0 * s[:, i - 1, i - 1] - tr, 1e-300)) * 2.0
        wx, wy, wz = s[:, 2, 1] - s[:, 1, 2], s[:, 0, 2] - s[:, 2, 0], s[:, 1, 0] - s[:, 0, 1]
        xy, xz, yz = s[:, 0, 1] + s[:, 1, 0], s[:, 0, 2] + s[:, 2, 0], s[:, 1, 2] + s[:, 2, 1]
        rows = {0: (big * big / 4, wx, wy, wz), 1: (wx, big * big / 4, xy, xz),
                2: (wy, xy, big * big / 4, yz), 3: (wz, xz, yz, big * big / 4)}[i]
        q[sel] = np.stack(rows, axis=1) / big[:, None]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q)


def _refactor_covariances(splats: Splats, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quaternions and log scales of A Sigma A^T (Sigma = R S^2 R^T) by eigen-decomposition."""
    r = _rotations_from_quats(splats.quats.astype(np.float64))
    m = a @ r * np.exp(splats.log_scales.astype(np.float64))[:, None, :]  # A R S
    eigval, eigvec = np.linalg.eigh(m @ m.transpose(0, 2, 1))
    eigvec[np.linalg.det(eigvec) < 0, :, 2] *= -1.0  # a proper rotation
    return _quats_from_rotations(eigvec), 0.5 * np.log(np.maximum(eigval, np.finfo(np.float32).tiny))


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5 ** 0.5) * i
    rho = np.sqrt(1.0 - z * z)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)


def _sh_rotation(ortho: np.ndarray, count: int) -> np.ndarray:
    """The (count, count) matrix T with sum_j T_kj c_j the coefficients of the colour seen along world direction d
    after an orthogonal map `ortho`, i.e. of c(ortho^T d). Each degree's span is invariant under O(3), so T
    follows exactly from a least-squares fit at sample directions."""
    dirs = _fibonacci_sphere(64)
    world = sh_basis(dirs, count)
    trained = sh_basis(dirs @ ortho, count)  # rows: ortho^T d
    return np.linalg.lstsq(world, trained, rcond=None)[0]


# --------------------------------------------------------------------------------------------------------------
# Node trees


class _Builder:
    """Adds nodes to a node tree; arithmetic helpers take sockets or constants and return the result socket."""

    def __init__(self, tree: bpy.types.NodeTree) -> None:
        self.tree = tree
        self._count = 0

    def node(self, kind: str, inputs: dict[str, Any] | None = None, **props: Any) -> bpy.types.Node:
        node = self.tree.nodes.new(kind)
        for key, value in props.items():
            setattr(node, key, value)
        sockets = {s.identifier: s for s in node.inputs}
        for key, value in (inputs or {}).items():
            self.feed(node.inputs[key] if isinstance(key, int) else sockets.get(key) or node.inputs[key], value)
        node.location = (200 * (self._count // 12), -160 * (self._count % 12))
        self._count += 1
        return node

    def feed(self, socket: bpy.types.NodeSocket, value: Any) -> None:
        if isinstance(value, bpy.types.NodeSocket):
            self.tree.links.new(value, socket)
        else:
            socket.default_value = value

    def math(self, op: str, *args: Any) -> bpy.types.NodeSocket:
        node = self.node("ShaderNodeMath", operation=op)
        for i, value in enumerate(args):
            self.feed(node.inputs[i], value)
        return node.outputs[0]

    def vmath(self, op: str, *args: Any, scale: Any = None) -> bpy.types.NodeSocket:
        node = self.node("ShaderNodeVectorMath", operation=op)
        for i, value in enumerate(args):
            self.feed(node.inputs[i], value)
        if scale is not None:
            self.feed(node.inputs["Scale"], scale)
        return node.outputs["Value" if op in ("DOT_PRODUCT", "LENGTH", "DISTANCE") else "Vector"]

    def vec(self, value: float) -> tuple[float, float, float]:
        return (value, value, value)


def _sh_colour(b: _Builder, direction: bpy.types.NodeSocket, sh: Sequence[bpy.types.NodeSocket]
               ) -> bpy.types.NodeSocket:
    """SH_C0 * sh[0] + sum_k Y_k(direction) * sh[k] (a vector field) from the SH_POLYNOMIALS table."""
    sep = b.node("ShaderNodeSeparateXYZ", {"Vector": direction})
    axes = [sep.outputs[i] for i in range(3)]
    monomials: dict[tuple[int, int, int], bpy.types.NodeSocket] = {}

    def monomial(powers: tuple[int, int, int]) -> bpy.types.NodeSocket:
        if powers not in monomials:
            axis = next(i for i in range(3) if powers[i])
            lower = tuple(p - (i == axis) for i, p in enumerate(powers))
            monomials[powers] = axes[axis] if sum(lower) == 0 else b.math("MULTIPLY", monomial(lower), axes[axis])
        return monomials[powers]

    colour = b.vmath("SCALE", sh[0], scale=SH_C0)
    for k, terms in enumerate(SH_POLYNOMIALS, start=1):
        basis = 0.0
        for coeff, powers in terms:
            basis = b.math("MULTIPLY_ADD", monomial(powers), coeff, basis)
        colour = b.vmath("ADD", colour, b.vmath("SCALE", sh[k], scale=basis))
    return colour


def _srgb_to_linear(b: _Builder, rgb: bpy.types.NodeSocket) -> bpy.types.NodeSocket:
    """The sRGB transfer function inverted per component (IEC 61966-2-1): c/12.92 below 0.04045, else
    ((c + 0.055) / 1.055)^2.4."""
    low = b.vmath("SCALE", rgb, scale=1.0 / 12.92)
    high = b.vmath("POWER", b.vmath("MULTIPLY_ADD", rgb, b.vec(1.0 / 1.055), b.vec(0.055 / 1.055)), b.vec(2.4))
    step = b.vmath("MULTIPLY_ADD", b.vmath("SIGN", b.vmath("SUBTRACT", rgb, b.vec(0.04045))), b.vec(0.5),
                   b.vec(0.5))
    mix = b.node("ShaderNodeMix", {"Factor_Vector": step, "A_Vector": low, "B_Vector": high}, data_type="VECTOR",
                 factor_mode="NON_UNIFORM")
    return next(s for s in mix.outputs if s.identifier == "Result_Vector")  # names are shared across types


def _attribute(b: _Builder, name: str, data_type: str) -> bpy.types.NodeSocket:
    node = b.node("GeometryNodeInputNamedAttribute", {"Name": name}, data_type=data_type)
    return node.outputs["Attribute"]


def _node_group() -> bpy.types.NodeTree:
    """The shared Geometry Nodes group (see the module docstring)."""
    for group in bpy.data.node_groups:
        if group.get(SPLATS_TAG) and group.bl_idname == "GeometryNodeTree":
            return group
    group = bpy.data.node_groups.new(NODE_GROUP_NAME, "GeometryNodeTree")
    group[SPLATS_TAG] = True
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    limit = group.interface.new_socket(LIMIT_INPUT, in_out="INPUT", socket_type="NodeSocketInt")
    limit.default_value, limit.min_value = DISPLAY_LIMIT, 1
    limit.force_non_field = True
    limit.description = "Most splats drawn in the viewport (every n-th); renders draw all of them"
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    b = _Builder(group)
    g_in, g_out = b.node("NodeGroupInput"), b.node("NodeGroupOutput")
    geometry = g_in.outputs["Geometry"]

    # Viewport subset: every ceil(count / limit)-th splat, so at most `limit` of them.
    count = b.node("GeometryNodeAttributeDomainSize", {"Geometry": geometry}, component="MESH")
    stride = b.node("FunctionNodeIntegerMath", {0: count.outputs["Point Count"], 1: g_in.outputs[LIMIT_INPUT]},
                    operation="DIVIDE_CEIL").outputs[0]
    phase = b.node("FunctionNodeIntegerMath", {0: b.node("GeometryNodeInputIndex").outputs[0], 1: stride},
                   operation="MODULO").outputs[0]
    keep = b.node("FunctionNodeCompare", {"A_INT": phase, "B_INT": 0}, data_type="INT",
                  operation="EQUAL").outputs[0]
    in_render = b.node("FunctionNodeBooleanMath", {0: b.node("GeometryNodeIsViewport").outputs[0]},
                       operation="NOT").outputs[0]
    selection = b.node("FunctionNodeBooleanMath", {0: keep, 1: in_render}, operation="OR").outputs[0]

    # Colour and opacity, stored for the material; the direction is from the camera, in this object's frame.
    camera = b.node("GeometryNodeObjectInfo", {"Object": b.node("GeometryNodeInputActiveCamera").outputs[0]},
                    transform_space="RELATIVE")
    position = b.node("GeometryNodeInputPosition").outputs[0]
    direction = b.vmath("NORMALIZE", b.vmath("SUBTRACT", position, camera.outputs["Location"]))
    sh = [_attribute(b, name, "FLOAT_VECTOR") for name in SH_ATTRS]
    rgb = b.vmath("MAXIMUM", b.vmath("ADD", _sh_colour(b, direction, sh), b.vec(0.5)), b.vec(0.0))
    opacity = _attribute(b, OPACITY_ATTR, "FLOAT")
    alpha = b.math("DIVIDE", 1.0, b.math("ADD", 1.0, b.math("EXPONENT", b.math("MULTIPLY", opacity, -1.0))))
    store_rgb = b.node("GeometryNodeStoreNamedAttribute", {"Geometry": geometry, "Name": DRAW_RGB_ATTR,
                                                           "Value": _srgb_to_linear(b, rgb)},
                       data_type="FLOAT_VECTOR", domain="POINT")
    store_alpha = b.node("GeometryNodeStoreNamedAttribute", {"Geometry": store_rgb.outputs[0],
                                                             "Name": DRAW_ALPHA_ATTR, "Value": alpha},
                         data_type="FLOAT", domain="POINT")

    # Instances: a cube scaled by EXTENT_SIGMAS * exp(log_scale), rotated by the normalised quaternion.
    quat = b.node("FunctionNodeRotationToQuaternion",
                  {"Rotation": _attribute(b, ROTATION_ATTR, "QUATERNION")}).outputs
    xyz = b.node("ShaderNodeCombineXYZ", {0: quat[1], 1: quat[2], 2: quat[3]}).outputs[0]
    inv_norm = b.math("INVERSE_SQRT", b.math("MULTIPLY_ADD", quat[0], quat[0], b.vmath("DOT_PRODUCT", xyz, xyz)))
    rotation = b.node("FunctionNodeQuaternionToRotation",
                      {i: b.math("MULTIPLY", quat[i], inv_norm) for i in range(4)}).outputs[0]
    scale = b.vmath("SCALE", b.vmath("POWER", b.vec(float(np.e)), _attribute(b, LOG_SCALE_ATTR, "FLOAT_VECTOR")),
                    scale=EXTENT_SIGMAS)
    cube = b.node("GeometryNodeMeshCube", {"Size": b.vec(2.0), "Vertices X": 2, "Vertices Y": 2, "Vertices Z": 2})
    cube = b.node("GeometryNodeSetMaterial", {"Geometry": cube.outputs["Mesh"], "Material": _material()})
    instances = b.node("GeometryNodeInstanceOnPoints", {"Points": store_alpha.outputs[0], "Selection": selection,
                                                        "Instance": cube.outputs[0], "Rotation": rotation,
                                                        "Scale": scale})
    # The raw values were copied onto every instance: drop them, only the two drawing attributes are used.
    tidy = b.node("GeometryNodeRemoveAttribute", {"Geometry": instances.outputs[0], "Pattern Mode": "Wildcard",
                                                  "Name": "splat_*"})
    b.feed(g_out.inputs["Geometry"], tidy.outputs[0])
    return group


def _material() -> bpy.types.Material:
    """The shared splat material (see the module docstring)."""
    for mat in bpy.data.materials:
        if mat.get(SPLATS_TAG):
            return mat
    mat = bpy.data.materials.new(MATERIAL_NAME)
    mat[SPLATS_TAG] = True
    mat.use_backface_culling = True  # EEVEE and the viewport; Cycles gets the back faces' alpha set to zero
    mat.surface_render_method = "DITHERED"  # order-independent in EEVEE
    mat.cycles.emission_sampling = "NONE"  # millions of tiny emitters must not become lights
    tree = mat.node_tree
    tree.nodes.clear()
    b = _Builder(tree)
    rgb = b.node("ShaderNodeAttribute", attribute_type="INSTANCER", attribute_name=DRAW_RGB_ATTR).outputs["Vector"]
    opacity = b.node("ShaderNodeAttribute", attribute_type="INSTANCER",
                     attribute_name=DRAW_ALPHA_ATTR).outputs["Fac"]
    p = b.node("ShaderNodeTexCoord").outputs["Object"]
    geometry = b.node("ShaderNodeNewGeometry")
    v = b.node("ShaderNodeVectorTransform", {"Vector": geometry.outputs["Incoming"]}, vector_type="VECTOR",
               convert_from="WORLD", convert_to="OBJECT").outputs[0]
    pv = b.vmath("DOT_PRODUCT", p, v)
    miss2 = b.math("SUBTRACT", b.vmath("DOT_PRODUCT", p, p),
                   b.math("DIVIDE", b.math("MULTIPLY", pv, pv), b.vmath("DOT_PRODUCT", v, v)))
    alpha = b.math("MINIMUM", b.math("MULTIPLY", opacity, b.math("EXPONENT", b.math(
        "MULTIPLY", miss2, -0.5 * EXTENT_SIGMAS ** 2))), ALPHA_MAX)
    alpha = b.math("MULTIPLY", alpha, b.math("GREATER_THAN", alpha, ALPHA_MIN))
    alpha = b.math("MULTIPLY", alpha, b.math("SUBTRACT", 1.0, geometry.outputs["Backfacing"]))
    emission = b.node("ShaderNodeEmission", {"Color": rgb, "Strength": 1.0})
    mix = b.node("ShaderNodeMixShader", {"Fac": alpha, 1: b.node("ShaderNodeBsdfTransparent").outputs[0],
                                         2: emission.outputs[0]})
    b.node("ShaderNodeOutputMaterial", {"Surface": mix.outputs[0]})
    return mat
