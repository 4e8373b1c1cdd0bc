"""Combined-distance k-nearest neighbours over unit embeddings: exact brute force or FAISS IVF + exact re-rank.

Every index answers `search(query_ids, query_unit_z, k) -> (neighbour ids, d_c)` with the query itself
excluded and rows sorted nearest first (ties by smaller id). Indexes pickle (FAISS via `serialize_index`) so a
built index travels through the object store to every search actor without passing through the driver.

An IVF index too big for one search actor (`knn.index_bytes_per_actor`) is split by a hash of the id into shards
that share one trained coarse quantizer. Each shard keeps its own vectors, so its re-rank is exact; a query visits
every shard (probing the lists the first shard's quantizer chose for it) and `merge_nearest` keeps the best k of
their answers, which is the same whatever the shard order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from raydm2.acquisition.mixing import choose_neighbour, combined_distance, nearest, unit
from raydm2.acquisition.hashing import PURPOSE_INDEX_SAMPLE, PURPOSE_SHARD, uniform
from raydm2.acquisition.topk import TopK

QUERY_CHUNK = 256  # queries per exact d_c pass: 256 x candidates x d float64 values at a time
SCAN_CHUNK = 4096  # queries per fast-scan call: big enough for FAISS's batching, small next to its BLAS threshold


class KnnSettings(BaseModel):
    """`strategy.knn` of strategies that search neighbours (DM2)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    k: int = Field(10, gt=0, le=1000)
    # auto: exact brute force up to `exact_max_anchors`, FAISS IVF above.
    mode: Literal["auto", "exact", "ivf"] = "auto"
    exact_max_anchors: int = Field(20_000, gt=0)
    # Shortlist re-ranked by exact d_c, as a multiple of k; SPEC requires k' >= 4k. d_c's L1 term ranks some
    # neighbours far down L2's order, so the default shortlist is long.
    shortlist_factor: int = Field(16, ge=4, le=256)
    # Fast-scan candidates per shortlist entry, re-ranked by exact L2 down to the shortlist.
    scan_factor: int = Field(4, ge=1, le=16)
    nlist: int | None = Field(None, gt=0)
    nprobe: int | None = Field(None, gt=0)
    train_sample: int = Field(100_000, gt=0)
    l2_weight: float = Field(0.5, ge=0.0, le=1.0)
    # What one search actor may hold of an IVF index; a bigger index is split into shards (None: as many as that
    # takes, from `ivf_bytes`).
    index_bytes_per_actor: int = Field(2 * 2**30, gt=0)
    shards: int | None = Field(None, gt=0)

    def exact_for(self, n: int) -> bool:
        return self.mode == "exact" or (self.mode == "auto" and n <= self.exact_max_anchors)


class ExactIndex:
    """All unit embeddings held in memory; d_c computed against every candidate."""

    kind = "exact"

    def __init__(self, ids: np.ndarray, unit_z: np.ndarray, l2_weight: float):
        self.ids = np.asarray(ids, np.int64)
        self.z = np.asarray(unit_z, np.float32)
        self.l2_weight = l2_weight

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query_ids: np.ndarray, query_z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_i, out_d = [], []
        for s in range(0, len(query_ids), QUERY_CHUNK):
            dist = combined_distance(query_z[s:s + QUERY_CHUNK], self.z, self.l2_weight)
            i, d = nearest(dist, self.ids, query_ids[s:s + QUERY_CHUNK], k)
            out_i.append(i)
            out_d.append(d)
        return np.concatenate(out_i), np.concatenate(out_d)

    def describe(self) -> dict:
        return {"kind": self.kind, "vectors": len(self)}


@dataclass
class IVFParams:
    nlist: int
    nprobe: int
    shortlist: int  # candidates per query re-ranked by exact d_c
    scan: int  # fast-scan candidates per query re-ranked by exact L2 down to the shortlist
    train_size: int
    vectors: int  # in the whole index, every shard together
    shards: int | None = None  # None until the dimension is known (`train_ivf`)


# Resident bytes of an IVF index of n d-dimensional vectors held by a search actor: the float32 vectors kept for
# re-ranking, the fast-scan index (d/4 bytes of codes for even d, an id per vector, blocks of 32 per list) and the
# row -> id map. The shards of benchmarks/results/index_scale.json hold 572 B/vector at d = 128 (this gives 844); the
# estimate errs high because arrays grow while a shard fills, to keep every shard under `index_bytes_per_actor`.
def ivf_bytes(n: int, dim: int) -> int:
    return int(n * (1.5 * (4 * dim + 8) + 64))


