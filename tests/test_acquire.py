"""The distributed DM2 pipeline against the single-process reference, plus its edge cases."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydm2 import checkpoint, pool
from raydm2.acquire import AcquireOptions, acquire
from raydm2.config import ProjectConfig
from raydm2.dm2 import DM2Params, mix, to_tensor
from raydm2.errors import RayDM2Error
from raydm2.models import ModelSpec, build
from raydm2.reference import dm2_select, load_unlabeled

SPEC = ModelSpec("small_cnn", 10, 1, 28)
CLASSES = [str(i) for i in range(10)]
# Pretend the first 1,000 ids (the fixture model's training set) were labeled in earlier rounds.
LABELED = np.arange(0, 1000, dtype=np.int64)


def config(pool_uri, **strategy):
    return ProjectConfig(name="t", pool=pool_uri, classes=CLASSES, seed=7,
                         strategy={"budget": 25, **strategy})


def assert_same_selection(got: pa.Table, want: pa.Table, tol=1e-6):
    """Equal ids, except where scores tie within `tol` of the B-th score (SPEC: order among ties is free)."""
    cutoff = want.column("score")[-1].as_py()
    g = {i: s for i, s in zip(got.column("id").to_pylist(), got.column("score").to_pylist()) if s > cutoff + tol}
    w = {i: s for i, s in zip(want.column("id").to_pylist(), want.column("score").to_pylist()) if s > cutoff + tol}
    assert g.keys() == w.keys()
    assert max(abs(g[i] - w[i]) for i in g) < 1e-5 if g else True
    assert got.num_rows == want.num_rows


@pytest.mark.parametrize(
    "mix_mode, opts",
    [
        ("random", AcquireOptions(actors=1)),
        ("mean", AcquireOptions(actors=3, batch_size=64, blocks=5)),
    ],
)
def test_distributed_selection_equals_reference(ray_cluster, sample_pools, trained_checkpoint, mix_mode, opts):
    cfg = config(sample_pools["mnist_train"], mix=mix_mode, knn={"mode": "exact"})
    result = acquire(cfg, trained_checkpoint, 1, LABELED, opts=opts)
    ids, pixels = load_unlabeled(cfg.pool, 28, 1, set(LABELED.tolist()))
    want = dm2_select(checkpoint.load(trained_checkpoint, SPEC), ids, pixels, DM2Params.from_config(cfg, 1), 25)
    assert_same_selection(result.selection, want)
    sel = result.selection.to_pandas()
    assert not sel.id.isin(LABELED).any() and not sel.neighbor_id.isin(LABELED).any()
    assert (sel.id != sel.neighbor_id).all()
    assert result.counts["candidates"] == 2000 and result.counts["skipped_undecodable"] == 0
    assert set(result.timings) == {"embed_s", "index_s", "search_s", "mix_score_s"}


def test_dm2_picks_differ_from_least_confidence(sample_pools, trained_checkpoint):
    cfg = config(sample_pools["mnist_train"], knn={"mode": "exact"})
    ids, pixels = load_unlabeled(cfg.pool, 28, 1, set(LABELED.tolist()))
    model = checkpoint.load(trained_checkpoint, SPEC)
    dm2 = dm2_select(model, ids, pixels, DM2Params.from_config(cfg, 1), 100)
    with torch.inference_mode():
        conf = torch.softmax(model(to_tensor(pixels)), 1).max(1).values.numpy()
    least_confident = set(ids[np.argsort(conf, kind="stable")[:100]].tolist())
    overlap = len(least_confident & set(dm2.column("id").to_pylist()))
    assert overlap < 90, f"DM2 and least-confidence picks overlap in {overlap}/100"


def test_mixing_with_another_class_lowers_confidence(sample_pools, trained_checkpoint):
    table = pool.read_columns(sample_pools["mnist_train"], ["id", "image", "label"]).sort_by("id").slice(1000, 400)
    from raydm2.images import decode

    x = np.stack([decode(b, 28, 1) for b in table.column("image").to_pylist()])
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
        acquire(cfg, trained_checkpoint, 1, everything, opts=AcquireOptions(actors=1))


@pytest.mark.parametrize("spec", [ModelSpec("small_cnn", 5, 1, 28), ModelSpec("resnet18", 10, 1, 28)])
def test_mismatched_checkpoint_refused_before_work(tmp_path, sample_pools, spec):
    path = str(tmp_path / "other")
    checkpoint.save(build(spec), spec, path)
    with pytest.raises(RayDM2Error, match="does not match the project"):
        acquire(config(sample_pools["mnist_train"]), path, 1, LABELED)


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
