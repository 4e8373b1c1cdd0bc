"""What DM2 computes (SPEC section 3), as pure functions shared by the reference and the distributed pipeline.

Keeping one implementation of each formula is what lets the distributed selection be tested for equality
against the single-process reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from raydm2.data.images import ImageSpec, decode, unit_float
from raydm2.acquisition.hashing import PURPOSE_NEIGHBOUR, PURPOSE_TAU, hash_ids, uniform

# τ for adaptive mixing is the median chosen-neighbour distance over at most this many anchors (a seeded sample
# above it), so the driver's memory does not grow with the pool.
TAU_SAMPLE = 100_000


@dataclass(frozen=True)
class DM2Params:
    k: int = 10
    lam: float = 0.8
    mix: str = "random"
    l2_weight: float = 0.5
    dedupe_radius: float | None = None
    seed: int = 0
    round: int = 1

    @classmethod
    def from_settings(cls, settings, seed: int, round_: int) -> "DM2Params":
        """From the `dm2` strategy's settings (`strategy:` in project.yaml)."""
        return cls(k=settings.knn.k, lam=settings.lam, mix=settings.mix, l2_weight=settings.knn.l2_weight,
                   dedupe_radius=settings.dedupe_radius, seed=seed, round=round_)


def unit(z: np.ndarray) -> np.ndarray:
    """ẑ = z / ‖z‖₂ (float32; an all-zero feature stays zero instead of becoming NaN)."""
    z = np.asarray(z, dtype=np.float32)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.maximum(norms, 1e-12)


def combined_distance(q: np.ndarray, c: np.ndarray, l2_weight: float) -> np.ndarray:
    """d_c = w·‖q−c‖₂/d + (1−w)·‖q−c‖₁/d for every (query, candidate) pair, on unit vectors: q (..., m, d) and
    c (..., n, d) give (..., m, n), leading dimensions broadcast.

    Float64 and direct (not matmul-expanded) distances: each pair's value is then the same whatever other rows
    share its batch, which keeps neighbour choices independent of how the pool was split.
    """
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float64))
    ct = torch.from_numpy(np.ascontiguousarray(c, dtype=np.float64))
    d = q.shape[-1]
    l2 = torch.cdist(qt, ct, p=2, compute_mode="donot_use_mm_for_euclid_dist")
    l1 = torch.cdist(qt, ct, p=1)
    return ((l2_weight * l2 + (1.0 - l2_weight) * l1) / d).numpy()


