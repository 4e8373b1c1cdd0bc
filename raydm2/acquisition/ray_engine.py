"""The distributed engine: every operation of `Engine` on Ray Data (SPEC section 5).

    read pool ─ drop excluded ids ─ model actors (checkpoint loaded once per actor; CPU actors decode the images
                                    themselves, GPU actors are fed by decode tasks)

then per-block top-B merged on the driver, one gather actor for global algorithms, or DM2's neighbour search
(index built by tasks, searched by actors that each hold it or, at scale, one shard of it) and the anchor's and
partner's images: looked up by the scoring actors in the pool's images shared through the object store (decoded
once, by a task that runs beside the index build, or for bigger pools as stored bytes), or, for pools too big to
share, brought by hash joins. The driver holds only ids of previously selected images and O(B) candidates: its
memory does not grow with the pool.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from raydm2.acquisition.engine import Engine, Handle, sorted_by_id
from raydm2.acquisition.local_engine import load_pool
from raydm2.acquisition.knn import (IVFParams, KnnSettings, NeighbourSearcher, build_exact, fill_shard,
                                    ivf_params, merged_description, train_ivf)
from raydm2.acquisition.mixing import DM2Params, PoolImages, mean_partner, unit, with_partner_pixels
from raydm2.acquisition.model_actors import Embedder
from raydm2 import progress
from raydm2.acquisition.request import AcquireOptions, AcquireRequest
from raydm2.acquisition.actor_stage import ActorStage, Tally
from raydm2.acquisition.topk import TopK
from raydm2.data import pool
from raydm2.data.images import ImageSpec, decode, decode_batch
from raydm2.data.storage import Location
from raydm2.errors import RayDM2Error
from raydm2.models import checkpoint
from raydm2.runtime import ActorPlan, plan_actors

ROWS_PER_JOIN_PARTITION = 50_000
# A pool whose decoded pixels take at most this many bytes is decoded once and shared with the scoring actors
# through the object store (one copy per node, read in place): decoding anchor and partner for every mix took
# more time than the model did (benchmarks/results/acquire_floor_small_cnn_rerun_before_pixels.json).
SHARED_PIXELS_MAX_BYTES = 512 * 2**20
# Above that, a pool whose stored images take at most this many bytes is shared as those bytes (decoded as they
# are looked up) instead of being joined to the anchors twice: a hash join starts shuffle actors and moves every
# image, which dominates a small acquisition.
SHARED_IMAGES_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Prepared:
    """Rows that the actors of the stage scoring them complete first with `prepare` (see `ActorStage`)."""

    rows: ray.data.Dataset
    prepare: tuple[Callable, dict]


class RayEngine(Engine):
    def __init__(self, request: AcquireRequest, opts: AcquireOptions | None = None):
        super().__init__(request)
        self.opts = opts or AcquireOptions()
        self._tally = None

    @contextmanager
    def _counting(self, stage: str | None, total: Callable[[], int | None]) -> Iterator[str | None]:
        """While someone watches (`progress.wants_counts`), the block's actor pools count their rows under `stage`
        (the yielded name, passed to them as `count_as`; None: nobody watches and nothing counts)."""
        if stage is None or not progress.wants_counts():
            yield None
            return
        if self._tally is None:
            self._tally = Tally.remote()
        tally = self._tally
        with progress.counting(stage, total(), lambda: ray.get(tally.read.remote(stage))):
            yield stage

    def _rows_left(self, excluded: np.ndarray | None) -> int:
        """Rows of the pool less the `excluded` ids: a stage's total for the live line."""
        return max(0, pool.pool_info(self.request.pool).rows - len(excluded if excluded is not None else []))

    # ---- the pool through a model -------------------------------------------------------------------------
    def _plan(self) -> ActorPlan:
        return plan_actors(self.opts.actors, self.opts.use_gpu)

    def _read_pool(self) -> ray.data.Dataset:
        parts = pool.part_uris(self.request.pool)
        return ray.data.read_parquet(parts, override_num_blocks=self.opts.blocks).select_columns(["id", "image"])

    def _decode(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        return ds.map_batches(decode_batch, fn_kwargs={"spec": self.request.image}, batch_format="numpy",
                              batch_size=self.opts.batch_size, num_cpus=0.5)

    def _map_model(self, ds: ray.data.Dataset | Prepared, model_fn, count_as: str | None = None,
                   decode: bool = False, **kwargs) -> ray.data.Dataset:
        """`ds` through a `ModelActor` subclass in an actor pool laid out from free resources, or through a plain
        function as tasks. With `decode`, `ds` holds pool rows (`id`, `image` bytes): CPU actors decode them in the
        same stage, GPU actors get pixels from decode tasks (which keep the CPUs busy while the GPU computes). With
        `count_as`, the actors tell the tally their rows under that stage."""
        if not isinstance(model_fn, type):
            ds = self._decode(ds) if decode else ds
            return ds.map_batches(model_fn, fn_kwargs=kwargs, batch_format="numpy", num_cpus=0.25)
        plan = self._plan()
        kwargs = {"checkpoint_uri": self.request.checkpoint, "spec": self.request.model, **kwargs,
                  "threads": plan.threads, "use_gpu": plan.uses_gpu}
        prepare = None
        if isinstance(ds, Prepared):
            ds, prepare = ds.rows, ds.prepare
        elif decode and plan.uses_gpu:
            ds = self._decode(ds)
        elif decode:
            prepare = (decode_batch, {"spec": self.request.image})
        return self._actor_pool(ds, model_fn, kwargs, count_as, plan, self.opts.batch_size, prepare)

    def _actor_pool(self, ds: ray.data.Dataset, fn_class: type, kwargs: dict, count_as: str | None,
                    plan: ActorPlan, batch_size: int, prepare: tuple[Callable, dict] | None = None
                    ) -> ray.data.Dataset:
        return ds.map_batches(
            ActorStage,
            fn_constructor_kwargs={"fn_class": fn_class, "prepare": prepare, "stage": count_as,
                                   "tally": self._tally if count_as is not None else None, **kwargs},
            compute=ActorPoolStrategy(size=plan.size),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            batch_size=batch_size,
            batch_format="numpy",
        )

    def score(self, model_fn, stage: str | None = None, on: Handle | None = None, **kwargs) -> Handle:
        if on is not None:
            # Materialised: the result is small (per-block winners) and may be read more than once.
            with self._counting(stage, lambda: self.counts.get("candidates")) as count_as:
                return self._map_model(on, model_fn, count_as, **kwargs).materialize()
        ds = _restrict(self._read_pool(), excluded=self.request.excluded)
        with self._counting(stage, lambda: self._rows_left(self.request.excluded)) as count_as:
            scored = self._map_model(ds, model_fn, count_as, decode=True, **kwargs).materialize()
        return self._checked(scored, stage, 0)

    def embed(self, with_labeled: bool = False):
        req = self.request
        if not with_labeled:
            embedded, from_cache = self._embed_pool(excluded=req.excluded)
            return self._checked(embedded, "embed_s", from_cache)
        # One pass over unlabeled and labeled images together, so both come from (and go into) one cache.
        labeled_ids = req.labeled.column("id").to_numpy()
        embedded, from_cache = self._embed_pool()
        labeled = _restrict(embedded, only=labeled_ids).map_batches(_keep_ok, batch_format="numpy", num_cpus=0.25)
        unlabeled = _restrict(embedded, excluded=np.union1d(req.excluded, labeled_ids)).materialize()
        return self._checked(unlabeled, "embed_s", from_cache), labeled

    def _embed_pool(self, excluded: np.ndarray | None = None) -> tuple[ray.data.Dataset, int]:
        """Read, restrict, decode, embed; returns the materialised (id, z, conf, ok, finite) dataset and how many
        rows came from the cache.

        With a cache (one folder per checkpoint), images embedded before are not embedded again: the driver
        compares the pool's id column with the cached ids (ids only: no image bytes are shuffled), only the rest
        is read and goes through the model (nothing at all when every image is cached), and those new embeddings
        are added to the cache as one more folder, renamed into place whole so a crash never leaves a partial one.
        """
        cache = self.request.cache
        cached = None
        parts = [cache.join(name).uri for name in cache.list_dir() if name.startswith("part-")] if cache else []
        if not parts:
            ds = _restrict(self._read_pool(), excluded=excluded)
        else:
            cached = _restrict(ray.data.read_parquet(parts), excluded=excluded)
            if self.request.model.freeze_backbone:
                # The cache is keyed by the frozen backbone alone (rounds share it), but `conf` came from the head
                # of the round that embedded the row: recompute it with this round's head.
                weight, bias = checkpoint.head(self.request.checkpoint)
                cached = cached.map_batches(_head_confidence, fn_kwargs={"weight": weight, "bias": bias},
                                            batch_format="numpy", num_cpus=0.25)
            cached = cached.materialize()
            ids = pool.read_columns(self.request.pool, ["id"]).column("id").to_numpy()
            todo = np.setdiff1d(ids, np.concatenate([_column(cached, "id"), np.asarray(
                excluded if excluded is not None else [], np.int64)]))
            if len(todo) == 0:
                return cached, cached.count()
            ds = _restrict(self._read_pool(), only=todo)
        with self._counting("embed_s", lambda: len(todo) if cached is not None else self._rows_left(excluded)
                            ) as count_as:
            ds = self._map_model(ds, Embedder, count_as, decode=True).materialize()
        if cache is not None and ds.count():
            new = _count_rows(ds)
            if new["ok"] == new["finite"]:  # a diverged model's output is refused later and must not be cached
                _add_to_cache(ds, cache)
        if cached is None:
            return ds, 0
        return cached.union(ds).materialize(), cached.count()

    def _checked(self, ds: ray.data.Dataset, stage: str | None, from_cache: int) -> ray.data.Dataset:
        """Count rows, decodable rows and finite outputs into the manifest's counts; refuse a diverged model or an
        exhausted pool; keep only the usable rows."""
        counts = _count_rows(ds)
        if counts["ok"] - counts["finite"]:
            raise RayDM2Error(
                f"the model produced NaN/inf for {counts['ok'] - counts['finite']} images: the checkpoint"
                f" {self.request.checkpoint} looks diverged; retrain before acquiring"
            )
        if counts["ok"] == 0:
            raise RayDM2Error(f"no unlabeled, decodable images left in pool {self.request.pool!r}")
        self.counts.update({
            "pool_rows_read": counts["rows"], "skipped_undecodable": counts["rows"] - counts["ok"],
            "candidates": counts["ok"], "excluded_ids": int(len(self.request.excluded)),
            "embeddings_from_cache": from_cache, "embeddings_computed": counts["rows"] - from_cache})
        if stage:
            self.lap(stage)
        if counts["rows"] == counts["ok"]:
            return ds
        return ds.map_batches(_keep_ok, batch_format="numpy", num_cpus=0.25)

    # ---- CPU work, reductions ----------------------------------------------------------------------------
    def map(self, handle: Handle, fn, **kwargs) -> Handle:
        return handle.map_batches(fn, fn_kwargs=kwargs, batch_format="numpy", num_cpus=0.5)

    def top(self, handle: Handle, keep: int) -> pa.Table | None:
        """The exact global best `keep` rows. A task reduces the blocks one at a time, so the driver receives
        `keep` rows: streamed to the driver, a 10^6-image pool's scored rows (about 200 bytes each) stayed mapped
        in its memory as object-store pages."""
        return ray.get(_top_of_blocks.remote(_blocks(handle), keep))

    def gather(self, fn, inputs: dict[str, tuple[Handle, list[str]]], **kwargs):
        actor = Gatherer.remote()
        blocks = {name: (_blocks(ds), columns) for name, (ds, columns) in inputs.items()}
        try:
            return ray.get(actor.run.remote(fn, blocks, kwargs))
        finally:
            ray.kill(actor)

    # ---- DM2's neighbours and partner pixels -------------------------------------------------------------
    def neighbours(self, embedded: Handle, knn: KnnSettings, params: DM2Params) -> Handle:
        n = self.counts["candidates"]
        _ = self._shared_images  # started now, so the pool is decoded beside the index build
        blocks = _blocks(embedded)
        with self._counting("index_s", lambda: None):
            if knn.exact_for(n):
                index_refs = [_build_exact.options(num_cpus=1).remote(blocks, knn.l2_weight)]
                self.index = ray.get(_describe.remote(index_refs[0]))
            else:
                trained = _train_ivf.options(num_cpus=1).remote(blocks, ivf_params(n, knn), knn.l2_weight,
                                                                params.seed, params.round, knn.index_bytes_per_actor)
                shards = ray.get(_shards.remote(trained))
                # Each fill task describes its shard as it returns it: describing shards later would load them all.
                filled = [_fill_shard.options(num_cpus=1, num_returns=2).remote(trained, blocks, s, params.seed,
                                                                                params.round)
                          for s in range(shards)]
                index_refs = [ref for ref, _ in filled]
                self.index = merged_description(ray.get([description for _, description in filled]))
        self.lap("index_s")
        plan = self._plan()
        searched, visits = embedded, n * len(index_refs)
        with self._counting("search_s", lambda: visits) as count_as:
            # One shard's actors at a time: each holds only its shard, and the batches carry the best k so far on
            # to the next shard's actors.
            for s, ref in enumerate(index_refs):
                searched = self._actor_pool(
                    searched, NeighbourSearcher,
                    {"index": [ref], "params": params, "threads": plan.threads, "choose": s == len(index_refs) - 1},
                    count_as, plan, batch_size=max(self.opts.batch_size, 1024)).materialize()
        del index_refs
        self.lap("search_s")
        return searched

    @functools.cached_property
    def _shared_images(self) -> ray.ObjectRef | None:
        """The ObjectRef of the pool's `PoolImages`, made by a task started on first use, or None for a pool too big
        to share (`SHARED_PIXELS_MAX_BYTES`, `SHARED_IMAGES_MAX_BYTES`)."""
        spec, uri = self.request.image, self.request.pool
        if pool.pool_info(uri).rows * spec.size ** 2 * spec.channels <= SHARED_PIXELS_MAX_BYTES:
            return _pool_images.remote(uri, spec, decoded=True)
        if pool.image_bytes(uri) <= SHARED_IMAGES_MAX_BYTES:
            return _pool_images.remote(uri, spec, decoded=False)
        return None

    def with_partners(self, searched: Handle, mean: bool) -> Handle | Prepared:
        images = self._shared_images
        if images is not None:
            return Prepared(searched, (with_partner_pixels, {"images": [images], "mean": mean}))
        # At least one join partition per scoring actor, so every actor of the pool gets blocks to score.
        partitions = max(self._plan().size, math.ceil(self.counts["candidates"] / ROWS_PER_JOIN_PARTITION))
        images = self._read_pool()
        anchors = searched.join(images, "inner", partitions, on=("id",))
        if not mean:
            nbr_images = images.rename_columns({"id": "nbr_id", "image": "nbr_image"})
            return anchors.join(nbr_images, "inner", partitions, on=("nbr_id",))
        exploded = searched.map_batches(_explode_neighbours, batch_format="numpy", num_cpus=0.25)
        nbr_images = images.rename_columns({"id": "nbr", "image": "nbr_image"})
        # As many partitions as the joins: Ray Data's default (200) ran 200 reduce and 200 averaging tasks on a
        # 3,000-image pool, one at a time on a 2-CPU cluster, which took 2–15 minutes.
        partners = exploded.join(nbr_images, "inner", partitions, on=("nbr",)).groupby(
            "id", num_partitions=partitions).map_groups(
            _mean_partner, fn_kwargs={"spec": self.request.image},
            batch_format="numpy", num_cpus=0.5)
        return anchors.join(partners, "inner", partitions, on=("id",))


# ---- tasks and actors ----------------------------------------------------------------------------------------
def _column(ds: ray.data.Dataset, name: str) -> np.ndarray:
    """One column of a materialised dataset, gathered on the driver."""
    tables = ray.get(ds.select_columns([name]).to_arrow_refs())
    return np.concatenate([t.column(name).to_numpy() for t in tables]) if tables else np.empty(0, np.int64)


def _restrict(ds: ray.data.Dataset, excluded: np.ndarray | None = None, only: np.ndarray | None = None):
    """Drop the `excluded` ids, or keep `only` those ids. The id array travels as one shared ObjectRef."""
    if only is not None:
        return ds.map_batches(_keep_ids, fn_kwargs={"wanted": [ray.put(np.asarray(only, np.int64))]},
                              batch_format="numpy", num_cpus=0.25)
    if excluded is not None and len(excluded):  # a first round excludes nothing: no stage, no worker to start
        return ds.map_batches(_drop_ids, fn_kwargs={"excluded": [ray.put(np.asarray(excluded, np.int64))]},
                              batch_format="numpy", num_cpus=0.25)
    return ds


def _drop_ids(batch: dict, excluded: list) -> dict:
    """`excluded` is a one-element list holding the ObjectRef of the id array: Ray Data does not resolve refs
    inside fn_kwargs, and passing the array itself would copy it into every task's arguments."""
    keep = ~np.isin(batch["id"], ray.get(excluded[0]))
    return {name: col[keep] for name, col in batch.items()}


def _keep_ids(batch: dict, wanted: list) -> dict:
    keep = np.isin(batch["id"], ray.get(wanted[0]))
    return {name: col[keep] for name, col in batch.items()}


def _keep_ok(batch: dict) -> dict:
    ok = batch["ok"].astype(bool)
    return {name: col[ok] for name, col in batch.items()}


def _count_rows(ds: ray.data.Dataset) -> dict:
    """Rows, decodable rows, and decodable rows whose model outputs are finite (columns `ok`, `finite`)."""
    rows = ok = finite = 0
    for b in ds.select_columns(["ok", "finite"]).iter_batches(batch_format="numpy", batch_size=65_536):
        rows += len(b["ok"])
        ok += int(b["ok"].sum())
        finite += int((b["finite"] & b["ok"]).sum())
    return {"rows": rows, "ok": ok, "finite": finite}


def _head_confidence(batch: dict, weight: np.ndarray, bias: np.ndarray) -> dict:
    """Softmax confidence of the linear head on cached features: what the Embedder computes, without the body."""
    logits = batch["z"].astype(np.float64) @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return {**batch, "conf": (p.max(axis=1) / p.sum(axis=1)).astype(batch["conf"].dtype)}


def _add_to_cache(embedded: ray.data.Dataset, cache: Location) -> None:
    name = f"part-{time.time_ns()}"
    staging = cache.join(f".staging-{name}")
    embedded.write_parquet(staging.uri)
    if cache.is_local:
        os.replace(staging.path, cache.join(name).path)
    else:  # object stores have no directory rename: write the final folder directly (each file is one put)
        embedded.write_parquet(cache.join(name).uri)
        staging.delete()


def _blocks(ds: ray.data.Dataset) -> list:
    """`ds`'s blocks, computed now (from the driver) and handed over as a one-element list holding their refs (Ray
    does not resolve refs nested in a list); whoever reads them picks the columns it needs (`_arrays`), since
    selecting columns here would run one more Ray Data stage. A task or actor that holds a CPU reads these blocks
    itself: were it to run Ray Data on a lazy dataset, it would wait for CPUs that tasks like it may all be holding
    (two acquisitions on a 2-CPU cluster deadlocked that way)."""
    return [ds.to_arrow_refs()]


@ray.remote(num_cpus=0.25)
def _top_of_blocks(blocks: list, keep: int) -> pa.Table | None:
    best = TopK(keep)
    for ref in blocks[0]:
        best.push(ray.get(ref))
    return best.result()


def _arrays(blocks: list, columns: list[str]):
    """The non-empty blocks of `_blocks` as numpy columns, one block at a time."""
    from ray.data.block import BlockAccessor

    for ref in blocks[0]:
        table = ray.get(ref)
        if table.num_rows:
            yield BlockAccessor.for_block(table).to_numpy(columns)


def _unit_batches(blocks: list):
    """Streams (ids, unit z) from the embeddings' blocks, so the index tasks read them and the driver never does."""

    def batches():
        for b in _arrays(blocks, ["id", "z"]):
            yield b["id"], unit(b["z"])

    return batches


@ray.remote
def _build_exact(blocks: list, l2_weight: float):
    return build_exact(_unit_batches(blocks)(), l2_weight)


@ray.remote
def _train_ivf(blocks: list, params: IVFParams, l2_weight: float, seed: int, round_: int, max_bytes: int):
    return train_ivf(_unit_batches(blocks), params, l2_weight, seed, round_, max_bytes)


@ray.remote(num_cpus=0)
def _shards(trained) -> int:
    return trained.params.shards


@ray.remote
def _fill_shard(trained, blocks: list, shard: int, seed: int, round_: int):
    index = fill_shard(trained, _unit_batches(blocks), shard, seed, round_)
    return index, index.describe()


@ray.remote(num_cpus=0)
def _describe(index) -> dict:
    return index.describe()


@ray.remote(num_cpus=0.5)
def _pool_images(pool_uri: str, spec: ImageSpec, decoded: bool) -> PoolImages:
    """The whole pool's images sorted by id, decoded or as stored: the table the scoring actors look anchors and
    partners up in. Made by a task, so it goes to the object store without passing through the driver."""
    if decoded:
        ids, pixels, _ = load_pool(pool_uri, spec)
        return PoolImages(ids, pixels=pixels)
    table = pool.read_columns(pool_uri, ["id", "image"]).sort_by("id")
    return PoolImages(table.column("id").to_numpy(), encoded=table.column("image").combine_chunks(), spec=spec)


def _explode_neighbours(batch: dict) -> dict:
    nbrs = np.asarray(batch["nbr_ids"])
    return {"id": np.repeat(batch["id"], nbrs.shape[1]), "nbr": nbrs.reshape(-1)}


def _mean_partner(group: dict, spec: ImageSpec) -> dict:
    """One group per anchor: the decoded pixels of all its k neighbours, averaged."""
    pixels = np.stack([decode(b, spec) for b in group["nbr_image"]])
    return {"id": group["id"][:1], "partner": mean_partner(pixels)[None]}


@ray.remote(num_cpus=1)
class Gatherer:
    """Holds every vector of one acquisition for algorithms that need them all at once (k-center, k-means).

    It lives off the driver, so the driver's memory stays flat; the actor's own memory is
    rows × dim × 4 bytes, which bounds the pool size such strategies handle exactly (docs/strategies.md).
    """

    def run(self, fn, inputs: dict, kwargs: dict):
        arrays = {}
        for name, (blocks, columns) in inputs.items():
            parts: dict[str, list] = {c: [] for c in columns}
            for b in _arrays(blocks, columns):
                for c in columns:
                    parts[c].append(b[c])
            arrays[name] = sorted_by_id({c: np.concatenate(parts[c]) if parts[c] else np.empty(0) for c in columns})
        return fn(**arrays, **kwargs)
