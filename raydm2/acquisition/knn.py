"""Combined-distance k-nearest neighbours over unit embeddings: exact brute force or FAISS IVF + exact re-rank.

Both index kinds answer `search(query_ids, query_unit_z, k) -> (neighbour ids, d_c)` with the query itself
excluded and rows sorted nearest first (ties by smaller id). Indexes pickle (FAISS via `serialize_index`) so a
built index travels through the object store to every search actor without passing through the driver.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from raydm2.acquisition.mixing import choose_neighbour, combined_distance, nearest, unit
from raydm2.acquisition.hashing import PURPOSE_INDEX_SAMPLE, uniform
from raydm2.acquisition.topk import TopK

QUERY_CHUNK = 256


class KnnSettings(BaseModel):
    """`strategy.knn` of strategies that search neighbours (DM2)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    k: int = Field(10, gt=0, le=1000)
    # auto: exact brute force up to `exact_max_anchors`, FAISS IVF above.
    mode: Literal["auto", "exact", "ivf"] = "auto"
    exact_max_anchors: int = Field(20_000, gt=0)
    # Shortlist size as a multiple of k; SPEC requires k' >= 4k.
    shortlist_factor: int = Field(8, ge=4, le=256)
    nlist: int | None = Field(None, gt=0)
    nprobe: int | None = Field(None, gt=0)
    train_sample: int = Field(100_000, gt=0)
    l2_weight: float = Field(0.5, ge=0.0, le=1.0)


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
    shortlist: int
    train_size: int


