"""Core-set (Sener & Savarese): greedy k-center on the penultimate embeddings, with the labeled set as the
initial centres. The unlabeled embeddings are gathered in one actor (`pipeline.Gatherer`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray.data

from raydm2 import pipeline
from raydm2.greedy import kcenter_greedy, min_distances
from raydm2.strategies import register
from raydm2.strategies.base import AcquireRequest, AcquireResult


def picks_table(ids: np.ndarray, picks: np.ndarray, score: np.ndarray) -> pa.Table:
    return pa.table({"id": pa.array(ids[picks], pa.int64()), "score": pa.array(score, pa.float64())})


def stack(ds: ray.data.Dataset | None, column: str) -> np.ndarray:
    """All rows of one vector column of a (small) dataset, e.g. the labeled set's embeddings."""
    if ds is None:
        return np.empty((0, 0), np.float32)
    parts = [b[column] for b in ds.select_columns([column]).iter_batches(batch_format="numpy", batch_size=65_536)]
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def coreset(ids: np.ndarray, z: np.ndarray, centres: np.ndarray, budget: int) -> pa.Table:
    """The `budget` picks of greedy k-center started from `centres`; score = distance to the nearest centre
    or earlier pick at the moment of picking."""
    picks, dist = kcenter_greedy(z, budget, min_distances(z, centres))
    return picks_table(ids, picks, dist)


def _coreset_in_actor(ids, z, labeled: ray.data.Dataset | None, budget: int) -> pa.Table:
    return coreset(ids, z, stack(labeled, "z"), budget)


@register("coreset")
def select(req: AcquireRequest) -> AcquireResult:
    watch = pipeline.Stopwatch()
    good, labeled, counts = pipeline.embed_with_labeled(req, watch)
    picked = pipeline.gather(good, ["id", "z"], _coreset_in_actor, labeled=labeled, budget=req.budget)
    return pipeline.finish(picked, req, watch, counts)
