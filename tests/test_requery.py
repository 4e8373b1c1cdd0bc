"""Re-query: the grown pool is re-ranked with the latest checkpoint, embeddings reused from the cache; the
result equals the reference on the grown pool (here with adaptive mixing and 2 actors)."""

import numpy as np

from raydm2.acquisition import AcquireOptions
from raydm2.data import pool
from raydm2.service import loop
from tests.helpers import local_selection, trained_project
from tests.test_acquire import assert_same_selection


def test_requery_reuses_cached_embeddings_and_sees_new_images(ray_cluster, tmp_path, sample_pools,
                                                             trained_checkpoint):
    src = pool.read_columns(sample_pools["mnist_train"], ["image"]).column("image").to_pylist()
    pool_uri = str(tmp_path / "pool")
    pool.append(pool_uri, src[1000:1600])
    project = trained_project(str(tmp_path / "proj"), pool_uri, trained_checkpoint, mix="adaptive")

    first, where = loop.requery(project, AcquireOptions(actors=1))
    counts = project.requery_dir(where.rsplit("/", 1)[1]).join("manifest.json").read_json()["counts"]
    assert counts["embeddings_from_cache"] == 0 and counts["embeddings_computed"] == 570
    assert project.round_ids() == [0]  # no round was created

    new_ids = pool.append(pool_uri, src[1600:1650])  # images arriving after the last round
    second, where = loop.requery(project, AcquireOptions(actors=2, batch_size=100))
    counts = project.requery_dir(where.rsplit("/", 1)[1]).join("manifest.json").read_json()["counts"]
    assert counts["embeddings_from_cache"] == 570 and counts["embeddings_computed"] == 50

    excluded = project.selected_ids()
    ids = pool.read_columns(pool_uri, ["id"]).column("id").to_numpy()
    assert set(new_ids.tolist()) <= set(ids.tolist()) - set(excluded.tolist())
    assert_same_selection(second, local_selection(project.config, trained_checkpoint, 1, excluded))
    assert (second.column("mix_lambda").to_numpy() > 0.8).all()
    assert not np.isin(second.column("id").to_numpy(), excluded).any()
