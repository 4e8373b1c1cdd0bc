"""Algorithms over all vectors at once: k-center greedy, k-means++ seeding, k-means representatives.

They run inside one `pipeline.Gatherer` actor on arrays sorted by id, so ties (np.argmax takes the first)
resolve to the smaller id and results do not depend on how the pool was sharded.
"""

from __future__ import annotations

import numpy as np

CHUNK = 16_384


def min_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of `x` to its nearest row of `centres` (+inf with no centres)."""
    out = np.full(len(x), np.inf)
    if len(centres) == 0:
        return out
    c = centres.astype(np.float64)
    c_sq = (c * c).sum(1)
    for s in range(0, len(x), CHUNK):
        xs = x[s:s + CHUNK].astype(np.float64)
        for t in range(0, len(c), CHUNK):
            d2 = (xs * xs).sum(1)[:, None] - 2 * xs @ c[t:t + CHUNK].T + c_sq[None, t:t + CHUNK]
            out[s:s + CHUNK] = np.minimum(out[s:s + CHUNK], np.sqrt(np.maximum(d2.min(1), 0.0)))
    return out


def kcenter_greedy(x: np.ndarray, budget: int, initial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: repeatedly take the point farthest from everything chosen so far.

    `initial` is each point's starting distance (to the labeled set for coreset; its norm, i.e. the distance to
    the origin, for NoiseStability). Returns (indices in pick order, distance of each pick when picked).
    """
    x64 = x.astype(np.float64)
    dist = initial.astype(np.float64).copy()
    picks, at_pick = [], []
    for _ in range(min(budget, len(x))):
        i = int(np.argmax(dist))
        picks.append(i)
        at_pick.append(dist[i])
        dist = np.minimum(dist, np.sqrt(((x64 - x64[i]) ** 2).sum(1)))
        dist[i] = -np.inf  # never again, even when its distance ties with another point's
    return np.asarray(picks, np.int64), np.asarray(at_pick)


def kmeanspp_seeds(x: np.ndarray, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding as BADGE uses it: the largest-norm point first, then each next point drawn with
    probability ∝ squared distance to the nearest chosen one. Returns (indices, squared distance when drawn)."""
    x64 = x.astype(np.float64)
    first = int(np.argmax((x64 * x64).sum(1)))
    picks, d2_at = [first], [float((x64[first] ** 2).sum())]
    d2 = ((x64 - x64[first]) ** 2).sum(1)
    while len(picks) < min(budget, len(x)):
        total = d2.sum()
        if total <= 0:  # every remaining point coincides with a chosen one: take the smallest unchosen index
            i = int(np.flatnonzero(~np.isin(np.arange(len(x)), picks))[0])
        else:
            i = int(rng.choice(len(x), p=d2 / total))
        picks.append(i)
        d2_at.append(float(d2[i]))
        d2 = np.minimum(d2, ((x64 - x64[i]) ** 2).sum(1))
        d2[picks] = 0.0
    return np.asarray(picks, np.int64), np.asarray(d2_at)


def fit_kmeans(data: np.ndarray, k: int, seed: int, iterations: int = 20):
    """A trained, seeded FAISS k-means of float32 `data` with `k` clusters."""
    import faiss

    # min_points_per_centroid only decides when FAISS warns on stderr; the few points a cluster gets when DM2's
    # spread, ALFA-Mix or TypiClust cluster a few hundred candidates are by design, not a mistake to warn of.
    km = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(data)
    return km


def kmeans_clusters(x: np.ndarray, k: int, seed: int, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """k-means with `k` clusters (FAISS, seeded): (each row's cluster, each row's squared distance to its
    centre)."""
    data = np.ascontiguousarray(x, np.float32)
    km = fit_kmeans(data, k, seed, iterations)
    _, assign = km.index.search(data, 1)
    assign = assign[:, 0]
    return assign, ((data - km.centroids[assign]) ** 2).sum(1)


def kmeans_representatives(x: np.ndarray, budget: int, seed: int, iterations: int = 20) -> np.ndarray:
    """k-means with `budget` clusters, then the member nearest each centre, in cluster order."""
    if len(x) <= budget:
        return np.arange(len(x), dtype=np.int64)
    assign, d2 = kmeans_clusters(x, budget, seed, iterations)
    reps = []
    for c in range(budget):
        members = np.flatnonzero(assign == c)
        if len(members):
            reps.append(int(members[np.argmin(d2[members])]))
    return np.asarray(reps, np.int64)
