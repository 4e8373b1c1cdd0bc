"""DM2 on the distributed pipeline (SPEC sections 3 and 5).

    pool ─ drop selected ids ─ decode ─ Embedder actors ──► embeddings (materialised, or from the cache)
    embeddings ─ build index (one task, streams the embeddings) ──► index in the object store
    embeddings ─ NeighbourSearcher actors (each holds the index) ──► kNN + chosen partner
    kNN ⋈ pool images on id ⋈ pool images on partner id (hash joins) ─ MixScorer actors ─ per-block top-B
    driver: streaming merge of per-block winners ──► exact global top-B

The driver holds only ids of previously selected images and O(B) candidates: its memory does not grow with
the pool.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import ray
import ray.data

from raydm2 import knn, pipeline
from raydm2.config import ProjectConfig
from raydm2.dm2 import TAU_SAMPLE, DM2Params, tau_sample_scores
from raydm2.errors import RayDM2Error
from raydm2.runtime import plan_actors
from raydm2.score import MixScorer, mean_partner
from raydm2.select import candidates_to_keep, finalize
from raydm2.strategies import register
from raydm2.strategies.base import AcquireRequest, AcquireResult
from raydm2.topk import TopK

ROWS_PER_JOIN_PARTITION = 50_000


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


@register("dm2")
def select(req: AcquireRequest) -> AcquireResult:
    config, opts = req.config, req.opts
    params = DM2Params.from_config(config, req.round_)
    watch = pipeline.Stopwatch()
    good, counts = pipeline.embed_unlabeled(req, watch)
    n = counts["candidates"]
    if n < 2:
        raise RayDM2Error("DM2 needs at least 2 unlabeled images to mix")

    kcfg = config.strategy.knn
    exact = kcfg.mode == "exact" or (kcfg.mode == "auto" and n <= kcfg.exact_max_anchors)
    index_ref = _build_index.options(num_cpus=1).remote(good, n, config, req.round_, exact)
    index_info = ray.get(_describe.remote(index_ref))
    watch.lap("index_s")

    plan = plan_actors(opts.actors, opts.use_gpu)
    searched = good.map_batches(
        knn.NeighbourSearcher,
        fn_constructor_kwargs={"index_ref": [index_ref], "params": params, "threads": plan.threads},
        compute=ray.data.ActorPoolStrategy(size=plan.size),
        num_cpus=plan.num_cpus,
        batch_size=max(opts.batch_size, 1024),
        batch_format="numpy",
    ).materialize()
    del index_ref
    watch.lap("search_s")

    tau = _tau(searched, params) if params.mix == "adaptive" else None
    keep = candidates_to_keep(req.budget, params.k, params.dedupe_radius)
    scored = _mix_and_score(req, searched, n, params, tau, keep)
    selection, warnings = finalize(pipeline.merge_top(scored, keep), req.budget, params.dedupe_radius)
    watch.lap("mix_score_s")
    return AcquireResult(selection=selection, counts={**counts, "selected": selection.num_rows},
                         timings=watch.timings, index={**index_info, "k": params.k, "tau": tau}, warnings=warnings)


@ray.remote(num_cpus=0)
def _describe(index) -> dict:
    return index.describe()


def _tau(searched: ray.data.Dataset, params: DM2Params) -> float:
    sample = TopK(TAU_SAMPLE)
    for b in searched.select_columns(["id", "nbr_dist"]).iter_batches(batch_format="numpy", batch_size=65_536):
        sample.push(pa.table({"id": b["id"], "score": tau_sample_scores(b["id"], params), "d": b["nbr_dist"]}))
    return float(np.median(sample.result().column("d").to_numpy()))


def _mix_and_score(req: AcquireRequest, searched, n, params, tau, keep) -> ray.data.Dataset:
    config, opts = req.config, req.opts
    plan = plan_actors(opts.actors, opts.use_gpu)
    # At least one join partition per scoring actor, so every actor of the pool gets blocks to score.
    partitions = max(plan.size, math.ceil(n / ROWS_PER_JOIN_PARTITION))
    images = pipeline.read_pool(config, opts.blocks)
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
    return pipeline.map_model(pairs, MixScorer, plan, opts.batch_size, checkpoint_uri=req.checkpoint_uri,
                              spec=req.spec, params=params, tau=tau, keep=keep)


def _explode_neighbours(batch: dict) -> dict:
    nbrs = np.asarray(batch["nbr_ids"])
    return {"id": np.repeat(batch["id"], nbrs.shape[1]), "nbr": nbrs.reshape(-1)}
