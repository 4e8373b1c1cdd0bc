"""The distributed DM2 pipeline against the in-memory engine, plus its edge cases."""

import re

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydm2.acquisition import AcquireOptions, acquire, ray_engine
from raydm2.acquisition.local_engine import load_pool
from raydm2.acquisition.mixing import mean_partner, mix
from raydm2.data import pool
from raydm2.data.images import ImageSpec, to_tensor
from raydm2.errors import RayDM2Error
from raydm2.ledger.config import ProjectConfig
from raydm2.models import checkpoint
from raydm2.models.registry import ModelSpec, build
from tests.helpers import local_selection

SPEC = ModelSpec("small_cnn", 10, 1, 28)
CLASSES = [str(i) for i in range(10)]
# Pretend the first 1,000 ids (the fixture model's training set) were labeled in earlier rounds.
LABELED = np.arange(0, 1000, dtype=np.int64)


def config(pool_uri, **strategy):
    return ProjectConfig(name="t", pool=pool_uri, classes=CLASSES, seed=7,
                         strategy={"budget": 25, **strategy})


def assert_same_selection(got: pa.Table, want: pa.Table):
    """The same ids in the same order (ties resolved by the total order: score descending, then id ascending),
    integer columns equal, and float columns (scores, distances, λ) equal up to float32 noise from batching."""
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column_names == want.column_names
    for name in got.column_names:
        g, w = got.column(name).to_numpy(), want.column(name).to_numpy()
        if pa.types.is_floating(got.schema.field(name).type):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5, err_msg=name)
        else:
            assert g.tolist() == w.tolist(), name


SETTINGS = [
    ("random", AcquireOptions(actors=1), {}),
    ("mean", AcquireOptions(actors=3, batch_size=64, blocks=5), {"spread": 4}),
    ("random", AcquireOptions(actors=2, blocks=3), {"balance": True}),
]


@pytest.mark.parametrize(
    "mix_mode, opts, option, partners",
    [(*s, partners) for s in SETTINGS for partners in ("pixels", "joined")] + [(*SETTINGS[1], "encoded")],
)
def test_distributed_selection_equals_reference(ray_cluster, sample_pools, trained_checkpoint, mix_mode, opts,
                                                option, partners, monkeypatch):
    """Anchor and partner images come from the pool's pixels shared through the object store (small pools), its
    stored bytes shared that way (pools above `SHARED_PIXELS_MAX_BYTES`) or hash joins (pools above
    `SHARED_IMAGES_MAX_BYTES` too): each way, the in-memory engine's selection. With `spread`, the k-means over
    the top candidates' embeddings too, and with `balance` the per-class quota."""
    if partners != "pixels":
        monkeypatch.setattr(ray_engine, "SHARED_PIXELS_MAX_BYTES", 0)
    if partners == "joined":
        monkeypatch.setattr(ray_engine, "SHARED_IMAGES_MAX_BYTES", 0)
    cfg = config(sample_pools["mnist_train"], mix=mix_mode, knn={"mode": "exact"}, **option)
    result = acquire(cfg.acquire_request(trained_checkpoint, 1, LABELED), opts)
    assert_same_selection(result.selection, local_selection(cfg, trained_checkpoint, 1, LABELED))
    if option:  # ... which is not the plain top B
        plain = config(sample_pools["mnist_train"], mix=mix_mode, knn={"mode": "exact"})
        assert local_selection(plain, trained_checkpoint, 1, LABELED).column("id").to_pylist() != \
            result.selection.column("id").to_pylist()
    sel = result.selection.to_pandas()
    assert not sel.id.isin(LABELED).any() and not sel.neighbor_id.isin(LABELED).any()
    assert (sel.id != sel.neighbor_id).all()
    assert result.counts["candidates"] == 2000 and result.counts["skipped_undecodable"] == 0
    assert set(result.timings) == {"embed_s", "index_s", "search_s", "mix_score_s"}


