"""Ray Data stages shared by every acquisition strategy.

    read pool ─ drop excluded ids ─ decode (CPU tasks) ─ model actors (checkpoint loaded once per actor)

then either per-block top-B merged on the driver (strategies that score each image on its own), or one gather
actor that holds the vectors a global algorithm needs (k-center, k-means). The driver never holds the pool.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from raydm2 import pool
from raydm2.config import ProjectConfig
from raydm2.errors import RayDM2Error
from raydm2.embed import Embedder, decode_batch, drop_ids, keep_ids
from raydm2.runtime import ActorPlan, plan_actors
from raydm2.storage import Location
from raydm2.select import ranked
from raydm2.strategies.base import AcquireRequest, AcquireResult
from raydm2.topk import TopK


class Stopwatch:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._start, 4)
        self._start = now


def read_pool(config: ProjectConfig, blocks: int | None) -> ray.data.Dataset:
    parts = pool.part_uris(config.pool)
    return ray.data.read_parquet(parts, override_num_blocks=blocks).select_columns(["id", "image"])


def restrict(ds: ray.data.Dataset, excluded: np.ndarray | None = None, only: np.ndarray | None = None):
    """Drop the `excluded` ids, or keep `only` those ids. The id array travels as one shared ObjectRef."""
    if only is not None:
        return ds.map_batches(keep_ids, fn_kwargs={"wanted": [ray.put(np.asarray(only, np.int64))]},
                              batch_format="numpy", num_cpus=0.25)
    if excluded is not None:
        return ds.map_batches(drop_ids, fn_kwargs={"excluded": [ray.put(np.asarray(excluded, np.int64))]},
                              batch_format="numpy", num_cpus=0.25)
    return ds


def decode(ds: ray.data.Dataset, config: ProjectConfig, batch_size: int) -> ray.data.Dataset:
    return ds.map_batches(decode_batch, fn_kwargs={"size": config.image.size, "channels": config.image.channels},
                          batch_format="numpy", batch_size=batch_size, num_cpus=0.5)


def map_model(ds: ray.data.Dataset, actor_cls, plan: ActorPlan, batch_size: int, **kwargs) -> ray.data.Dataset:
    """Run a `ModelActor` subclass over `ds` in an actor pool laid out by `plan`."""
    return ds.map_batches(
        actor_cls,
        fn_constructor_kwargs={**kwargs, "threads": plan.threads, "use_gpu": plan.uses_gpu},
        compute=ActorPoolStrategy(size=plan.size),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        batch_size=batch_size,
        batch_format="numpy",
    )


def embed_pool(config: ProjectConfig, checkpoint_uri: str, spec, opts, excluded: np.ndarray | None = None,
               only: np.ndarray | None = None, cache: Location | None = None) -> tuple[ray.data.Dataset, int]:
    """Read, restrict, decode, embed; returns the materialised (id, z, conf, ok, finite) dataset and how many
    rows came from the cache.

    With a cache (one folder per checkpoint), images embedded before are not embedded again: the pool is
    anti-joined with the cached ids, only the rest goes through the model, and those new embeddings are added
    to the cache as one more folder, renamed into place whole so a crash never leaves a partial one.
    """
    plan = plan_actors(opts.actors, opts.use_gpu)
    ds = restrict(read_pool(config, opts.blocks), excluded, only)
    cached = None
    parts = [cache.join(name).uri for name in cache.list_dir() if name.startswith("part-")] if cache else []
    if parts:
        cached = restrict(ray.data.read_parquet(parts), excluded, only).materialize()
        ds = ds.join(cached.select_columns(["id"]), "left_anti", max(plan.size, 1), on=("id",))
    ds = map_model(decode(ds, config, opts.batch_size), Embedder, plan, opts.batch_size,
                   checkpoint_uri=checkpoint_uri, spec=spec).materialize()
    if cache is not None and ds.count():
        new = count_rows(ds)
        if new["ok"] == new["finite"]:  # a diverged model's output is refused later and must not be cached
            _add_to_cache(ds, cache)
    if cached is None:
        return ds, 0
    return cached.union(ds).materialize(), cached.count()


def _add_to_cache(embedded: ray.data.Dataset, cache: Location) -> None:
    name = f"part-{time.time_ns()}"
    staging = cache.join(f".staging-{name}")
    embedded.write_parquet(staging.uri)
    if cache.is_local:
        os.replace(staging.path, cache.join(name).path)
    else:  # object stores have no directory rename: write the final folder directly (each file is one put)
        embedded.write_parquet(cache.join(name).uri)
        staging.delete()


def embed_unlabeled(req: AcquireRequest, watch: Stopwatch) -> tuple[ray.data.Dataset, dict]:
    """Embed the unlabeled pool (through the cache); returns the decodable rows and the manifest's counts."""
    embedded, from_cache = embed_pool(req.config, req.checkpoint_uri, req.spec, req.opts,
                                      excluded=req.excluded, cache=req.cache)
    return _checked(embedded, req, watch, "embed_s", from_cache)


