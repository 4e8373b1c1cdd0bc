"""The distributed DM2 acquisition pipeline (SPEC section 5).

    read pool ─ drop selected ids ─ decode (CPU tasks) ─ Embedder actors ──► embeddings (materialised)
    embeddings ─ build index (one task, streams the embeddings) ──► index in the object store
    embeddings ─ NeighbourSearcher actors (each holds the index) ──► kNN + chosen partner
    kNN ⋈ pool images on id ⋈ pool images on partner id (hash joins) ─ MixScorer actors ─ per-block top-B
    driver: streaming merge of per-block winners ──► exact global top-B ──► selection.parquet + manifest

The driver holds only ids of previously selected images, the index's training sample while it is built in a
task, and O(B) candidates: its memory does not grow with the pool.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from raydm2 import checkpoint, knn, pool
from raydm2.config import ProjectConfig
from raydm2.dm2 import TAU_SAMPLE, DM2Params, tau_sample_scores
from raydm2.embed import Embedder, decode_batch, drop_ids
from raydm2.errors import RayDM2Error
from raydm2.models import ModelSpec, spec_from_config
from raydm2.runtime import plan_actors
from raydm2.score import MixScorer, mean_partner
from raydm2.select import candidates_to_keep, finalize
from raydm2.storage import Location
from raydm2.topk import TopK

log = logging.getLogger(__name__)
ROWS_PER_JOIN_PARTITION = 50_000


@dataclass
class AcquireOptions:
    """Execution knobs that must not change the selection (tests vary them to prove it)."""

    actors: int | None = None
    batch_size: int = 256
    blocks: int | None = None
    use_gpu: bool | None = None


@dataclass
class AcquireResult:
    selection: pa.Table
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


class _Stopwatch:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._start, 4)
        self._start = now


@ray.remote
def _build_index(embeddings: ray.data.Dataset, n: int, config: ProjectConfig, round_: int, exact: bool):
    """Runs as a task: streams the embeddings (twice for IVF) so the driver never holds them."""
    from raydm2.dm2 import unit

    kcfg = config.strategy.knn

    def batches():
        for b in embeddings.select_columns(["id", "z"]).iter_batches(batch_format="numpy", batch_size=65_536):
            yield b["id"], unit(b["z"])

    if exact:
        return knn.build_exact(batches(), kcfg.l2_weight)
    params = knn.default_ivf_params(n, kcfg.k, kcfg.nlist, kcfg.nprobe, kcfg.shortlist_factor, kcfg.train_sample)
    return knn.build_ivf(batches, n, params, kcfg.l2_weight, config.seed, round_)


def _read_pool(config: ProjectConfig, blocks: int | None) -> ray.data.Dataset:
    return ray.data.read_parquet(pool.part_uris(config.pool), override_num_blocks=blocks).select_columns(["id", "image"])


def embed_pool(config: ProjectConfig, checkpoint_uri: str, excluded: np.ndarray, opts: AcquireOptions,
               spec: ModelSpec, cache: Location | None = None) -> tuple[ray.data.Dataset, int]:
    """Read, drop excluded ids, decode, embed; returns the materialised (id, z, conf, ok, finite) dataset and
    how many rows came from the cache.

    With a cache (one folder per checkpoint), images embedded before are not embedded again: the pool is
    anti-joined with the cached ids, only the rest goes through the model, and those new embeddings are added
    to the cache as one more folder, renamed into place whole so a crash never leaves a partial one.
    """
    plan = plan_actors(opts.actors, opts.use_gpu)
    excluded_ref = [ray.put(np.asarray(excluded, np.int64))]
    ds = _read_pool(config, opts.blocks)
    ds = ds.map_batches(drop_ids, fn_kwargs={"excluded": excluded_ref}, batch_format="numpy", num_cpus=0.25)
    cached = None
    parts = [cache.join(name).uri for name in cache.list_dir() if name.startswith("part-")] if cache else []
    if parts:
        cached = ray.data.read_parquet(parts).map_batches(
            drop_ids, fn_kwargs={"excluded": excluded_ref}, batch_format="numpy", num_cpus=0.25).materialize()
        ds = ds.join(cached.select_columns(["id"]), "left_anti", max(plan.size, 1), on=("id",))
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": config.image.size, "channels": config.image.channels},
                        batch_format="numpy", batch_size=opts.batch_size, num_cpus=0.5)
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={"checkpoint_uri": checkpoint_uri, "spec": spec, "threads": plan.threads,
                               "use_gpu": plan.uses_gpu},
        compute=ActorPoolStrategy(size=plan.size),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        batch_size=opts.batch_size,
        batch_format="numpy",
    ).materialize()
    if cache is not None and ds.count():
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


def _count_embedded(embedded: ray.data.Dataset) -> dict:
    rows = ok = finite = 0
    for b in embedded.select_columns(["ok", "finite"]).iter_batches(batch_format="numpy", batch_size=65_536):
        rows += len(b["ok"])
        ok += int(b["ok"].sum())
        finite += int((b["finite"] & b["ok"]).sum())
    return {"rows": rows, "ok": ok, "finite": finite}


def acquire_dm2(config: ProjectConfig, checkpoint_uri: str, round_: int, excluded: np.ndarray,
                opts: AcquireOptions | None = None, cache: Location | None = None) -> AcquireResult:
    """Compute round `round_`'s DM2 selection with the model in `checkpoint_uri`. Writes nothing but new
    entries of the embedding `cache`, when one is given."""
    opts = opts or AcquireOptions()
    spec = spec_from_config(config)
    # Refuse a wrong or unsafe checkpoint before any distributed work starts.
    checkpoint.load(checkpoint_uri, spec)
    params = DM2Params.from_config(config, round_)
    budget = config.strategy.budget
    watch = _Stopwatch()

    embedded, from_cache = embed_pool(config, checkpoint_uri, excluded, opts, spec, cache)
    counts = _count_embedded(embedded)
    watch.lap("embed_s")
    if counts["ok"] - counts["finite"]:
        raise RayDM2Error(
            f"the model produced NaN/inf for {counts['ok'] - counts['finite']} images: the checkpoint"
            f" {checkpoint_uri} looks diverged; retrain before acquiring"
        )
    n = counts["ok"]
    if n == 0:
        raise RayDM2Error(f"no unlabeled, decodable images left in pool {config.pool!r}")
    if n < 2:
        raise RayDM2Error("DM2 needs at least 2 unlabeled images to mix")
    good = embedded.map_batches(_keep_ok, batch_format="numpy", num_cpus=0.25) if counts["rows"] != n else embedded

    kcfg = config.strategy.knn
    exact = kcfg.mode == "exact" or (kcfg.mode == "auto" and n <= kcfg.exact_max_anchors)
    index_ref = _build_index.options(num_cpus=1).remote(good, n, config, round_, exact)
    index_info = ray.get(_describe.remote(index_ref))
    watch.lap("index_s")

    plan = plan_actors(opts.actors, opts.use_gpu)
    searched = good.map_batches(
        knn.NeighbourSearcher,
        fn_constructor_kwargs={"index_ref": [index_ref], "params": params, "threads": plan.threads},
        compute=ActorPoolStrategy(size=plan.size),
        num_cpus=plan.num_cpus,
        batch_size=max(opts.batch_size, 1024),
        batch_format="numpy",
    ).materialize()
    del index_ref
    watch.lap("search_s")

    tau = _tau(searched, params) if params.mix == "adaptive" else None
    keep = candidates_to_keep(budget, params.k, params.dedupe_radius)
    scored = _mix_and_score(config, searched, n, params, tau, keep, checkpoint_uri, spec, opts)
    best = TopK(keep)
    for block in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        best.push(block)
    selection, warnings = finalize(best.result(), budget, params.dedupe_radius)
    watch.lap("mix_score_s")
    return AcquireResult(
        selection=selection,
        counts={"pool_rows_read": counts["rows"], "skipped_undecodable": counts["rows"] - counts["ok"],
                "candidates": n, "selected": selection.num_rows, "excluded_ids": int(len(excluded)),
                "embeddings_from_cache": from_cache, "embeddings_computed": counts["rows"] - from_cache},
        timings=watch.timings,
        index={**index_info, "k": params.k, "tau": tau},
        warnings=warnings,
    )


@ray.remote(num_cpus=0)
def _describe(index) -> dict:
    return index.describe()


def _tau(searched: ray.data.Dataset, params: DM2Params) -> float:
    sample = TopK(TAU_SAMPLE)
    for b in searched.select_columns(["id", "nbr_dist"]).iter_batches(batch_format="numpy", batch_size=65_536):
        sample.push(pa.table({"id": b["id"], "score": tau_sample_scores(b["id"], params), "d": b["nbr_dist"]}))
    return float(np.median(sample.result().column("d").to_numpy()))


def _mix_and_score(config, searched, n, params, tau, keep, checkpoint_uri, spec, opts) -> ray.data.Dataset:
    plan = plan_actors(opts.actors, opts.use_gpu)
    # At least one join partition per scoring actor, so every actor of the pool gets blocks to score.
    partitions = max(plan.size, math.ceil(n / ROWS_PER_JOIN_PARTITION))
    images = _read_pool(config, opts.blocks)
    anchors = searched.join(images, "inner", partitions, on=("id",))
    if params.mix == "mean":
        exploded = searched.map_batches(_explode_neighbours, batch_format="numpy", num_cpus=0.25)
        nbr_images = images.rename_columns({"id": "nbr", "image": "nbr_image"})
        partners = exploded.join(nbr_images, "inner", partitions, on=("nbr",)).groupby("id").map_groups(
            mean_partner, fn_kwargs={"size": config.image.size, "channels": config.image.channels},
            batch_format="numpy", num_cpus=0.5)
        pairs = anchors.join(partners, "inner", partitions, on=("id",))
    else:
        nbr_images = images.rename_columns({"id": "nbr_id", "image": "nbr_image"})
        pairs = anchors.join(nbr_images, "inner", partitions, on=("nbr_id",))
    return pairs.map_batches(
        MixScorer,
        fn_constructor_kwargs={"checkpoint_uri": checkpoint_uri, "spec": spec, "threads": plan.threads,
                               "use_gpu": plan.uses_gpu, "params": params, "tau": tau, "keep": keep},
        compute=ActorPoolStrategy(size=plan.size),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        batch_size=opts.batch_size,
        batch_format="numpy",
    )


def _keep_ok(batch: dict) -> dict:
    ok = batch["ok"].astype(bool)
    return {name: col[ok] for name, col in batch.items()}


def _explode_neighbours(batch: dict) -> dict:
    nbrs = np.asarray(batch["nbr_ids"])
    return {"id": np.repeat(batch["id"], nbrs.shape[1]), "nbr": nbrs.reshape(-1)}
