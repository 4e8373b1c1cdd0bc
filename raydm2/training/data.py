"""What training reads: the labeled rows of the pool (plus Algorithm 2's stored counterparts) and the test pool,
decoded by Ray Data, split into one equal shard per worker on the driver, and each worker's shard held in memory.

The pool is filtered to the labeled ids in CPU tasks rather than joined: a labeled set is budget-sized, and a hash
join's shuffle actors would cost seconds on every training. Re-streaming the shard every epoch would cost more than
the training step itself, so workers keep it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
import ray.data

from raydm2.data import pool
from raydm2.data.images import decode_batch
from raydm2.errors import RayDM2Error
from raydm2.ledger.config import ProjectConfig


def labeled_dataset(config: ProjectConfig, labels: pa.Table, counterpart_uris: list[str] = ()) -> ray.data.Dataset:
    """(pixels, label) rows for the labeled ids: the pool filtered to those ids with their labels attached in
    CPU tasks (the labels travel as one shared ObjectRef), then decoded; plus the stored Algorithm 2
    counterparts (pseudo-labeled adversarial images) when given. A labeled set is budget-sized, so a filter
    beats a hash join, whose shuffle actors cost seconds on every training."""
    if labels.num_rows == 0:
        raise RayDM2Error("no labels to train on: import labels first")
    table = labels.select(["id", "label"]).sort_by("id")
    ref = [ray.put((table.column("id").to_numpy(), table.column("label").to_numpy().astype(np.int64)))]
    images = ray.data.read_parquet(pool.part_uris(config.pool)).select_columns(["id", "image"])
    joined = images.map_batches(_attach_labels, fn_kwargs={"labels": ref}, batch_format="numpy")
    if counterpart_uris:
        joined = joined.union(ray.data.read_parquet(list(counterpart_uris)).select_columns(["id", "image", "label"]))
    return _decode_with_labels(joined, config)


def _attach_labels(batch: dict, labels: list) -> dict:
    """Keep the rows whose id has a label and add it; `labels[0]` is the ObjectRef of (sorted ids, labels)."""
    ids, values = ray.get(labels[0])
    pos = np.minimum(np.searchsorted(ids, batch["id"]), len(ids) - 1)  # labels are never empty here
    keep = ids[pos] == batch["id"]
    return {"id": batch["id"][keep], "image": batch["image"][keep], "label": values[pos[keep]]}


def test_dataset(config: ProjectConfig) -> ray.data.Dataset | None:
    if not config.test_pool:
        return None
    info = pool.pool_info(config.test_pool)
    if not info.has_labels:
        raise RayDM2Error(f"test pool {config.test_pool!r} has no label column")
    ds = ray.data.read_parquet(pool.part_uris(config.test_pool)).select_columns(["id", "image", "label"])
    return _decode_with_labels(ds, config)


def pool_dataset(config: ProjectConfig) -> ray.data.Dataset:
    """Every image of the pool, decoded, what self-supervised pretraining reads. Labels are not read (label -1),
    so an unlabeled pool works and a shard loads like a labeled one."""
    ds = ray.data.read_parquet(pool.part_uris(config.pool)).select_columns(["id", "image"])
    return _decode_with_labels(ds.map_batches(_unlabeled, batch_format="numpy"), config)


def _unlabeled(batch: dict) -> dict:
    return {**batch, "label": np.full(len(batch["id"]), -1, np.int64)}


def _decode_with_labels(ds: ray.data.Dataset, config: ProjectConfig) -> ray.data.Dataset:
    def decode_keep_label(batch):
        out = decode_batch(batch, config.image_spec())
        ok = out["ok"].astype(bool)
        return {"id": out["id"][ok], "pixels": out["pixels"][ok], "label": batch["label"][ok].astype(np.int64)}

    return ds.map_batches(decode_keep_label, batch_format="numpy")


def shard_refs(ds: ray.data.Dataset, world: int) -> list[list]:
    """The blocks of each rank's equal shard of the materialised `ds`. Split on the driver from block metadata,
    so the workers fetch their blocks directly: no split-coordinator actor to start (seconds per dataset on every
    training), and a restarted worker group gets the same shards."""
    return [part.to_arrow_refs() for part in ds.split(world, equal=True)]


def load_shard(refs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rank's shard (`shard_refs`) as (ids, pixels, labels) arrays, in id order."""
    from ray.data.block import BlockAccessor

    ids, xs, ys = [], [], []
    for block in ray.get(list(refs)):
        if block.num_rows:
            columns = BlockAccessor.for_block(block).to_numpy(["id", "pixels", "label"])
            ids.append(columns["id"])
            xs.append(columns["pixels"])
            ys.append(columns["label"])
    if not ids:
        return np.empty(0, np.int64), np.empty((0,), np.uint8), np.empty(0, np.int64)
    order = np.argsort(np.concatenate(ids), kind="stable")  # shard content, not arrival order, decides
    return np.concatenate(ids)[order], np.concatenate(xs)[order], np.concatenate(ys)[order]
