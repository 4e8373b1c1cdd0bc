"""The in-memory engine: every operation of `Engine` on numpy arrays in one process.

It runs the same plans, model functions and formulas as `RayEngine`, each model function called once on every row
it must see, with DM2's index built by the same function. It is the oracle the distributed engine is tested
against, and the engine of `raydm2 simulate --engine local`, where hundreds of small rounds would otherwise pay
Ray's fixed costs each time. It holds the decoded pool in memory: use it for pools of tens of thousands of images.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from raydm2.acquisition.engine import Engine, Handle, sorted_by_id
from raydm2.acquisition.knn import KnnSettings, NeighbourSearcher, build_index
from raydm2.acquisition.mixing import DM2Params, PoolImages, unit, with_partner_pixels
from raydm2.acquisition.model_actors import Embedder
from raydm2.acquisition.request import AcquireRequest
from raydm2.acquisition.topk import top_rows
from raydm2.data import pool
from raydm2.data.images import ImageSpec, decode_batch
from raydm2.errors import RayDM2Error


def load_pool(pool_uri: str, spec: ImageSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, NHWC uint8 pixels, ok) of every pool image, sorted by id; `ok` is 0 for undecodable images."""
    table = pool.read_columns(pool_uri, ["id", "image"]).sort_by("id")
    out = decode_batch({"id": table.column("id").to_numpy(), "image": table.column("image").to_pylist()}, spec)
    return out["id"], out["pixels"], out["ok"].astype(bool)


class LocalEngine(Engine):
    def __init__(self, request: AcquireRequest, ids: np.ndarray, pixels: np.ndarray, ok: np.ndarray | None = None):
        """`ids` (sorted) and `pixels` of the whole pool, decoded; `ok` marks the decodable ones (default all)."""
        super().__init__(request)
        self.ids = np.asarray(ids, np.int64)
        self.pixels = pixels
        self.ok = np.ones(len(self.ids), bool) if ok is None else np.asarray(ok, bool)
        self._models: dict[type, object] = {}

    @classmethod
    def from_pool(cls, request: AcquireRequest) -> "LocalEngine":
        return cls(request, *load_pool(request.pool, request.image))

    def _batch(self, rows: np.ndarray) -> dict:
        return {"id": self.ids[rows], "pixels": self.pixels[rows], "ok": self.ok[rows].astype(np.uint8)}

    def _run(self, model_fn, batch: dict, **kwargs) -> dict:
        if not isinstance(model_fn, type):
            return model_fn(batch, **kwargs)
        # torch's thread count is process-wide and the actors set it: keep the caller's.
        actor = model_fn(checkpoint_uri=self.request.checkpoint, spec=self.request.model, **kwargs,
                         threads=torch.get_num_threads(), use_gpu=False)
        return actor(batch)

    def _usable(self, out: dict, stage: str | None) -> dict:
        """The counts `RayEngine._checked` records, the same refusals, and the usable rows."""
        ok, finite = out["ok"].astype(bool), out["finite"].astype(bool)
        if (ok & ~finite).any():
            raise RayDM2Error(f"the model produced NaN/inf for {int((ok & ~finite).sum())} images: the checkpoint"
                              f" {self.request.checkpoint} looks diverged; retrain before acquiring")
        if not ok.any():
            raise RayDM2Error(f"no unlabeled, decodable images left in pool {self.request.pool!r}")
        self.counts.update({
            "pool_rows_read": len(ok), "skipped_undecodable": int((~ok).sum()), "candidates": int(ok.sum()),
            "excluded_ids": int(len(self.request.excluded)), "embeddings_from_cache": 0,
            "embeddings_computed": len(ok)})
        if stage:
            self.lap(stage)
        return {c: np.asarray(a)[ok] for c, a in out.items()}

    def _unlabeled(self, excluded: np.ndarray) -> np.ndarray:
        return np.flatnonzero(~np.isin(self.ids, excluded))

    def score(self, model_fn, stage: str | None = None, on: Handle | None = None, **kwargs) -> Handle:
        if on is not None:
            return self._run(model_fn, on, **kwargs)
        rows = self._unlabeled(self.request.excluded)
        return self._usable(self._run(model_fn, self._batch(rows), **kwargs), stage)

    def embed(self, with_labeled: bool = False):
        req = self.request
        if not with_labeled:
            return self.score(Embedder, "embed_s")
        labeled_ids = req.labeled.column("id").to_numpy()
        unlabeled_rows = self._unlabeled(np.union1d(req.excluded, labeled_ids))
        labeled_rows = np.flatnonzero(np.isin(self.ids, labeled_ids))
        rows = np.concatenate([unlabeled_rows, labeled_rows])
        out = self._run(Embedder, self._batch(rows))
        split = len(unlabeled_rows)
        unlabeled = self._usable({c: a[:split] for c, a in out.items()}, "embed_s")
        labeled_ok = out["ok"][split:].astype(bool)
        return unlabeled, {c: a[split:][labeled_ok] for c, a in out.items()}

    def map(self, handle: Handle, fn, **kwargs) -> Handle:
        return fn(handle, **kwargs)

    def top(self, handle: Handle, keep: int) -> pa.Table | None:
        table = handle if isinstance(handle, pa.Table) else pa.table({c: _column(a) for c, a in handle.items()})
        return top_rows(table, keep) if table.num_rows else None

    def gather(self, fn, inputs: dict[str, tuple[Handle, list[str]]], **kwargs):
        return fn(**{name: sorted_by_id({c: np.asarray(h[c]) for c in columns})
                     for name, (h, columns) in inputs.items()}, **kwargs)

    def neighbours(self, embedded: Handle, knn: KnnSettings, params: DM2Params) -> Handle:
        ids, z = embedded["id"], unit(embedded["z"])
        index = build_index(lambda: iter([(ids, z)]), len(ids), knn, params.seed, params.round)
        self.index = index.describe()
        self.lap("index_s")
        searched = NeighbourSearcher(index, params, torch.get_num_threads())(embedded)
        self.lap("search_s")
        return searched

    def with_partners(self, searched: Handle, mean: bool) -> Handle:
        return with_partner_pixels(searched, PoolImages(self.ids, self.pixels), mean)


def _column(values: np.ndarray) -> pa.Array:
    """A numpy column as Arrow; 2-D arrays (neighbour lists, vectors) become fixed-size lists."""
    values = np.asarray(values)
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.array(values)
