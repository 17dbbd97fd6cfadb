"""3DGS .ply read/write: lossless round trip, SH degrees 0-3, the reference layout, malformed files."""
from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from engine.splats.ply import Splats, SplatsFileError, ply_field_names, read_splats, write_splats

FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")


def random_splats(n: int, degree: int, seed: int = 0) -> Splats:
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return Splats(rng.normal(size=(n, 3)), rng.normal(size=(n, 4)), rng.normal(size=(n, 3)) - 3,
                  rng.normal(size=n), rng.normal(size=(n, 3)), rng.normal(size=(n, k, 3)) * 0.1)


def reference_file(path, n: int, degree: int, text: bool = False, extra: tuple[str, ...] = ()) -> dict:
    """A file written field by field with plyfile, the way the reference 3DGS trainer lays it out."""
    names = ply_field_names(degree) + list(extra)
    rng = np.random.default_rng(1)
    values = {name: rng.normal(size=n).astype(np.float32) for name in names}
    k = (degree + 1) ** 2 - 1
    for c in range(3):
        for j in range(k):
            values[f"f_rest_{c * k + j}"][:] = 100 * c + j  # channel-major
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for name in names:
        vertex[name] = values[name]
    PlyData([PlyElement.describe(vertex, "vertex")], text=text).write(str(path))
    return values


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_lossless(tmp_path, degree):
    splats = random_splats(257, degree, seed=degree)
    write_splats(tmp_path / "a.ply", splats)
    first = (tmp_path / "a.ply").read_bytes()
    back = read_splats(tmp_path / "a.ply")
    assert back.sh_degree == degree and len(back) == 257
    for name in FIELDS:
        assert np.array_equal(getattr(back, name), getattr(splats, name)), name
    write_splats(tmp_path / "b.ply", back)
    assert (tmp_path / "b.ply").read_bytes() == first
    header = first[:first.index(b"end_header")].decode()
    assert "binary_little_endian" in header
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert props == ply_field_names(degree)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("text", [False, True])
def test_reads_reference_layout(tmp_path, degree, text):
    values = reference_file(tmp_path / "ref.ply", 20, degree, text=text, extra=("custom_field",))
    s = read_splats(tmp_path / "ref.ply")
    k = (degree + 1) ** 2 - 1
    assert s.shN.shape == (20, k, 3) and s.sh_degree == degree
    for c in range(3):
        for j in range(k):
            assert np.all(s.shN[:, j, c] == 100 * c + j)
    assert np.array_equal(s.means[:, 1], values["y"])
    assert np.array_equal(s.quats[:, 0], values["rot_0"]) and np.array_equal(s.quats[:, 3], values["rot_3"])
    assert np.array_equal(s.log_scales[:, 2], values["scale_2"])
    assert np.array_equal(s.opacity_logits, values["opacity"])
    assert np.allclose(s.base_rgb()[:, 0], np.clip(0.5 + 0.28209479177387814 * values["f_dc_0"], 0, 1))


def _write_vertex(path, names, n=4, dtype="f4", fill=0.5):
    vertex = np.full(n, fill, dtype=[(name, dtype) for name in names])
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))


def test_malformed_files_give_clear_errors(tmp_path):
    with pytest.raises(SplatsFileError, match="not found"):
        read_splats(tmp_path / "nope.ply")
    (tmp_path / "junk.ply").write_bytes(b"this is not a ply file\n")
    with pytest.raises(SplatsFileError, match="not a readable PLY"):
        read_splats(tmp_path / "junk.ply")
    good = tmp_path / "good.ply"
    write_splats(good, random_splats(10, 1))
    (tmp_path / "cut.ply").write_bytes(good.read_bytes()[:-37])
    with pytest.raises(SplatsFileError, match="not a readable PLY"):
        read_splats(tmp_path / "cut.ply")
    _write_vertex(tmp_path / "points.ply", ["x", "y", "z", "red"])
    with pytest.raises(SplatsFileError, match="lacks field.*f_dc_0.*opacity"):
        read_splats(tmp_path / "points.ply")
    names = ply_field_names(1)
    _write_vertex(tmp_path / "rest.ply", [n for n in names if n != "f_rest_4"])
    with pytest.raises(SplatsFileError, match="8 f_rest_"):
        read_splats(tmp_path / "rest.ply")
    _write_vertex(tmp_path / "gap.ply", [n if n != "f_rest_4" else "f_rest_11" for n in names])
    with pytest.raises(SplatsFileError, match="numbered 0..8, got f_rest_11"):
        read_splats(tmp_path / "gap.ply")
    _write_vertex(tmp_path / "ints.ply", names, dtype="i4", fill=1)
    with pytest.raises(SplatsFileError, match="field 'x' must be a float"):
        read_splats(tmp_path / "ints.ply")
    _write_vertex(tmp_path / "nan.ply", names, fill=np.nan)
    with pytest.raises(SplatsFileError, match="4 splat.*NaN or infinite means"):
        read_splats(tmp_path / "nan.ply")
    _write_vertex(tmp_path / "zeroq.ply", names, fill=0.0)
    with pytest.raises(SplatsFileError, match="zero rotation quaternion"):
        read_splats(tmp_path / "zeroq.ply")
    with pytest.raises(SplatsFileError, match="shN must have shape"):
        Splats(np.zeros((2, 3)), np.ones((2, 4)), np.zeros((2, 3)), np.zeros(2), np.zeros((2, 3)), np.zeros((2, 5, 3)))