def test_joined_mean_partners_shuffle_into_the_joins_partitions(ray_cluster, sample_pools, monkeypatch):
    """For a pool too big to share, each anchor's partner is the mean of its neighbours' pixels, brought by hash joins
    and a group-by. Every shuffle uses the joins' partition count: the group-by's default (200 partitions) ran 400
    tasks one at a time on a 3,000-image pool and made an acquisition on a 2-CPU cluster take minutes."""
    import ray.data

    monkeypatch.setattr(ray_engine, "SHARED_PIXELS_MAX_BYTES", 0)
    monkeypatch.setattr(ray_engine, "SHARED_IMAGES_MAX_BYTES", 0)
    cfg = config(sample_pools["mnist_train"], mix="mean")
    engine = ray_engine.RayEngine(cfg.acquire_request("unused", 1, LABELED), AcquireOptions(actors=2))
    ids = np.arange(1000, 1040, dtype=np.int64)
    engine.counts["candidates"] = len(ids)
    nbrs = np.stack([ids + 100, ids + 200, ids + 300], axis=1)
    searched = ray.data.from_items([{"id": i, "nbr_ids": n} for i, n in zip(ids, nbrs)])
    pairs = engine.with_partners(searched, mean=True).materialize()

    shuffles = re.findall(r"(?:parts|partitions)=(\d+)\)", pairs.stats())
    assert shuffles and set(shuffles) == {"2"}, pairs.stats()
    pool_ids, pixels, _ = load_pool(cfg.pool, ImageSpec(28, 1))
    got = {int(row["id"]): row["partner"] for row in pairs.iter_rows()}
    assert sorted(got) == ids.tolist()
    for anchor, row in zip(ids, nbrs):
        np.testing.assert_allclose(got[anchor], mean_partner(pixels[np.searchsorted(pool_ids, row)]), atol=1e-6)


def test_dm2_picks_differ_from_least_confidence(sample_pools, trained_checkpoint):
    cfg = config(sample_pools["mnist_train"], knn={"mode": "exact"}).with_overrides({"strategy.budget": 100})
    ids, pixels, _ = load_pool(cfg.pool, ImageSpec(28, 1))
    ids, pixels = ids[~np.isin(ids, LABELED)], pixels[~np.isin(ids, LABELED)]
    model = checkpoint.load(trained_checkpoint, SPEC)
    dm2 = local_selection(cfg, trained_checkpoint, 1, LABELED)
    with torch.inference_mode():
        conf = torch.softmax(model(to_tensor(pixels)), 1).max(1).values.numpy()
    least_confident = set(ids[np.argsort(conf, kind="stable")[:100]].tolist())
    overlap = len(least_confident & set(dm2.column("id").to_pylist()))
    assert overlap < 90, f"DM2 and least-confidence picks overlap in {overlap}/100"


def test_mixing_with_another_class_lowers_confidence(sample_pools, trained_checkpoint):
    table = pool.read_columns(sample_pools["mnist_train"], ["id", "image", "label"]).sort_by("id").slice(1000, 400)
    from raydm2.data.images import decode

    x = np.stack([decode(b, ImageSpec(28, 1)) for b in table.column("image").to_pylist()])
    y = table.column("label").to_numpy()
    model = checkpoint.load(trained_checkpoint, SPEC).eval()
    ones, sevens, zeros = x[y == 1][:20], x[y == 1][20:40], x[y == 0][:20]
    with torch.inference_mode():
        def conf_of_class(batch, cls):
            return torch.softmax(model(to_tensor(batch)), 1)[:, cls].numpy()

        base = conf_of_class(ones, 1)
        same = conf_of_class(mix(ones, sevens, np.full(20, 0.8)), 1)
        other = conf_of_class(mix(ones, zeros, np.full(20, 0.8)), 1)
    assert other.mean() < base.mean()
    assert other.mean() < same.mean()


def test_empty_pool_is_a_clear_error(ray_cluster, sample_pools, trained_checkpoint):
    cfg = config(sample_pools["mnist_test"])
    everything = np.arange(500, dtype=np.int64)
    with pytest.raises(RayDM2Error, match="no unlabeled, decodable images"):
        acquire(cfg.acquire_request(trained_checkpoint, 1, everything), AcquireOptions(actors=1))


@pytest.mark.parametrize("spec", [ModelSpec("small_cnn", 5, 1, 28), ModelSpec("resnet18", 10, 1, 28)])
def test_mismatched_checkpoint_refused_before_work(tmp_path, sample_pools, spec):
    path = str(tmp_path / "other")
    checkpoint.save(build(spec), spec, path)
    with pytest.raises(RayDM2Error, match="does not match the project"):
        acquire(config(sample_pools["mnist_train"]).acquire_request(path, 1, LABELED))


def test_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path, sample_pools):
    path = tmp_path / "evil"
    checkpoint.save(build(SPEC), SPEC, str(path))

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    import pickle

    (path / "model.pt").write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(RayDM2Error, match="not a loadable state dict"):
        checkpoint.load(str(path), SPEC)