def merge_nearest(a: tuple[np.ndarray, np.ndarray] | None, b: tuple[np.ndarray, np.ndarray],
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best per row of two (ids, d_c) answers for the same queries, by (distance, id): missing entries
    (id -1, distance inf) sort last. The order of merging never changes the result."""
    if a is None:
        return b
    ids = np.concatenate([a[0], b[0]], axis=1)
    dist = np.concatenate([a[1], b[1]], axis=1)
    order = np.lexsort((ids, dist), axis=1)[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)


class IVFIndex:
    """FAISS IVF with 4-bit PQ fast-scan codes of unit vectors (L2, i.e. cosine) finds `scan` candidates per
    query; a flat copy of the vectors re-ranks them by exact L2 to a shortlist of k' ≥ 4k, and the shortlist is
    re-ranked by exact d_c. Fast-scan reads a few bytes per candidate where IVF-Flat reads 4d, so at 10^6 probing
    enough lists for recall ≥ 0.98 costs less than IVF-Flat's 32 probes did (benchmarks/results/acquire_scale.json).

    Both FAISS indexes number a vector by its row in the flat copy (the order it arrived in; the IVF lists take the
    vectors in id order, see `fill_shard`); `ids` maps rows to pool ids.
    """

    kind = "ivf"

    def __init__(self, index, params: IVFParams, l2_weight: float, flat=None, ids: np.ndarray | None = None):
        import faiss

        self.index = index
        self.params = params
        self.l2_weight = l2_weight
        self.flat = faiss.IndexFlatL2(index.d) if flat is None else flat
        self.ids = np.empty(0, np.int64) if ids is None else ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self):
        import faiss

        return {"ivf": faiss.serialize_index(self.index), "flat": faiss.serialize_index(self.flat),
                "params": self.params, "l2_weight": self.l2_weight, "ids": self.ids}

    def __setstate__(self, state):
        import faiss

        self.index, self.flat = faiss.deserialize_index(state["ivf"]), faiss.deserialize_index(state["flat"])
        self.params, self.l2_weight, self.ids = state["params"], state["l2_weight"], state["ids"]

    def probe(self, query_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of the `nprobe` lists nearest each query: the same for every shard, which share the
        quantizer, so a sharded search computes them once."""
        return self.index.quantizer.search(np.ascontiguousarray(query_z, np.float32), self.params.nprobe)

    def search(self, query_ids: np.ndarray, query_z: np.ndarray, k: int,
               probes: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows are min(k, vectors - 1) wide, vectors counting every shard; a shard that has fewer candidates
        fills its rows with id -1 at distance inf. `probes` (from `probe`) skips the quantizer.

        Each query's answer depends on that query alone, so any split of the pool into batches finds the same
        neighbours; chunks of SCAN_CHUNK queries keep the candidate arrays small whatever the batch."""
        k_eff = min(k, self.params.vectors - 1)
        out_i = np.full((len(query_ids), k_eff), -1, np.int64)
        out_d = np.full((len(query_ids), k_eff), np.inf)
        if not len(self.ids):  # a shard that holds nothing
            return out_i, out_d
        self.index.nprobe = self.params.nprobe
        q = np.ascontiguousarray(query_z, np.float32)
        query_ids = np.asarray(query_ids)
        for s in range(0, len(q), SCAN_CHUNK):
            part = slice(s, s + SCAN_CHUNK)
            found = self._search_chunk(query_ids[part], q[part], k, k_eff,
                                       None if probes is None else (probes[0][part], probes[1][part]))
            out_i[part], out_d[part] = found
        return out_i, out_d

    def _search_chunk(self, query_ids: np.ndarray, q: np.ndarray, k: int, k_eff: int,
                      probes: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        shortlist = max(self.params.shortlist, 4 * k)
        scan = max(self.params.scan, shortlist) + 1  # +1: FAISS finds the query itself, dropped below
        if probes is None:
            _, rows = self.index.search(q, scan)
        else:
            _, rows = self.index.search_preassigned(q, scan, np.ascontiguousarray(probes[1], np.int64),
                                                    np.ascontiguousarray(probes[0], np.float32))
        valid = rows >= 0
        rows = np.where(valid, rows, 0)
        valid &= self.ids[rows] != query_ids[:, None]
        l2 = np.empty(rows.shape, np.float32)
        self.flat.compute_distance_subset(len(q), faiss.swig_ptr(q), scan, faiss.swig_ptr(l2), faiss.swig_ptr(rows))
        keep = np.argpartition(np.where(valid, l2, np.inf), shortlist - 1, axis=1)[:, :shortlist]
        rows, valid = np.take_along_axis(rows, keep, 1), np.take_along_axis(valid, keep, 1)
        vectors = _flat_vectors(self.flat)
        cand = np.where(valid, self.ids[rows], -1)
        dist = np.full(cand.shape, np.inf)
        for s in range(0, len(q), QUERY_CHUNK):
            part = slice(s, s + QUERY_CHUNK)
            d_c = combined_distance(q[part, None, :], vectors[rows[part]], self.l2_weight)[:, 0]
            dist[part] = np.where(valid[part], d_c, np.inf)
        pick = np.lexsort((cand, dist), axis=1)[:, :k_eff]
        return np.take_along_axis(cand, pick, 1), np.take_along_axis(dist, pick, 1)

    def describe(self) -> dict:
        return {"kind": self.kind, **self.params.__dict__, "shard_vectors": [len(self)]}


class ShardedIndex:
    """IVF shards held together in one process (the in-memory engine); the Ray engine searches each shard with
    its own actors instead and merges the same way."""

    kind = "ivf"

    def __init__(self, shards: list[IVFIndex]):
        self.shards = shards

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def search(self, query_ids: np.ndarray, query_z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        probes = self.shards[0].probe(query_z)
        found = None
        for shard in self.shards:
            found = merge_nearest(found, shard.search(query_ids, query_z, k, probes), k)
        return found

    def describe(self) -> dict:
        return merged_description([s.describe() for s in self.shards])


def merged_description(shards: list[dict]) -> dict:
    """One description of an index from those of its shards (in shard order)."""
    return {**shards[0], "shard_vectors": [v for d in shards for v in d.get("shard_vectors", [])]}


# The default nprobe stops growing with nlist here, so the search grows as n·√n rather than n² (nlist/16 would probe
# 250 lists at 10^6). With 4-bit fast-scan codes, 128 probes of 4,000 lists give recall@10 0.992 against exact d_c
# neighbours on the 10^6 scale pool, whose features spread over cells more than real images' do
# (benchmarks/results/acquire_scale.json); 32 probes of IVF-Flat gave 0.936 there.
NPROBE_CAP = 128


def ivf_params(n: int, knn: KnnSettings) -> IVFParams:
    """The IVF settings for `n` vectors: the user's `knn` values where set, the defaults below otherwise."""
    nlist = knn.nlist or int(min(65_536, max(16, 4 * math.sqrt(n))))
    nlist = min(nlist, max(1, n // 39))  # FAISS wants ≥ 39 training points per list
    return IVFParams(
        nlist=nlist,
        nprobe=min(nlist, knn.nprobe or max(8, min(nlist // 16, NPROBE_CAP))),
        shortlist=knn.shortlist_factor * knn.k,
        scan=knn.scan_factor * knn.shortlist_factor * knn.k,
        train_size=min(n, max(knn.train_sample, 39 * nlist)),
        vectors=n,
        shards=knn.shards,
    )


def build_exact(batches: Iterable[tuple[np.ndarray, np.ndarray]], l2_weight: float) -> ExactIndex:
    ids, zs = [], []
    for i, z in batches:
        ids.append(i)
        zs.append(z)
    return ExactIndex(np.concatenate(ids), np.concatenate(zs), l2_weight)


def train_ivf(batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], params: IVFParams, l2_weight: float,
              seed: int, round_: int, index_bytes_per_actor: int = 2 * 2**30) -> IVFIndex:
    """An empty IVF index with its coarse quantizer trained, from one streaming pass over (ids, unit z), and
    `params.shards` settled now that the dimension is known.

    The training sample is the `train_size` ids with the best hash scores, so it does not depend on how the
    embeddings are split into batches; memory holds only the sample.
    """
    import faiss

    best = TopK(params.train_size)
    dim = None
    for ids, z in batches():
        dim = z.shape[1]
        best.push(pa.table({"id": ids, "score": uniform(ids, seed, round_, PURPOSE_INDEX_SAMPLE),
                            "z": pa.FixedSizeListArray.from_arrays(z.reshape(-1), dim)}))
    sample = best.result()
    train = np.stack(sample.column("z").to_numpy(zero_copy_only=False)).astype(np.float32)
    quantizer = faiss.IndexFlatL2(dim)
    # Two dimensions per 4-bit sub-quantizer: coarser codes (d/4 of them) lost recall on the scale pool that
    # re-ranking could not win back. The codes quantize the vectors themselves, not their residuals (FAISS's
    # default for fast-scan), which is what the recorded recalls measured.
    index = faiss.IndexIVFPQFastScan(quantizer, dim, params.nlist, dim // 2 if dim % 2 == 0 else dim, 4,
                                     faiss.METRIC_L2)
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.train(train)
    shards = params.shards or math.ceil(ivf_bytes(params.vectors, dim) / index_bytes_per_actor)
    return IVFIndex(index, replace(params, shards=shards), l2_weight)


def shard_of(ids: np.ndarray, shards: int, seed: int, round_: int) -> np.ndarray:
    return (uniform(ids, seed, round_, PURPOSE_SHARD) * shards).astype(np.int64)


def fill_shard(trained: IVFIndex, batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], shard: int,
               seed: int, round_: int) -> IVFIndex:
    """Shard `shard` of a trained index: a copy of it holding the vectors whose id hashes to that shard (all of
    them when there is one shard), from one streaming pass."""
    import faiss

    flat = faiss.IndexFlatL2(trained.index.d)
    shards = trained.params.shards
    kept = []
    for ids, z in batches():
        if shards > 1:
            mine = shard_of(ids, shards, seed, round_) == shard
            ids, z = ids[mine], z[mine]
        flat.add(np.ascontiguousarray(z, np.float32))
        kept.append(np.asarray(ids, np.int64))
    ids = np.concatenate(kept) if kept else np.empty(0, np.int64)
    # The lists take the vectors in id order, whatever order the batches came in: fast-scan distances are coarse
    # and tie often, and a tie at the `scan` cut goes to the earlier entry in its list, which must not depend on
    # how an engine split the pool.
    index = faiss.clone_index(trained.index)
    vectors = _flat_vectors(flat)
    by_id = np.argsort(ids, kind="stable")
    for s in range(0, len(ids), 65_536):
        rows = by_id[s:s + 65_536]
        index.add_with_ids(np.ascontiguousarray(vectors[rows]), rows.astype(np.int64))  # rows, see IVFIndex
    return IVFIndex(index, trained.params, trained.l2_weight, flat, ids)


def _flat_vectors(flat) -> np.ndarray:
    """The vectors an IndexFlat holds, as a numpy view of its storage (no copy; valid while `flat` lives)."""
    import faiss

    if not flat.ntotal:
        return np.empty((0, flat.d), np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(-1, flat.d)


def build_ivf(batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], params: IVFParams, l2_weight: float,
              seed: int, round_: int, index_bytes_per_actor: int = 2 * 2**30) -> IVFIndex | ShardedIndex:
    """Train, then fill every shard: 1 + shards streaming passes over `batches()`."""
    trained = train_ivf(batches, params, l2_weight, seed, round_, index_bytes_per_actor)
    shards = [fill_shard(trained, batches, s, seed, round_) for s in range(trained.params.shards)]
    return shards[0] if len(shards) == 1 else ShardedIndex(shards)


def build_index(batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], n: int, knn: KnnSettings,
                seed: int, round_: int) -> ExactIndex | IVFIndex | ShardedIndex:
    """The index of the `n` unit embeddings `batches()` yields: exact up to `knn.exact_max_anchors` rows (or as
    `knn.mode` says), IVF above. Both engines build it from these functions, so they search the same index."""
    if knn.exact_for(n):
        return build_exact(batches(), knn.l2_weight)
    return build_ivf(batches, ivf_params(n, knn), knn.l2_weight, seed, round_, knn.index_bytes_per_actor)


class NeighbourSearcher:
    """Holds one copy of the index (or of one shard) and answers kNN for batches of anchors. In the Ray engine it is
    a pool actor, whose `ActorStage` fetches the index from the object store once.

    A shard's searcher gets from the batch what earlier shards found: the lists to probe (`probe`, `probe_d`, from
    the first shard's quantizer) and the best k so far (`nbr_ids`/`nbr_dists`), which it merges with its own. The
    last searcher (`choose`) picks each anchor's mixing partner by hash and drops the embeddings and probes; the
    others keep them for the next shard.
    """

    def __init__(self, index, params, threads: int, choose: bool = True):
        import faiss
        import torch

        faiss.omp_set_num_threads(max(1, threads))
        # The exact re-rank is torch's cdist, whose pool Ray sizes from the actor's CPU reservation, not the plan.
        torch.set_num_threads(max(1, threads))
        self.index = index
        self.params = params
        self.choose = choose

    def __call__(self, batch: dict) -> dict:
        ids, z = batch["id"], unit(batch["z"])
        if isinstance(self.index, IVFIndex) and self.index.params.shards > 1:
            probes = (batch["probe_d"], batch["probe"]) if "probe" in batch else self.index.probe(z)
            found = self.index.search(ids, z, self.params.k, probes)
        else:
            probes, found = None, self.index.search(ids, z, self.params.k)
        if "nbr_ids" in batch:
            found = merge_nearest((batch["nbr_ids"], batch["nbr_dists"]), found, self.params.k)
        nbr_ids, nbr_d = found
        if not self.choose:
            return {**batch, "nbr_ids": nbr_ids, "nbr_dists": nbr_d, "probe_d": probes[0], "probe": probes[1]}
        chosen, chosen_d = choose_neighbour(ids, nbr_ids, nbr_d, self.params)
        return {"id": ids, "conf": batch["conf"], "nbr_ids": nbr_ids, "nbr_dists": nbr_d,
                "nbr_id": chosen, "nbr_dist": chosen_d}