def nearest(dist: np.ndarray, cand_ids: np.ndarray, query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest candidates per query under `dist`, excluding the query itself; ties by smaller id.

    Returns (ids, distances), each (n_query, k'), k' = min(k, candidates - 1); rows are sorted nearest first.
    """
    dist = np.where(cand_ids[None, :] == query_ids[:, None], np.inf, dist)
    k_eff = min(k, dist.shape[1] - int(np.isin(query_ids, cand_ids).any()))
    out_ids = np.empty((len(query_ids), k_eff), np.int64)
    out_d = np.empty((len(query_ids), k_eff), np.float64)
    if k_eff == 0:
        return out_ids, out_d
    # Only candidates at or under a row's k-th smallest distance can be among its k nearest, so sorting just those
    # (k, or a few more where distances tie) gives the same (distance, id) order as sorting the whole row.
    kth = np.partition(dist, k_eff - 1, axis=1)[:, k_eff - 1]
    for r in range(len(query_ids)):
        short = np.flatnonzero(dist[r] <= kth[r])
        order = short[np.lexsort((cand_ids[short], dist[r, short]))[:k_eff]]
        out_ids[r] = cand_ids[order]
        out_d[r] = dist[r, order]
    return out_ids, out_d


def choose_neighbour(anchor_ids: np.ndarray, nbr_ids: np.ndarray, nbr_d: np.ndarray, params: DM2Params):
    """One neighbour per anchor by a hash of (seed, round, anchor id): independent of sharding and batching."""
    k_eff = nbr_ids.shape[1]
    slot = (hash_ids(anchor_ids, params.seed, params.round, PURPOSE_NEIGHBOUR) % np.uint64(k_eff)).astype(np.int64)
    rows = np.arange(len(anchor_ids))
    return nbr_ids[rows, slot], nbr_d[rows, slot]


def mix_lambda(chosen_d: np.ndarray, params: DM2Params, tau: float | None) -> np.ndarray:
    """λ per anchor: the fixed λ, or for `adaptive` λ_ij = 1 − (1−λ)·exp(−d_c(i,j)/τ) (nearer mixes more)."""
    if params.mix == "adaptive":
        if not tau or tau <= 0:
            return np.full(len(chosen_d), params.lam)
        return 1.0 - (1.0 - params.lam) * np.exp(-np.asarray(chosen_d, np.float64) / tau)
    return np.full(len(chosen_d), params.lam)


def mix(anchor: np.ndarray, partner: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """x̃ = λ·x_anchor + (1−λ)·x_partner on [0,1] pixels; inputs NHWC uint8 or float in [0,1]."""
    a = unit_float(anchor)
    p = unit_float(partner)
    lam = np.asarray(lam, np.float32).reshape(-1, 1, 1, 1)
    return lam * a + (1.0 - lam) * p


def mean_partner(neighbour_pixels: np.ndarray) -> np.ndarray:
    """`mix=mean` (Eq. 7): the partner is the pixel mean of all k neighbours, (k, H, W, C) -> (H, W, C) in [0,1]."""
    return unit_float(neighbour_pixels).mean(axis=0)


@dataclass(frozen=True)
class PoolImages:
    """A pool's images sorted by `ids`, where anchors and partners are looked up: decoded `pixels` (NHWC uint8),
    or, where those would take too much memory, the stored `encoded` bytes, decoded as they are looked up."""

    ids: np.ndarray
    pixels: np.ndarray | None = None
    encoded: pa.Array | None = None
    spec: ImageSpec | None = None

    def take(self, wanted: np.ndarray) -> np.ndarray:
        """The pixels of the `wanted` ids, any shape of ids: (..., H, W, C)."""
        wanted = np.asarray(wanted)
        rows = np.searchsorted(self.ids, wanted.reshape(-1))
        if self.pixels is not None:
            found = self.pixels[rows]
        else:
            found = np.stack([decode(b, self.spec) for b in self.encoded.take(pa.array(rows)).to_pylist()])
        return found.reshape(wanted.shape + found.shape[1:])


def with_partner_pixels(batch: dict, images: PoolImages, mean: bool) -> dict:
    """`batch` (anchors with their neighbours) with each anchor's `pixels` and its `partner`: the chosen
    neighbour's pixels or, with `mean`, the pixel mean of all its k neighbours (one anchor at a time, so a batch of
    large images never holds all k neighbours of every anchor at once)."""
    out = {**batch, "pixels": images.take(batch["id"])}
    if mean:
        return {**out, "partner": np.stack([mean_partner(images.take(row)) for row in np.asarray(batch["nbr_ids"])])}
    return {**out, "partner": images.take(batch["nbr_id"])}


def uncertainty(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(score, confidence): s = 1 − max softmax, computed in float32."""
    conf = torch.softmax(logits.float(), dim=1).max(dim=1).values.cpu().numpy().astype(np.float64)
    return 1.0 - conf, conf


def tau_sample_scores(ids: np.ndarray, params: DM2Params) -> np.ndarray:
    """Scores whose top TAU_SAMPLE (see `raydm2.topk`) form τ's seeded sample of anchors."""
    return uniform(ids, params.seed, params.round, PURPOSE_TAU)


def dedupe(order_ids: np.ndarray, nbr_ids: list[np.ndarray], nbr_d: list[np.ndarray], budget: int, radius: float):
    """Walk candidates best first; skip one whose d_c to an already-selected item among its k neighbours is < δ.

    Returns the positions (into the candidate arrays) that are kept, at most `budget`.
    """
    selected: set[int] = set()
    kept = []
    for pos, cid in enumerate(order_ids):
        close = nbr_ids[pos][nbr_d[pos] < radius]
        if any(int(j) in selected for j in close):
            continue
        kept.append(pos)
        selected.add(int(cid))
        if len(kept) == budget:
            break
    return np.asarray(kept, dtype=np.int64)
