"""Procedural, noise-free surface materials for generated scenes.

Every material is Diffuse(colour) + Emission(ambient * colour): one hard light gives the shading and the emission
term stands in for ambient light, so with `max_bounces = 0` and emission kept out of light sampling the renders are
free of Monte-Carlo noise after a few anti-aliasing samples, and a surface looks the same from every view
(Lambertian), which is what lets the ground-truth point colours match every photo. The colour pattern comes from
Blender's 3D textures in object space, so scales are in metres when meshes are built at their true size.
"""
from __future__ import annotations

import colorsys

import bpy
import numpy as np

AMBIENT = 0.3  # emission strength relative to the surface colour
PATTERNS = ("checker", "bricks", "cells", "blobs", "stripes")
GRAIN_SCALE = 40.0  # features per metre of `add_grain`'s coarsest octave


def random_colour(rng: np.random.Generator,
                  value: tuple[float, float] = (0.3, 0.9)) -> tuple[float, float, float, float]:
    """A saturated linear RGBA colour with brightness drawn from `value`."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.35, 0.85), rng.uniform(*value))
    return (r, g, b, 1.0)


def surface_material(name: str, rng: np.random.Generator, pattern: str | None = None,
                     scale: float | None = None) -> bpy.types.Material:
    """A new material with a random two-colour `pattern` (random when None) at `scale` features per metre."""
    pattern = pattern or PATTERNS[rng.integers(len(PATTERNS))]
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    scale = float(scale if scale is not None else rng.uniform(1.5, 4.0))
    colour_a = random_colour(rng)
    colour_b = random_colour(rng, (0.1, 0.5)) if rng.uniform() < 0.5 else random_colour(rng, (0.6, 1.0))

    mat = bpy.data.materials.new(name)
    mat.cycles.emission_sampling = "NONE"  # the ambient term must not light other surfaces (noise)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    coords = nodes.new("ShaderNodeTexCoord")
    colour = _pattern(nodes, links, pattern, coords.outputs["Object"], colour_a, colour_b, scale, rng)

    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = AMBIENT
    add = nodes.new("ShaderNodeAddShader")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(colour, diffuse.inputs["Color"])
    links.new(colour, emission.inputs["Color"])
    links.new(diffuse.outputs["BSDF"], add.inputs[0])
    links.new(emission.outputs["Emission"], add.inputs[1])
    links.new(add.outputs["Shader"], out.inputs["Surface"])
    mat.diffuse_color = colour_a  # what Solid mode shows
    return mat


def add_grain(material: bpy.types.Material, strength: float, scale: float = GRAIN_SCALE) -> None:
    """Multiply the colour of a `surface_material` by fine multi-octave value noise between 1 - `strength` and 1 +
    `strength` (`scale` features per metre in its coarsest octave, eight finer ones below it; what a pixel cannot
    resolve averages out in the render's anti-aliasing): the small-scale texture real surfaces have and the
    two-colour patterns lack, so that features can be found on every surface, also at grazing angles and close up.
    Object-space like the patterns, so it looks the same from every view."""
    if not 0 < strength < 1:
        raise ValueError(f"grain strength must be between 0 and 1, got {strength!r}")
    nodes, links = material.node_tree.nodes, material.node_tree.links
    targets = [n.inputs["Color"] for n in nodes if n.bl_idname in ("ShaderNodeBsdfDiffuse", "ShaderNodeEmission")]
    if not targets or not targets[0].is_linked:
        raise ValueError(f"material {material.name!r} is not a surface_material (no linked diffuse colour)")
    colour = targets[0].links[0].from_socket
    coords = next(n for n in nodes if n.bl_idname == "ShaderNodeTexCoord")
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = scale
    noise.inputs["Detail"].default_value = 8.0
    links.new(coords.outputs["Object"], noise.inputs["Vector"])
    amount = nodes.new("ShaderNodeMapRange")  # noise is centred on 0.5 with a small spread
    amount.inputs["From Min"].default_value, amount.inputs["From Max"].default_value = 0.3, 0.7
    amount.inputs["To Min"].default_value, amount.inputs["To Max"].default_value = 1 - strength, 1 + strength
    links.new(noise.outputs["Factor"], amount.inputs["Value"])
    multiply = nodes.new("ShaderNodeVectorMath")
    multiply.operation = "SCALE"
    links.new(colour, multiply.inputs["Vector"])
    links.new(amount.outputs["Result"], multiply.inputs["Scale"])
    for socket in targets:
        links.new(multiply.outputs["Vector"], socket)


def _pattern(nodes, links, pattern, vector, colour_a, colour_b, scale, rng) -> bpy.types.NodeSocket:
    """The colour output socket of `pattern` between the two colours."""
    if pattern == "checker":
        tex = nodes.new("ShaderNodeTexChecker")
        tex.inputs["Color1"].default_value, tex.inputs["Color2"].default_value = colour_a, colour_b
        tex.inputs["Scale"].default_value = scale
        links.new(vector, tex.inputs["Vector"])
        return tex.outputs["Color"]
    if pattern == "bricks":
        tex = nodes.new("ShaderNodeTexBrick")
        tex.inputs["Color1"].default_value = colour_a
        tex.inputs["Color2"].default_value = tuple(0.75 * c for c in colour_a[:3]) + (1.0,)
        tex.inputs["Mortar"].default_value = colour_b
        tex.inputs["Scale"].default_value = scale / 2
        tex.inputs["Mortar Size"].default_value = 0.03
        links.new(vector, tex.inputs["Vector"])
        return tex.outputs["Color"]
    if pattern == "cells":  # Voronoi cells, each a random shade between the two colours
        tex = nodes.new("ShaderNodeTexVoronoi")
        tex.inputs["Scale"].default_value = scale
        links.new(vector, tex.inputs["Vector"])
        factor = tex.outputs["Color"]
    elif pattern == "blobs":
        tex = nodes.new("ShaderNodeTexNoise")
        tex.noise_dimensions = "4D"  # W makes each material's noise different
        tex.inputs["Scale"].default_value = scale
        tex.inputs["Detail"].default_value = 3.0
        tex.inputs["W"].default_value = rng.uniform(0, 100)
        links.new(vector, tex.inputs["Vector"])
        contrast = nodes.new("ShaderNodeMapRange")  # noise is centred on 0.5 with a small spread
        contrast.inputs["From Min"].default_value, contrast.inputs["From Max"].default_value = 0.38, 0.62
        links.new(tex.outputs["Factor"], contrast.inputs["Value"])
        factor = contrast.outputs["Result"]
    else:  # stripes
        tex = nodes.new("ShaderNodeTexWave")
        tex.inputs["Scale"].default_value = scale / 2
        tex.inputs["Distortion"].default_value = rng.uniform(0, 4)
        tex.wave_profile = "SAW"
        tex.bands_direction = ("X", "Y", "Z", "DIAGONAL")[rng.integers(4)]
        links.new(vector, tex.inputs["Vector"])
        factor = tex.outputs["Factor"]
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"  # the node has A/B sockets per data type: pick the colour ones
    for sock in mix.inputs:
        if sock.type == "RGBA":
            sock.default_value = colour_a if sock.name == "A" else colour_b
    links.new(factor, mix.inputs["Factor"])
    return next(o for o in mix.outputs if o.type == "RGBA")
