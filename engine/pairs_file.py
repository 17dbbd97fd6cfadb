# SPDX-License-Identifier: GPL-3.0-or-later
"""The pairwise prediction file (`pairs.npz`): the contract between a pointmap network and the aligner.

An ordinary numpy `.npz` (inspect it with `np.load`) holding
    names           (N,)          unique image names
    pairs           (E, 2) int    ordered edges (i, j), i != j, indices into `names`
    pts3d_i         (E, H, W, 3)  view i's points in camera i's frame (OpenCV axes)
    pts3d_j         (E, H, W, 3)  view j's points, also in camera i's frame
    conf_i, conf_j  (E, H, W)     confidences, >= 1 (DUSt3R's 1 + exp(c))
    width, height   ()            pointmap size in pixels (W, H)
    original_sizes  (N, 2) int    optional: each photo's (width, height) in pixels before resizing
    pixel_maps      (N, 4) float  optional: (ox, oy, sx, sy) taking pointmap pixel coordinates (u, v) to the
                                  photo's: u0 = (u + ox) * sx, v0 = (v + oy) * sy (needs original_sizes)
    images          (N, H, W, 3)  optional: the photos as the network saw them (uint8 RGB), for colours

Coordinates are continuous with pixel centres at +0.5 (COLMAP's convention). Without pixel_maps, each pointmap is
taken to be its photo scaled uniformly by s = max(W / W0, H / H0) and cropped centrally to W x H (DUSt3R's
resize-then-crop; `centred_crop_map`).

Large graphs may be split into shards: several files with the same names and size whose edges together form
the graph; `open_pairs` treats them as one. Files are written uncompressed so the reader memory-maps each
array and loads only the edges asked for; compressed files (`np.savez_compressed`) are read as streams.
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .atomic import atomic_file
from .errors import EngineError

_EDGE_ARRAYS = ("pts3d_i", "pts3d_j", "conf_i", "conf_j")
_OPTIONAL = ("original_sizes", "pixel_maps", "images")
_REQUIRED = ("names", "pairs", "width", "height", *_EDGE_ARRAYS)


class PairsFileError(EngineError):
    """A pairs file is missing, malformed or inconsistent."""


@dataclass
class PairPrediction:
    """One ordered pair's network output; every array is expressed in camera i's frame."""
    i: int
    j: int
    pts3d_i: np.ndarray  # (H, W, 3) view i's points
    pts3d_j: np.ndarray  # (H, W, 3) view j's points
    conf_i: np.ndarray  # (H, W) >= 1
    conf_j: np.ndarray  # (H, W) >= 1


@dataclass
class PairBatch:
    """Several edges loaded together, stacked along the first axis (float32)."""
    edge_ids: np.ndarray  # (K,) indices into PairsFile.pairs
    pairs: np.ndarray  # (K, 2) int64
    pts3d_i: np.ndarray  # (K, H, W, 3)
    pts3d_j: np.ndarray  # (K, H, W, 3)
    conf_i: np.ndarray  # (K, H, W)
    conf_j: np.ndarray  # (K, H, W)

    def __len__(self) -> int:
        return len(self.edge_ids)


def centred_crop_map(width: int, height: int, original_width: int, original_height: int
                     ) -> tuple[float, float, float, float]:
    """(ox, oy, sx, sy), as in `pixel_maps`, of a photo scaled by s = max(W / W0, H / H0) and cropped centrally."""
    s = max(width / original_width, height / original_height)
    return (s * original_width - width) / 2.0, (s * original_height - height) / 2.0, 1 / s, 1 / s


# ----------------------------------------------------------------------------------------------- writing

def _check_images(images, n: int, width: int, height: int, where: str) -> None:
    shape = (n, height, width, 3)
    if tuple(images.shape) != shape or images.dtype != np.uint8:
        raise PairsFileError(f"{where}: field 'images' must be a uint8 array of shape {shape}, "
                             f"got {images.dtype} array of shape {tuple(images.shape)}")


def _check_pixel_maps(pixel_maps, n: int, original_sizes, where: str) -> np.ndarray:
    maps = np.asarray(pixel_maps)
    if maps.shape != (n, 4) or not np.issubdtype(maps.dtype, np.number):
        raise PairsFileError(f"{where}: field 'pixel_maps' must be an (N, 4) array of (ox, oy, sx, sy) with N={n}, "
                             f"got shape {maps.shape}")
    if not np.isfinite(maps).all() or (maps[:, 2:] <= 0).any():
        raise PairsFileError(f"{where}: field 'pixel_maps' must hold finite offsets and positive scales")
    if original_sizes is None:
        raise PairsFileError(f"{where}: field 'pixel_maps' needs 'original_sizes'")
    return maps.astype(np.float64)


def _check_meta(names: Sequence[str], width: int, height: int, original_sizes, where: str):
    names = [str(n) for n in names]
    if len(names) < 2:
        raise PairsFileError(f"{where}: a pairs file needs at least 2 images, got {len(names)} name(s)")
    if any(not n for n in names):
        raise PairsFileError(f"{where}: field 'names' contains an empty name")
    seen: dict[str, int] = {}
    for k, n in enumerate(names):
        if n in seen:
            raise PairsFileError(f"{where}: field 'names' has the duplicate name {n!r} (entries {seen[n]} and {k})")
        seen[n] = k
    for field, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise PairsFileError(f"{where}: field {field!r} must be a positive integer, got {value!r}")
    if original_sizes is not None:
        sizes = np.asarray(original_sizes)
        if sizes.shape != (len(names), 2) or not np.issubdtype(sizes.dtype, np.number):
            raise PairsFileError(f"{where}: field 'original_sizes' must be an (N, 2) array of (width, height) "
                                 f"with N={len(names)}, got shape {sizes.shape}")
        if not np.isfinite(sizes).all() or (sizes <= 0).any() or (sizes != np.round(sizes)).any():
            raise PairsFileError(f"{where}: field 'original_sizes' must hold positive whole pixel counts")
        original_sizes = sizes.astype(np.int64)
    return names, int(width), int(height), original_sizes


def _check_edge_data(arrays: dict[str, np.ndarray], where: str) -> None:
    """Finite points; finite confidences >= 1. `arrays` maps array name -> data for one or more edges."""
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            raise PairsFileError(f"{where}: array {name!r} contains NaN or infinite values")
        if name.startswith("conf") and (a < 1).any():
            raise PairsFileError(f"{where}: array {name!r} has confidences below 1 (min {float(a.min()):.4g}); "
                                 f"confidences must be >= 1 like DUSt3R's 1 + exp(c)")


def _write_npy_member(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def write_pairs(path: str | os.PathLike, names: Sequence[str], width: int, height: int,
                predictions: Iterable[PairPrediction], original_sizes: np.ndarray | None = None,
                images: np.ndarray | None = None, pixel_maps: np.ndarray | None = None) -> Path:
    """Write a pairs file at `path` atomically, streaming: only one prediction is held in memory at a time.

    Edge arrays are spooled to temporary files beside `path` and then copied into an uncompressed npz.
    `original_sizes` is (N, 2) (width, height); `images` is (N, H, W, 3) uint8 RGB at the pointmap size;
    `pixel_maps` is (N, 4) (ox, oy, sx, sy) (see the module's docstring).
    """
    path = Path(path)
    names, width, height, original_sizes = _check_meta(names, width, height, original_sizes, str(path))
    n = len(names)
    if pixel_maps is not None:
        pixel_maps = _check_pixel_maps(pixel_maps, n, original_sizes, str(path))
    if images is not None:
        images = np.asarray(images)
        _check_images(images, n, width, height, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".spool", dir=path.parent))
    try:
        files = {a: open(spool / a, "wb") for a in _EDGE_ARRAYS}
        pairs: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        try:
            for k, pred in enumerate(predictions):
                where = f"{path}: prediction {k} (pair {pred.i}, {pred.j})"
                i, j = int(pred.i), int(pred.j)
                if not (0 <= i < n and 0 <= j < n) or i == j:
                    raise PairsFileError(f"{where}: image indices must be distinct and in 0..{n - 1}")
                if (i, j) in seen:
                    raise PairsFileError(f"{where}: the ordered pair ({i}, {j}) appears twice")
                seen.add((i, j))
                arrays = {}
                for a in _EDGE_ARRAYS:
                    value = np.asarray(getattr(pred, a), dtype=np.float32)
                    expected = (height, width, 3) if a.startswith("pts") else (height, width)
                    if value.shape != expected:
                        raise PairsFileError(f"{where}: {a} has shape {value.shape}, expected {expected}")
                    arrays[a] = value
                _check_edge_data(arrays, where)
                for a, value in arrays.items():
                    files[a].write(np.ascontiguousarray(value).tobytes())
                pairs.append((i, j))
        finally:
            for f in files.values():
                f.close()
        if not pairs:
            raise PairsFileError(f"{path}: no pair predictions were given")
        e = len(pairs)
        with atomic_file(path) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_npy_member(zf, "names", np.array(names))
            _write_npy_member(zf, "pairs", np.array(pairs, dtype=np.int64))
            _write_npy_member(zf, "width", np.array(width, dtype=np.int64))
            _write_npy_member(zf, "height", np.array(height, dtype=np.int64))
            if original_sizes is not None:
                _write_npy_member(zf, "original_sizes", original_sizes)
            if pixel_maps is not None:
                _write_npy_member(zf, "pixel_maps", pixel_maps)
            if images is not None:
                _write_npy_member(zf, "images", images)
            for a in _EDGE_ARRAYS:
                shape = (e, height, width, 3) if a.startswith("pts") else (e, height, width)
                with zf.open(f"{a}.npy", "w", force_zip64=True) as member, open(spool / a, "rb") as src:
                    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                              "shape": shape}
                    np.lib.format.write_array_header_2_0(member, header)
                    shutil.copyfileobj(src, member, 1 << 20)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------------------------- reading

def _read_exact(f, view: memoryview, where: str) -> None:
    """Fill `view` from the file's current position (a single read may return less than asked)."""
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise PairsFileError(f"{where}: the file ends early (truncated?)")
        done += n


class _Member:
    """One array inside an npz. Rows of an uncompressed array are read at their file offsets (plain reads, not a
    memory map, so the process does not keep the file's pages mapped); a compressed one is read as a stream."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, name: str) -> None:
        self.path, self.name = path, name
        info = zf.getinfo(f"{name}.npy")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise PairsFileError(f"{path}: array {name!r} uses unsupported .npy format version {version}")
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, self.fortran, self.dtype = reader(f)
            self.header_len = f.tell()
        if self.dtype.hasobject:
            raise PairsFileError(f"{path}: array {name!r} holds Python objects; only numeric arrays are read")
        self._stream = None
        self._row = 0
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                local = raw.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise PairsFileError(f"{path}: corrupt zip entry for {name!r}")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
            self.offset = info.header_offset + 30 + name_len + extra_len + self.header_len
            if info.file_size < self.header_len + self.nbytes:
                raise PairsFileError(f"{path}: array {name!r} is truncated")
        if self.fortran:
            raise PairsFileError(f"{path}: array {name!r} is stored in Fortran order; save it in C order")
        self._zf, self._info = zf, info
        self._stored = info.compress_type == zipfile.ZIP_STORED

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def small(self) -> np.ndarray:
        """The whole array (for the small metadata arrays)."""
        if self._stored:
            out = np.empty(self.shape, self.dtype)
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                _read_exact(f, memoryview(out.reshape(-1)).cast("B"), f"{self.path}: array {self.name!r}")
            return out
        with self._zf.open(self._info) as f:
            f.read(self.header_len)
            count = int(np.prod(self.shape))
            data = f.read(count * self.dtype.itemsize)
        if len(data) != count * self.dtype.itemsize:
            raise PairsFileError(f"{self.path}: array {self.name!r} is truncated")
        return np.frombuffer(data, dtype=self.dtype, count=count).reshape(self.shape)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows (first-axis entries) `rows`, sorted ascending, as a new array."""
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if self._stored:
            flat = memoryview(out.reshape(-1)).cast("B")
            with open(self.path, "rb", buffering=0) as f:
                start = 0
                while start < len(rows):  # one read per run of consecutive rows
                    end = start + 1
                    while end < len(rows) and rows[end] == rows[end - 1] + 1:
                        end += 1
                    f.seek(self.offset + int(rows[start]) * row_bytes)
                    _read_exact(f, flat[start * row_bytes:end * row_bytes], f"{self.path}: array {self.name!r}")
                    start = end
            return out
        if self._stream is None or rows[0] < self._row:  # streams only go forward: restart
            if self._stream is not None:
                self._stream.close()
            self._stream = self._zf.open(self._info)
            self._stream.read(self.header_len)
            self._row = 0
        for k, r in enumerate(rows):
            while self._row < r:
                skip = min(int(r - self._row), max(1, (1 << 26) // max(row_bytes, 1)))
                self._stream.read(skip * row_bytes)
                self._row += skip
            data = self._stream.read(row_bytes)
            if len(data) != row_bytes:
                raise PairsFileError(f"{self.path}: array {self.name!r} is truncated at entry {r}")
            out[k] = np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])
            self._row += 1
        return out

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class _Shard:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise PairsFileError(f"{path}: {'not a file' if path.exists() else 'pairs file not found'}")
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise PairsFileError(f"{path}: not an npz (zip) file ({exc})") from None
        present = {n[:-4] for n in self.zf.namelist() if n.endswith(".npy")}
        missing = [k for k in _REQUIRED if k not in present]
        if missing:
            raise PairsFileError(f"{path}: missing array(s) {', '.join(missing)} "
                                 f"(has {', '.join(sorted(present)) or 'none'})")
        try:
            self.members = {k: _Member(path, self.zf, k) for k in (*_REQUIRED, *_OPTIONAL) if k in present}
        except (ValueError, OSError) as exc:
            raise PairsFileError(f"{path}: unreadable array ({exc})") from None

    def close(self) -> None:
        for m in self.members.values():
            m.close()
        self.zf.close()


def _scalar_int(shard: _Shard, key: str) -> int:
    a = shard.members[key].small()
    if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
        raise PairsFileError(f"{shard.path}: field {key!r} must be one integer, got {a.dtype} array of shape {a.shape}")
    return int(a.reshape(()))


class PairsFile:
    """A validated pairs file (one or several shards). Edge data is read on demand by `load`/`iter_chunks`."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self._shards: list[_Shard] = []
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        first = None
        pairs, shard_of, row_of = [], [], []
        for s, path in enumerate(self.paths):
            shard = _Shard(path)
            self._shards.append(shard)
            raw_names = shard.members["names"].small()
            if raw_names.ndim != 1 or raw_names.dtype.kind not in "US":
                raise PairsFileError(f"{path}: field 'names' must be a 1-D array of strings, "
                                     f"got {raw_names.dtype} array of shape {raw_names.shape}")
            sizes = shard.members["original_sizes"].small() if "original_sizes" in shard.members else None
            meta = _check_meta([str(x) for x in raw_names.tolist()], _scalar_int(shard, "width"),
                               _scalar_int(shard, "height"), sizes, str(path))
            maps = shard.members["pixel_maps"].small() if "pixel_maps" in shard.members else None
            meta = (*meta, None if maps is None else _check_pixel_maps(maps, len(meta[0]), meta[3], str(path)))
            if first is None:
                first = meta
                self.names, self.width, self.height, self.original_sizes, self.pixel_maps = meta
            else:
                for k, label in enumerate(("names", "width", "height")):
                    if meta[k] != first[k]:
                        raise PairsFileError(f"{path}: field {label!r} differs from the first shard {self.paths[0]}")
                for k, label in ((3, "original_sizes"), (4, "pixel_maps")):
                    if (meta[k] is None) != (first[k] is None) or (
                            meta[k] is not None and not np.array_equal(meta[k], first[k])):
                        raise PairsFileError(f"{path}: field {label!r} differs from the first shard "
                                             f"{self.paths[0]}")
            p = shard.members["pairs"].small()
            if p.ndim != 2 or p.shape[1] != 2 or not np.issubdtype(p.dtype, np.integer):
                raise PairsFileError(f"{path}: field 'pairs' must be an (E, 2) integer array, "
                                     f"got {p.dtype} array of shape {p.shape}")
            if len(p) == 0:
                raise PairsFileError(f"{path}: field 'pairs' is empty (no pair predictions)")
            n = len(self.names)
            bad = np.nonzero((p < 0).any(1) | (p >= n).any(1) | (p[:, 0] == p[:, 1]))[0]
            if len(bad):
                raise PairsFileError(f"{path}: field 'pairs' entry {int(bad[0])} = {p[bad[0]].tolist()} must hold "
                                     f"two different image indices in 0..{n - 1}")
            e = len(p)
            for key in _EDGE_ARRAYS:
                m = shard.members[key]
                expected = (e, self.height, self.width, 3) if key.startswith("pts") else (e, self.height, self.width)
                if m.shape != expected:
                    raise PairsFileError(f"{path}: array {key!r} has shape {m.shape}, expected {expected} "
                                         f"(E={e} pairs, height={self.height}, width={self.width})")
                if m.dtype.kind != "f":
                    raise PairsFileError(f"{path}: array {key!r} must hold floating-point numbers, got {m.dtype}")
            if "images" in shard.members:
                _check_images(shard.members["images"], n, self.width, self.height, str(path))
            pairs.append(p.astype(np.int64))
            shard_of.append(np.full(e, s))
            row_of.append(np.arange(e))
        self.pairs = np.concatenate(pairs)
        self._shard_of = np.concatenate(shard_of)
        self._row_of = np.concatenate(row_of)
        codes = self.pairs[:, 0] * len(self.names) + self.pairs[:, 1]
        _, first_at, counts = np.unique(codes, return_index=True, return_counts=True)
        if (counts > 1).any():
            k = int(first_at[np.argmax(counts > 1)])
            raise PairsFileError(f"{self.paths[0] if len(self.paths) == 1 else 'shards'}: field 'pairs' has the "
                                 f"ordered pair {self.pairs[k].tolist()} more than once")

    def pixel_map(self, k: int, original_size: tuple[int, int] | None = None) -> tuple[float, float, float, float]:
        """Image k's (ox, oy, sx, sy) to photo pixels: stored, else `centred_crop_map` for its original size
        (`original_size` when the file records none; the identity when neither is known)."""
        if self.pixel_maps is not None:
            return tuple(float(v) for v in self.pixel_maps[k])
        if self.original_sizes is not None:
            original_size = tuple(self.original_sizes[k])
        if original_size is None:
            return 0.0, 0.0, 1.0, 1.0
        return centred_crop_map(self.width, self.height, int(original_size[0]), int(original_size[1]))

    @property
    def has_images(self) -> bool:
        return any("images" in shard.members for shard in self._shards)

    def image(self, k: int) -> np.ndarray:
        """Image k as the network saw it, (H, W, 3) uint8 RGB (needs `has_images`)."""
        for shard in self._shards:
            if "images" in shard.members:
                return shard.members["images"].rows(np.array([k]))[0]
        raise PairsFileError(f"{self.paths[0]}: no 'images' array stored")

    @property
    def num_images(self) -> int:
        return len(self.names)

    @property
    def num_edges(self) -> int:
        return len(self.pairs)

    def __len__(self) -> int:
        return self.num_edges

    def load(self, edge_ids: Sequence[int] | np.ndarray) -> PairBatch:
        """The edges `edge_ids` (indices into `pairs`, any order) as float32 arrays; validates their values."""
        ids = np.asarray(edge_ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_edges):
            raise IndexError(f"edge ids must be in 0..{self.num_edges - 1}")
        h, w = self.height, self.width
        out = {a: np.empty((len(ids), h, w, 3) if a.startswith("pts") else (len(ids), h, w), np.float32)
               for a in _EDGE_ARRAYS}
        for s in np.unique(self._shard_of[ids]):
            pos = np.nonzero(self._shard_of[ids] == s)[0]
            rows = self._row_of[ids[pos]]
            order = np.argsort(rows, kind="stable")
            shard = self._shards[s]
            for a in _EDGE_ARRAYS:
                out[a][pos[order]] = shard.members[a].rows(rows[order])
        for k in range(len(ids)):
            _check_edge_data({a: out[a][k] for a in _EDGE_ARRAYS},
                             f"{self.paths[self._shard_of[ids[k]]]}: pair {int(self._row_of[ids[k]])} "
                             f"{self.pairs[ids[k]].tolist()}")
        return PairBatch(ids, self.pairs[ids], out["pts3d_i"], out["pts3d_j"], out["conf_i"], out["conf_j"])

    def iter_chunks(self, max_edges: int) -> Iterator[PairBatch]:
        """All edges in order, at most `max_edges` at a time."""
        if max_edges < 1:
            raise ValueError("max_edges must be >= 1")
        for start in range(0, self.num_edges, max_edges):
            yield self.load(np.arange(start, min(start + max_edges, self.num_edges)))

    def validate(self, max_edges: int = 16) -> None:
        """Read every edge once and check its values (finite points, confidences >= 1)."""
        for _ in self.iter_chunks(max_edges):
            pass

    def close(self) -> None:
        for shard in self._shards:
            shard.close()
        self._shards = []

    def __enter__(self) -> "PairsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pairs(path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> PairsFile:
    """Open and validate a pairs file, or several shards of one (same names and size) as one logical file."""
    if isinstance(path_or_paths, (str, os.PathLike)):
        paths = [Path(path_or_paths)]
    else:
        paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise PairsFileError("no pairs file given")
    return PairsFile(paths)


def merge_pairs(paths: Sequence[str | os.PathLike], out: str | os.PathLike, max_edges: int = 8) -> Path:
    """Merge shards into one pairs file at `out` (atomic, streaming)."""
    out = Path(out)
    if any(Path(p).resolve() == out.resolve() for p in paths):
        raise PairsFileError(f"{out}: the merged file must not overwrite one of its inputs")
    with open_pairs(paths) as pf:
        def predictions() -> Iterator[PairPrediction]:
            for batch in pf.iter_chunks(max_edges):
                for k in range(len(batch)):
                    yield PairPrediction(int(batch.pairs[k, 0]), int(batch.pairs[k, 1]), batch.pts3d_i[k],
                                         batch.pts3d_j[k], batch.conf_i[k], batch.conf_j[k])
        images = np.stack([pf.image(k) for k in range(pf.num_images)]) if pf.has_images else None
        return write_pairs(out, pf.names, pf.width, pf.height, predictions(), pf.original_sizes, images,
                           pf.pixel_maps)