def embed_with_labeled(req: AcquireRequest, watch: Stopwatch) -> tuple[ray.data.Dataset, ray.data.Dataset, dict]:
    """One embedding pass over unlabeled and labeled images together (through the cache), for strategies that
    measure the unlabeled against the labeled set; returns (unlabeled decodable rows, labeled rows, counts)."""
    everything = np.union1d(req.excluded, req.labeled.column("id").to_numpy())
    embedded, from_cache = embed_pool(req.config, req.checkpoint_uri, req.spec, req.opts, cache=req.cache)
    labeled = restrict(embedded, only=req.labeled.column("id").to_numpy()).map_batches(
        keep_ok, batch_format="numpy", num_cpus=0.25)
    unlabeled, counts = _checked(restrict(embedded, excluded=everything).materialize(), req, watch, "embed_s",
                                 from_cache)
    return unlabeled, labeled, counts


def score_unlabeled(req: AcquireRequest, watch: Stopwatch, stage: str, scorer, **kwargs):
    """Decode the unlabeled pool and run `scorer` on it: a `ModelActor` class (run in the actor pool) or a
    plain function (run as CPU tasks). Its output must carry `id`, `ok` and `finite`."""
    opts = req.opts
    ds = decode(restrict(read_pool(req.config, opts.blocks), req.excluded), req.config, opts.batch_size)
    if isinstance(scorer, type):
        ds = map_model(ds, scorer, plan_actors(opts.actors, opts.use_gpu), opts.batch_size,
                       checkpoint_uri=req.checkpoint_uri, spec=req.spec, **kwargs)
    else:
        ds = ds.map_batches(scorer, fn_kwargs=kwargs, batch_format="numpy", num_cpus=0.25)
    return _checked(ds.materialize(), req, watch, stage, 0)


def _checked(ds: ray.data.Dataset, req: AcquireRequest, watch: Stopwatch, stage: str, from_cache: int):
    counts = count_rows(ds)
    watch.lap(stage)
    check_counts(counts, req)
    return only_ok(ds, counts), {
        "pool_rows_read": counts["rows"], "skipped_undecodable": counts["rows"] - counts["ok"],
        "candidates": counts["ok"], "excluded_ids": int(len(req.excluded)),
        "embeddings_from_cache": from_cache, "embeddings_computed": counts["rows"] - from_cache}


def check_counts(counts: dict, req: AcquireRequest) -> None:
    if counts["ok"] - counts["finite"]:
        raise RayDM2Error(
            f"the model produced NaN/inf for {counts['ok'] - counts['finite']} images: the checkpoint"
            f" {req.checkpoint_uri} looks diverged; retrain before acquiring"
        )
    if counts["ok"] == 0:
        raise RayDM2Error(f"no unlabeled, decodable images left in pool {req.config.pool!r}")


def count_rows(ds: ray.data.Dataset) -> dict:
    """Rows, decodable rows, and decodable rows whose model outputs are finite (columns `ok`, `finite`)."""
    rows = ok = finite = 0
    for b in ds.select_columns(["ok", "finite"]).iter_batches(batch_format="numpy", batch_size=65_536):
        rows += len(b["ok"])
        ok += int(b["ok"].sum())
        finite += int((b["finite"] & b["ok"]).sum())
    return {"rows": rows, "ok": ok, "finite": finite}


def keep_ok(batch: dict) -> dict:
    ok = batch["ok"].astype(bool)
    return {name: col[ok] for name, col in batch.items()}


def only_ok(ds: ray.data.Dataset, counts: dict) -> ray.data.Dataset:
    return ds.map_batches(keep_ok, batch_format="numpy", num_cpus=0.25) if counts["rows"] != counts["ok"] else ds


def merge_top(ds: ray.data.Dataset, keep: int) -> pa.Table | None:
    """Stream the per-block winners to the driver and keep the exact global best `keep` (O(keep) memory)."""
    best = TopK(keep)
    for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        best.push(block)
    return best.result()


def finish(picked: pa.Table, req: AcquireRequest, watch: Stopwatch, counts: dict, columns=(), **extra):
    """The result of a strategy whose picks are already in selection order."""
    selection, warnings = ranked(picked, req.budget, list(columns))
    watch.lap("select_s")
    return AcquireResult(selection=selection, counts={**counts, "selected": selection.num_rows},
                         timings=watch.timings, warnings=warnings, **extra)


@ray.remote(num_cpus=1)
class Gatherer:
    """Holds every vector of one acquisition for algorithms that need them all at once (k-center, k-means).

    It lives off the driver, so the driver's memory stays flat; the actor's own memory is
    rows × dim × 4 bytes, which bounds the pool size such strategies handle exactly (docs/strategies.md).
    """

    def run(self, ds: ray.data.Dataset, columns: list[str], fn, kwargs: dict):
        parts: dict[str, list] = {c: [] for c in columns}
        for b in ds.select_columns(columns).iter_batches(batch_format="numpy", batch_size=65_536):
            for c in columns:
                parts[c].append(b[c])
        arrays = [np.concatenate(parts[c]) for c in columns]
        # Sort by id so the greedy algorithms' tie-breaks do not depend on block arrival order.
        order = np.argsort(arrays[0], kind="stable")
        return fn(*[a[order] for a in arrays], **kwargs)


def gather(ds: ray.data.Dataset, columns: list[str], fn, **kwargs):
    """Run `fn(*columns_as_arrays, **kwargs)` in a Gatherer actor; `columns[0]` must be `id`."""
    actor = Gatherer.remote()
    try:
        return ray.get(actor.run.remote(ds, columns, fn, kwargs))
    finally:
        ray.kill(actor)
