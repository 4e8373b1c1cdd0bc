"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): for a cold start, the most typical image of each of the
largest clusters not yet covered by a label.

The embeddings (L2-normalised z) are clustered with k-means into |L| + B clusters; clusters holding a labeled image
are covered. From the B largest uncovered clusters (the authors skip clusters of fewer than 5 images while enough
others exist), each gives the image of highest typicality, 1 / (mean distance to its k = min(20, size − 1) nearest
neighbours in the cluster). With no labels yet (`raydm2 seed --strategy typiclust`) every cluster is uncovered.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from raydm2.acquisition.greedy import fit_kmeans
from raydm2.acquisition.ranking import select_picked
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register

MIN_CLUSTER = 5


class Settings(StrategySettings):
    name: Literal["typiclust"] = "typiclust"
    # neighbours that define typicality (the authors' 20)
    typicality_k: int = Field(20, gt=0, le=1000)


def typicality(x: np.ndarray, k: int) -> np.ndarray:
    """1 / mean Euclidean distance to the k nearest other rows (exact, FAISS flat search: O(n·k) memory)."""
    import faiss

    if len(x) < 2:
        return np.ones(len(x))
    k = min(k, len(x) - 1)
    data = np.ascontiguousarray(x, np.float32)
    index = faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    d2, _ = index.search(data, k + 1)  # the row itself comes first, at distance 0
    return 1.0 / (np.sqrt(np.maximum(d2[:, 1:], 0.0)).mean(1) + 1e-12)


def typiclust(ids: np.ndarray, z: np.ndarray, labeled_z: np.ndarray, budget: int, k: int, seed: int) -> pa.Table:
    unit = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    clusters = min(len(labeled_z) + budget, len(z))
    km = fit_kmeans(np.ascontiguousarray(unit, np.float32), clusters, seed)
    _, assign = km.index.search(np.ascontiguousarray(unit, np.float32), 1)
    assign = assign[:, 0]
    covered = set()
    if len(labeled_z):
        lunit = labeled_z / np.maximum(np.linalg.norm(labeled_z, axis=1, keepdims=True), 1e-12)
        covered = set(km.index.search(np.ascontiguousarray(lunit, np.float32), 1)[1][:, 0].tolist())
    sizes = np.bincount(assign, minlength=clusters)
    # Largest first; ties by cluster index, so the order is a pure function of the clustering.
    order = [c for c in np.lexsort((np.arange(clusters), -sizes)) if c not in covered and sizes[c] > 0]
    big = [c for c in order if sizes[c] >= MIN_CLUSTER]
    order = big + [c for c in order if sizes[c] < MIN_CLUSTER] if len(big) < budget else big
    picks, scores = [], []
    for c in order[:budget]:
        members = np.flatnonzero(assign == c)
        t = typicality(unit[members], k)
        best = int(np.argmax(t))
        picks.append(members[best])
        scores.append(t[best])
    if len(picks) < budget:  # fewer non-empty uncovered clusters than B: the most typical of the rest, pool-wide
        rest = np.setdiff1d(np.arange(len(ids)), picks)
        t = typicality(unit[rest], k)
        extra = rest[np.lexsort((ids[rest], -t))][:budget - len(picks)]
        picks += extra.tolist()
        scores += t[np.searchsorted(rest, extra)].tolist()
    picks = np.asarray(picks, np.int64)
    return pa.table({"id": pa.array(ids[picks], pa.int64()), "score": pa.array(scores, pa.float64())})


def _gathered(pool: dict, labeled: dict, budget: int, k: int, seed: int) -> pa.Table:
    return typiclust(pool["id"], pool["z"], labeled["z"], budget, k, seed)


@register(Settings)
def plan(engine, request):
    unlabeled, labeled = engine.embed(with_labeled=True)
    picked = engine.gather(_gathered, {"pool": (unlabeled, ["id", "z"]), "labeled": (labeled, ["id", "z"])},
                           budget=request.budget, k=request.settings.typicality_k,
                           seed=request.seed * 1009 + request.round)
    return select_picked(engine, picked)
