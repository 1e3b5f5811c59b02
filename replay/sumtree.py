"""A sum tree over priorities, every operation vectorised over a batch (proportional prioritized replay).

Why this shape: one float64 array of ``2 * P`` nodes (``P`` = ``size`` rounded up to a power of
two; node ``k``'s children are ``2k`` and ``2k + 1``, the root is node 1, leaf ``i`` is node
``P + i``). Updating or searching a whole batch then costs one numpy pass per tree level (about
20 at 1M leaves) instead of a Python loop per element, and every inner node is recomputed from
its children rather than adjusted by differences, so rounding never drifts.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Non-negative float64 values on ``size`` leaves; prefix-sum search in ``O(log size)`` per query."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._leaf0 = 1 << (size - 1).bit_length()  # P: the first leaf's node number
        self._depth = self._leaf0.bit_length() - 1  # levels below the root
        self._tree = np.zeros(2 * self._leaf0, np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaves (the root)."""
        return float(self._tree[1])

    @property
    def nbytes(self) -> int:
        return int(self._tree.nbytes)

    def _check(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64).ravel()
        if indices.size and (indices.min() < 0 or indices.max() >= self.size):
            raise ValueError(f"leaf indices must lie in 0..{self.size - 1}")
        return indices

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Leaf values at ``indices``."""
        return self._tree[self._check(indices) + self._leaf0]

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves; for an index given twice the last value wins. Values must be finite and >= 0."""
        indices = self._check(indices)
        values = np.asarray(values, np.float64).ravel()
        if len(values) != len(indices):
            raise ValueError(f"{len(indices)} indices but {len(values)} values")
        if not indices.size:
            return
        if not (np.isfinite(values).all() and values.min() >= 0):
            raise ValueError("sum tree values must be finite and >= 0")
        # np.unique on the reversed arrays keeps each index's last occurrence, sorted
        nodes, last = np.unique(indices[::-1], return_index=True)
        nodes += self._leaf0
        tree = self._tree
        tree[nodes] = values[::-1][last]
        for _ in range(self._depth):
            nodes >>= 1
            nodes = nodes[np.concatenate(([True], nodes[1:] != nodes[:-1]))]  # sorted: drop repeats
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]

    def find(self, u: np.ndarray) -> np.ndarray:
        """Leaf ``i`` with ``prefix(i) <= u < prefix(i + 1)`` for each ``u`` (clamped to ``[0, total)``).

        Never a zero leaf: where rounding leaves ``u`` past a subtree whose sum is 0, the descent
        stays on the positive side. ValueError when every leaf is 0.
        """
        total = self._tree[1]
        if not total > 0:
            raise ValueError("the sum tree holds no positive value")
        u = np.clip(np.asarray(u, np.float64), 0.0, np.nextafter(total, 0.0))
        tree = self._tree
        node = np.ones(u.shape, np.int64)
        for _ in range(self._depth):
            node <<= 1  # the left child
            left = tree[node]
            right = tree[node + 1]
            go_right = ((u >= left) & (right > 0)) | (left <= 0)
            u -= left * go_right
            node += go_right
        return node - self._leaf0

    def state(self) -> np.ndarray:
        """A copy of the leaves: all :meth:`restore` needs to rebuild the tree."""
        return self._tree[self._leaf0:self._leaf0 + self.size].copy()

    def restore(self, leaves: np.ndarray) -> None:
        """Replace every leaf with ``leaves`` (from :meth:`state`) and rebuild the inner nodes."""
        leaves = np.asarray(leaves, np.float64)
        if leaves.shape != (self.size,):
            raise ValueError(f"expected {self.size} leaves, got shape {leaves.shape}")
        if not (np.isfinite(leaves).all() and (leaves >= 0).all()):
            raise ValueError("sum tree values must be finite and >= 0")
        tree = self._tree
        tree[:] = 0.0
        tree[self._leaf0:self._leaf0 + self.size] = leaves
        level = self._leaf0 >> 1
        while level >= 1:  # nodes level .. 2*level-1 from their children
            tree[level:2 * level] = tree[2 * level:4 * level:2] + tree[2 * level + 1:4 * level:2]
            level >>= 1
