"""Streaming top-B with a total order (score descending, then id ascending), mergeable across shards.

Because the order is total, the global top-B is always contained in the union of each shard's local top-B,
so merging local results gives exactly the single-process answer whatever the sharding.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def order(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Indices sorting by score descending, ties broken by smaller id first."""
    return np.lexsort((ids, -scores))


def top_rows(table: pa.Table, budget: int, score_col: str = "score") -> pa.Table:
    """The `budget` best rows of `table`, sorted best first."""
    if table.num_rows == 0:
        return table
    scores = table.column(score_col).to_numpy(zero_copy_only=False).astype(np.float64)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    idx = order(scores, ids)[:budget]
    return table.take(pa.array(idx))


class TopK:
    """Keeps the best `budget` rows seen so far; memory is O(budget) whatever the stream length."""

    def __init__(self, budget: int):
        self.budget = budget
        self._best: pa.Table | None = None

    def push(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        merged = table if self._best is None else pa.concat_tables([self._best, table], promote_options="default")
        self._best = top_rows(merged, self.budget)

    def result(self) -> pa.Table | None:
        return self._best