class IVFIndex:
    """FAISS IVF-Flat on unit vectors (L2, i.e. cosine); a shortlist of k' ≥ 4k per query re-ranked by exact d_c."""

    kind = "ivf"

    def __init__(self, index, params: IVFParams, l2_weight: float):
        self.index = index
        self.params = params
        self.l2_weight = l2_weight
        self._gpu_index = None

    def __len__(self) -> int:
        return self.index.ntotal

    def __getstate__(self):
        import faiss

        return {"blob": faiss.serialize_index(self.index), "params": self.params, "l2_weight": self.l2_weight}

    def __setstate__(self, state):
        import faiss

        self.index = faiss.deserialize_index(state["blob"])
        self.index.set_direct_map_type(faiss.DirectMap.Hashtable)
        self.params = state["params"]
        self.l2_weight = state["l2_weight"]
        self._gpu_index = None

    def use_gpu_if_available(self) -> bool:
        """Search on the GPU with faiss-gpu when it is installed and CUDA is present; reconstruction stays on the
        CPU copy (GPU IVF indexes cannot reconstruct)."""
        import faiss

        if self._gpu_index is None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._gpu_res = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self.index)
            self._gpu_index.nprobe = self.params.nprobe
        return self._gpu_index is not None

    def search(self, query_ids: np.ndarray, query_z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.index.nprobe = self.params.nprobe
        searcher = self._gpu_index or self.index
        shortlist = max(self.params.shortlist, 4 * k) + 1  # +1: the query itself is usually its own nearest
        q = np.ascontiguousarray(query_z, np.float32)
        _, cand = searcher.search(q, shortlist)
        k_eff = min(k, len(self) - 1)
        out_i = np.empty((len(query_ids), k_eff), np.int64)
        out_d = np.empty((len(query_ids), k_eff), np.float64)
        d = q.shape[1]
        for s in range(0, len(query_ids), QUERY_CHUNK):
            c = cand[s:s + QUERY_CHUNK]
            valid = (c >= 0) & (c != query_ids[s:s + QUERY_CHUNK, None])
            vecs = self.index.reconstruct_batch(np.where(valid, c, c[valid][0] if valid.any() else 0).reshape(-1))
            vecs = vecs.reshape(c.shape[0], c.shape[1], d).astype(np.float64)
            diff = q[s:s + QUERY_CHUNK, None, :].astype(np.float64) - vecs
            dist = (self.l2_weight * np.sqrt((diff * diff).sum(-1)) + (1 - self.l2_weight) * np.abs(diff).sum(-1)) / d
            dist = np.where(valid, dist, np.inf)
            for r in range(c.shape[0]):
                pick = np.lexsort((c[r], dist[r]))[:k_eff]
                out_i[s + r] = c[r, pick]
                out_d[s + r] = dist[r, pick]
        return out_i, out_d

    def describe(self) -> dict:
        return {"kind": self.kind, "vectors": len(self), **self.params.__dict__}


# The default nprobe stops growing with nlist here: recall@10 against exact d_c neighbours was 0.9992 at 2·10^5
# and 0.9996 at 10^6 real-image embeddings with nprobe 32 (benchmarks/results/acquire_knn*.json), while nlist/16
# (250 at 10^6) made the search grow as n².
NPROBE_CAP = 32


def default_ivf_params(n: int, k: int, nlist: int | None, nprobe: int | None, shortlist_factor: int,
                       train_sample: int) -> IVFParams:
    nlist = nlist or int(min(65_536, max(16, 4 * math.sqrt(n))))
    nlist = min(nlist, max(1, n // 39))  # FAISS wants ≥ 39 training points per list
    return IVFParams(
        nlist=nlist,
        nprobe=min(nlist, nprobe or max(8, min(nlist // 16, NPROBE_CAP))),
        shortlist=shortlist_factor * k,
        train_size=min(n, max(train_sample, 39 * nlist)),
    )


def build_exact(batches: Iterable[tuple[np.ndarray, np.ndarray]], l2_weight: float) -> ExactIndex:
    ids, zs = [], []
    for i, z in batches:
        ids.append(i)
        zs.append(z)
    return ExactIndex(np.concatenate(ids), np.concatenate(zs), l2_weight)


def build_ivf(
    batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    n: int,
    params: IVFParams,
    l2_weight: float,
    seed: int,
    round_: int,
) -> IVFIndex:
    """Two streaming passes over (ids, unit z): pick the seeded training sample, then train and add everything.

    The sample is the `train_size` ids with the best hash scores, so it does not depend on how the embeddings
    are split into batches; memory holds only the sample plus FAISS's own index.
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
    index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    index.train(train)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    for ids, z in batches():
        index.add_with_ids(np.ascontiguousarray(z, np.float32), np.asarray(ids, np.int64))
    index.nprobe = params.nprobe
    return IVFIndex(index, params, l2_weight)


def build_index(batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], n: int, knn: KnnSettings,
                seed: int, round_: int) -> ExactIndex | IVFIndex:
    """The index of the `n` unit embeddings `batches()` yields: exact up to `knn.exact_max_anchors` rows (or as
    `knn.mode` says), IVF above. Both engines build it with this function, so they search the same index."""
    if knn.mode == "exact" or (knn.mode == "auto" and n <= knn.exact_max_anchors):
        return build_exact(batches(), knn.l2_weight)
    params = default_ivf_params(n, knn.k, knn.nlist, knn.nprobe, knn.shortlist_factor, knn.train_sample)
    return build_ivf(batches, n, params, knn.l2_weight, seed, round_)


class NeighbourSearcher:
    """Holds one copy of the index and answers kNN for batches of anchors, then picks each anchor's mixing partner
    by hash. In the Ray engine it is a pool actor that fetches the index from the object store once (`index` is
    then a one-element list holding the ObjectRef, which Ray Data does not resolve inside constructor arguments)."""

    def __init__(self, index, params, threads: int):
        import faiss

        faiss.omp_set_num_threads(max(1, threads))
        if isinstance(index, list):
            import ray

            index = ray.get(index[0])
        self.index = index
        if isinstance(self.index, IVFIndex):
            self.index.use_gpu_if_available()
        self.params = params

    def __call__(self, batch: dict) -> dict:
        ids = batch["id"]
        nbr_ids, nbr_d = self.index.search(ids, unit(batch["z"]), self.params.k)
        chosen, chosen_d = choose_neighbour(ids, nbr_ids, nbr_d, self.params)
        return {"id": ids, "conf": batch["conf"], "nbr_ids": nbr_ids, "nbr_dists": nbr_d,
                "nbr_id": chosen, "nbr_dist": chosen_d}
