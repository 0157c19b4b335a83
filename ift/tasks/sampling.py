"""Seeded, machine-independent draws over sorted row indices.

Every draw uses numpy's `default_rng([stream, seed])` (a SeedSequence: the same numbers on any machine and
Python version) on a sorted list, so results never depend on set or hash order. Separate streams keep the
evaluation subsample, the demonstration order and the final shuffle independent of each other.
"""
from __future__ import annotations

import numpy as np

from ift.tasks.spec import TaskError

EVAL, POOL, SHUFFLE, DRAWS = 0, 1, 2, 3


def rng(seed: int, stream: int) -> np.random.Generator:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise TaskError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([stream, int(seed)])


def subsample(n_rows: int, limit: int | None, seed: int) -> list[int]:
    """`limit` row indices drawn without replacement, returned in source order (all rows if limit is None)."""
    if limit is None or limit >= n_rows:
        return list(range(n_rows))
    return sorted(int(i) for i in rng(seed, EVAL).choice(n_rows, size=limit, replace=False))


def permute(items: list[int], seed: int, stream: int) -> list[int]:
    return [items[int(i)] for i in rng(seed, stream).permutation(len(items))]


def redraw(items: list[int], seed: int, draw: int) -> list[int]:
    """Another order of `items` for demonstration draw `draw` >= 1 (its own stream: draw 0, the plain order,
    never changes)."""
    rng(seed, DRAWS)  # checks the seed
    return [items[int(i)] for i in np.random.default_rng([DRAWS, int(seed), int(draw)]).permutation(len(items))]


def first_per_class(order: list[int], classes: dict[int, int], n: int, n_classes: int) -> list[list[int]]:
    """For each class, the first `n` items of `order` that belong to it (fewer where the class runs out).

    Taking a prefix of one fixed order makes the N-shot draw a subset of the (N+1)-shot draw of the same seed.
    """
    picked: list[list[int]] = [[] for _ in range(n_classes)]
    for i in order:
        bucket = picked[classes[i]]
        if len(bucket) < n:
            bucket.append(i)
    return picked
