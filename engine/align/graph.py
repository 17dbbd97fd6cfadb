# SPDX-License-Identifier: GPL-3.0-or-later
"""Pair graphs: which image pairs a pointmap network predicts, and the graph algorithms the aligner needs.

Graph modes (DUSt3R's names; every unordered pair is used in both directions, (i, j) and (j, i)):
    complete         every pair
    swin-K           each image with its K successors, cyclic (the last images pair with the first)
    swin-K-noncyclic the same without wrapping around
    logwin-K         each image with the images 1, 2, 4, ..., 2^(K-1) before and after it, cyclic
    logwin-K-noncyclic
    oneref-K         image K (default 0) with every other image
"""
from __future__ import annotations

import numpy as np

from ..errors import EngineError

GRAPH_MODES = ("complete", "swin-K", "swin-K-noncyclic", "logwin-K", "logwin-K-noncyclic", "oneref-K")


def _parse_mode(mode: str) -> tuple[str, int | None, bool]:
    parts = mode.split("-")
    kind = parts[0]
    cyclic = True
    if parts[-1] == "noncyclic" and kind in ("swin", "logwin"):
        cyclic = False
        parts = parts[:-1]
    if kind not in ("complete", "swin", "logwin", "oneref") or len(parts) > (1 if kind == "complete" else 2):
        raise EngineError(f"unknown pair graph mode {mode!r}; known modes: {', '.join(GRAPH_MODES)}")
    k = None
    if len(parts) == 2:
        try:
            k = int(parts[1])
        except ValueError:
            raise EngineError(f"pair graph mode {mode!r}: {parts[1]!r} is not an integer") from None
    return kind, k, cyclic


def make_pairs(n: int, mode: str = "complete") -> list[tuple[int, int]]:
    """Ordered pairs (i, j) for `n` images: each unordered pair once as (low, high), then all reversed."""
    if n < 2:
        raise EngineError(f"a pair graph needs at least 2 images, got {n}")
    kind, k, cyclic = _parse_mode(mode)
    pairs: set[tuple[int, int]] = set()

    def add(a: int, b: int) -> None:
        if cyclic:
            b %= n
        if 0 <= b < n and a != b:
            pairs.add((min(a, b), max(a, b)))

    if kind == "complete":
        for a in range(n):
            for b in range(a + 1, n):
                add(a, b)
    elif kind == "swin":
        window = 3 if k is None else k
        if window < 1:
            raise EngineError(f"pair graph mode {mode!r}: the window must be at least 1")
        for a in range(n):
            for off in range(1, window + 1):
                add(a, a + off)
    elif kind == "logwin":
        window = 3 if k is None else k
        if window < 1:
            raise EngineError(f"pair graph mode {mode!r}: the window must be at least 1")
        for a in range(n):
            for off in (2 ** p for p in range(window)):
                add(a, a + off)
                add(a, a - off)
    else:
        ref = 0 if k is None else k
        if not 0 <= ref < n:
            raise EngineError(f"pair graph mode {mode!r}: reference image {ref} is not in 0..{n - 1}")
        for b in range(n):
            add(ref, b)
    forward = sorted(pairs)
    return forward + [(b, a) for a, b in forward]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> bool:
        """Join the sets of a and b; False when they were already one."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


def connected_components(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components of the undirected graph on `n` nodes, largest first (ties: lowest index first)."""
    uf = _UnionFind(n)
    for a, b in np.asarray(pairs).reshape(-1, 2):
        uf.union(int(a), int(b))
    groups: dict[int, list[int]] = {}
    for a in range(n):
        groups.setdefault(uf.find(a), []).append(a)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def maximum_spanning_tree(n: int, pairs: np.ndarray, scores: np.ndarray) -> list[int]:
    """Indices into `pairs` of a maximum spanning tree (forest) by Kruskal; both directions count as one link."""
    uf = _UnionFind(n)
    return [int(e) for e in np.argsort(-np.asarray(scores), kind="stable")
            if uf.union(int(pairs[e, 0]), int(pairs[e, 1]))]
