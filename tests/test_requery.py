"""Re-query: the grown pool is re-ranked with the latest checkpoint, embeddings reused from the cache; the
result equals the reference on the grown pool (here with adaptive mixing and 2 actors)."""

import numpy as np

from raydm2 import checkpoint, loop, pool
from raydm2.acquire import AcquireOptions
from raydm2.dm2 import DM2Params
from raydm2.models import ModelSpec
from raydm2.reference import dm2_select, load_unlabeled
from tests.helpers import trained_project
from tests.test_acquire import assert_same_selection

SPEC = ModelSpec("small_cnn", 10, 1, 28)


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
    ids, pixels = load_unlabeled(pool_uri, 28, 1, set(excluded.tolist()))
    assert set(new_ids.tolist()) <= set(ids.tolist())
    want = dm2_select(checkpoint.load(trained_checkpoint, SPEC), ids, pixels,
                      DM2Params.from_config(project.config, 1), 15)
    assert_same_selection(second, want)
    assert (second.column("mix_lambda").to_numpy() > 0.8).all()
    assert not np.isin(second.column("id").to_numpy(), excluded).any()
