"""The engine interface: a strategy added as one file runs on both engines and through the CLI; FAISS IVF through
the distributed path; and known answers for what the engines share (neighbour choice, adaptive λ and τ, dedupe
with a hub, and each model-scoring actor)."""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch
import torch.nn.functional as F

from raydm2.acquisition import AcquireOptions, AcquireRequest, acquire, strategies
from raydm2.acquisition.hashing import PURPOSE_MC_DROPOUT, PURPOSE_NEIGHBOUR, PURPOSE_SUBSET, hash_ids, uniform, \
    uniform_matrix
from raydm2.acquisition.knn import ExactIndex
from raydm2.acquisition.local_engine import LocalEngine, load_pool
from raydm2.acquisition.mixing import DM2Params, choose_neighbour, mix_lambda, unit
from raydm2.acquisition.ray_engine import RayEngine
from raydm2.acquisition.strategies import badge, bald, dm2, noise_stability
from raydm2.data.images import ImageSpec, to_tensor
from raydm2.ledger.config import ProjectConfig
from raydm2.models import checkpoint
from raydm2.models.registry import ModelSpec, build
from tests.helpers import CLASSES, cli, local_selection, trained_project
from tests.test_acquire import assert_same_selection

SPEC = ModelSpec("small_cnn", 10, 1, 28)

TOY = '''
"""A strategy of a user's own: the darkest images first (a stand-in for any per-image score)."""
from typing import Literal

import numpy as np

from raydm2.acquisition.model_actors import scored
from raydm2.acquisition.ranking import select_top
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register


class Settings(StrategySettings):
    name: Literal["toy_darkest"] = "toy_darkest"
    power: float = 1.0


def darkness(batch, power):
    ok = batch["ok"].astype(bool)
    pixels = np.asarray(batch["pixels"])[ok].astype(np.float64)
    return scored(batch, (1.0 - pixels.mean(axis=(1, 2, 3)) / 255.0) ** power)


@register(Settings)
def plan(engine, request):
    return select_top(engine, darkness, columns=(), power=request.settings.power)
'''


@pytest.fixture
def toy_strategy(tmp_path, monkeypatch):
    """The module above, written to a folder of its own and named in RAYDM2_STRATEGY_MODULES, as a user would."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_darkest.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("RAYDM2_STRATEGY_MODULES", "toy_darkest")
    # Every built-in strategy registered first: one imported during the test would register only into the copy, and
    # be missing from the registry afterwards (its module is not imported again).
    strategies.names()
    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))
    yield str(folder)
    sys.modules.pop("toy_darkest", None)


def test_a_strategy_added_as_one_file_runs_on_both_engines_and_through_the_cli(
        ray_cluster, toy_strategy, tmp_path, small_pool, trained_checkpoint):
    assert "toy_darkest" in strategies.names()
    project = trained_project(str(tmp_path / "p"), small_pool, trained_checkpoint)
    config = project.config.with_overrides({"strategy.name": "toy_darkest", "strategy.power": 2.0})
    excluded = project.selected_ids(before=1)
    # The session's cluster started before this module existed, so its workers get the module by value; the CLI
    # below ships it the way users' strategies travel (runtime_env py_modules, from raydm2.runtime.connect).
    ray.cloudpickle.register_pickle_by_value(sys.modules["toy_darkest"])
    on_ray = acquire(config.acquire_request(trained_checkpoint, 1, excluded), AcquireOptions(actors=1)).selection
    in_memory = local_selection(config, trained_checkpoint, 1, excluded)
    assert_same_selection(on_ray, in_memory)

    ids, pixels, _ = load_pool(small_pool, ImageSpec(28, 1))
    candidates = ~np.isin(ids, excluded)
    darkness = (1.0 - pixels[candidates].astype(np.float64).mean(axis=(1, 2, 3)) / 255.0) ** 2
    darkest = ids[candidates][np.lexsort((ids[candidates], -darkness))[:15]]
    assert on_ray.column("id").to_pylist() == darkest.tolist()

    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "PYTHONPATH": os.pathsep.join([toy_strategy, *sys.path])}
    run = cli("acquire", "--project", project.uri, "--set", "strategy.name=toy_darkest", "--set",
              "strategy.power=2.0", env=env)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert project.manifest(1)["strategy"] == "toy_darkest"
    assert project.selection(1).column("id").to_pylist() == darkest.tolist()


@pytest.mark.parametrize("shards", [None, 3])
def test_faiss_ivf_through_the_distributed_path_equals_the_in_memory_engine(ray_cluster, small_pool,
                                                                              trained_checkpoint, shards):
    """The IVF build tasks, their hand-off through the object store and the searcher actors, on a pool small enough
    that `auto` would have chosen exact search; with shards, each shard's actors in turn."""
    config = ProjectConfig(name="t", pool=small_pool, classes=CLASSES, seed=3,
                           strategy={"budget": 20, "knn": {"mode": "ivf", "shards": shards}})
    excluded = np.arange(100)
    result = acquire(config.acquire_request(trained_checkpoint, 1, excluded),
                     AcquireOptions(actors=2, batch_size=100, blocks=4))
    assert result.index["kind"] == "ivf" and result.index["vectors"] == 700
    assert result.index["shards"] == len(result.index["shard_vectors"]) == (shards or 1)
    assert sum(result.index["shard_vectors"]) == 700
    assert result.index["nprobe"] < result.index["nlist"]  # a real approximation, not an exhaustive scan
    assert_same_selection(result.selection, local_selection(config, trained_checkpoint, 1, excluded))


# ---- known answers -------------------------------------------------------------------------------------------
def test_neighbours_are_the_nearest_by_combined_distance_and_the_partner_a_hashed_slot():
    # Unit vectors at angles whose gaps double: every point's nearest neighbours are known by hand.
    degrees = np.array([0, 1, 3, 7, 15, 31])
    z = unit(np.stack([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))], 1))
    ids = np.array([10, 11, 12, 13, 14, 15])
    nbrs, dists = ExactIndex(ids, z, 0.5).search(ids, z, 2)
    assert nbrs.tolist() == [[11, 12], [10, 12], [11, 10], [12, 11], [13, 12], [14, 13]]
    assert (np.diff(dists, axis=1) > 0).all()
    params = DM2Params(k=2, seed=4, round=2)
    partner, _ = choose_neighbour(ids, nbrs, dists, params)
    slots = hash_ids(ids, 4, 2, PURPOSE_NEIGHBOUR) % np.uint64(2)
    assert partner.tolist() == [row[int(s)] for row, s in zip(nbrs, slots)]
    assert 0 < int(slots.sum()) < len(ids)  # both slots occur: the choice really is random
    # one anchor at a time, in another order: the same partners
    alone = [choose_neighbour(ids[i:i + 1], nbrs[i:i + 1], dists[i:i + 1], params)[0][0] for i in (5, 2, 0, 4, 1, 3)]
    assert alone == partner[[5, 2, 0, 4, 1, 3]].tolist()
    # with k = 1 the partner is the nearest neighbour
    assert choose_neighbour(ids, nbrs[:, :1], dists[:, :1], DM2Params(k=1))[0].tolist() == nbrs[:, 0].tolist()


def test_adaptive_lambda_and_tau_have_their_defining_values(small_pool, trained_checkpoint):
    params = DM2Params(lam=0.8, mix="adaptive")
    tau = 0.3
    lam = mix_lambda(np.array([0.0, tau, 1e6]), params, tau)
    np.testing.assert_allclose(lam, [0.8, 1 - 0.2 / np.e, 1.0])
    assert mix_lambda(np.array([0.1, 0.2]), DM2Params(lam=0.7), None).tolist() == [0.7, 0.7]
    # Every candidate selected (B = the pool), so τ must be the median of all chosen-partner distances.
    config = ProjectConfig(name="t", pool=small_pool, classes=CLASSES,
                           strategy={"budget": 60, "mix": "adaptive", "knn": {"k": 5}})
    request = config.acquire_request(trained_checkpoint, 1, np.arange(60, 800))
    result = acquire(request, engine="local")
    sel = result.selection
    assert sel.num_rows == 60 and not result.warnings
    d = sel.column("neighbor_dist").to_numpy()
    assert result.index["tau"] == pytest.approx(float(np.median(d)))
    np.testing.assert_allclose(sel.column("mix_lambda").to_numpy(), 1 - 0.2 * np.exp(-d / result.index["tau"]))


def _hub_candidates() -> pa.Table:
    """Ten candidates, best first by id; candidate 0 is a near neighbour (d 0.01) of candidates 1-8, so once it is
    selected those eight are near-duplicates of it. With k = 2 that is four times more than k."""
    nbr_ids = [[5, 9]] + [[0, 9]] * 8 + [[3, 4]]
    nbr_d = [[0.5, 0.5]] + [[0.01, 0.5]] * 8 + [[0.5, 0.5]]
    return pa.table({"id": pa.array(range(10), pa.int64()), "score": pa.array(np.linspace(1.0, 0.1, 10)),
                     "neighbor_id": pa.array([r[0] for r in nbr_ids], pa.int64()),
                     "mix_lambda": pa.array([0.8] * 10), "anchor_conf": pa.array([0.5] * 10),
                     "neighbor_dist": pa.array([r[0] for r in nbr_d]),
                     "nbr_ids": pa.FixedSizeListArray.from_arrays(pa.array(sum(nbr_ids, []), pa.int64()), 2),
                     "nbr_dists": pa.FixedSizeListArray.from_arrays(pa.array(sum(nbr_d, [])), 2)})


def test_dedupe_walk_past_a_hub_reaches_the_budget_on_both_engines(ray_cluster):
    request = AcquireRequest(pool="unused", model=SPEC, checkpoint="unused", round=1, seed=0,
                             settings=dm2.Settings(budget=2, dedupe_radius=0.1, knn={"k": 2}))
    table = _hub_candidates()
    engines = [(RayEngine(request), ray.data.from_arrow([table.slice(0, 4), table.slice(4, 3), table.slice(7)])),
               (LocalEngine(request, np.arange(10), np.zeros((10, 1, 1, 1), np.uint8)), table)]
    for engine, scored in engines:
        selection, warnings = dm2.select(engine, scored, budget=2, k=2, radius=0.1)
        assert selection.column("id").to_pylist() == [0, 9], type(engine).__name__
        assert warnings == ["dedupe skipped 8 near-duplicate candidates (radius 0.1)"]
    # Without dedupe, the plain top two.
    selection, _ = dm2.select(engines[1][0], table, budget=2, k=2, radius=None)
    assert selection.column("id").to_pylist() == [0, 1]


def test_spread_takes_the_best_scored_candidate_of_each_cluster_of_the_top_ones():
    # Candidates 0-5 best first; 0, 1, 2 lie along one direction and 3, 4, 5 along another.
    candidates = pa.table({"id": pa.array([4, 0, 5, 1, 2, 3], pa.int64()),
                           "score": pa.array([0.5, 0.9, 0.4, 0.8, 0.7, 0.6])})
    z = np.array([[1, 0.01], [2, 0], [1, 0.02], [0, 1], [0.01, 3], [0.02, 1]], np.float32)  # rows of ids 0-5
    picked = dm2.spread_picks({"id": np.arange(6), "z": z}, candidates, budget=2, seed=0)
    assert picked.column("id").to_pylist() == [0, 3]  # the plain top two would be 0 and 1


@pytest.mark.parametrize("options", [{"spread": 4, "dedupe_radius": 0.1}, {"spread": 4, "balance": True},
                                     {"balance": True, "dedupe_radius": 0.1}])
def test_only_one_way_to_diversify_is_given(options):
    with pytest.raises(ValueError, match="give one of dedupe_radius, spread and balance"):
        dm2.Settings(**options)


def test_balance_caps_each_predicted_class_then_fills_best_first():
    # Six candidates best first by id: the mixes of 0, 1, 2 and 4 look like class 0, those of 3 and 5 like class 1.
    candidates = pa.table({"id": pa.array(range(6), pa.int64()), "score": pa.array(np.linspace(0.9, 0.4, 6)),
                           "mix_class": pa.array([0, 0, 0, 1, 0, 1], pa.int64()),
                           **{c: pa.array([0.5] * 6) for c in ["neighbor_id", "mix_lambda", "anchor_conf",
                                                                "neighbor_dist"]}})
    picked, warnings = dm2.balanced_picks(candidates, budget=4, classes=2)
    assert picked.column("id").to_pylist() == [0, 1, 3, 5] and not warnings  # the plain top four: 0, 1, 2, 3
    # One class only: the quota of 2 runs out, and the best passed-over candidate fills the third place.
    one_class = candidates.set_column(2, "mix_class", pa.array([0] * 6, pa.int64()))
    picked, warnings = dm2.balanced_picks(one_class, budget=3, classes=2)
    assert picked.column("id").to_pylist() == [0, 1, 2]
    assert warnings == ["balance took 1 picks past its per-class quota of 2"]


@pytest.fixture(scope="module")
def batch(sample_pools):
    ids, pixels, ok = load_pool(sample_pools["mnist_test"], ImageSpec(28, 1))
    return {"id": ids[:16], "pixels": pixels[:16], "ok": ok[:16].astype(np.uint8)}


def test_gradient_embeddings_are_the_heads_weight_gradients_at_the_predicted_class(trained_checkpoint, batch):
    g = badge.GradientEmbedder(trained_checkpoint, SPEC, 1, False)(batch)["g"]
    model = checkpoint.load(trained_checkpoint, SPEC).eval()
    for i in range(4):
        x = to_tensor(batch["pixels"][i:i + 1])
        logits = model(x)
        model.zero_grad()
        F.cross_entropy(logits, logits.argmax(1)).backward()
        np.testing.assert_allclose(g[i], model.head.weight.grad.numpy().reshape(-1), rtol=1e-4, atol=1e-6)


def test_bald_is_the_mutual_information_of_the_hashed_dropout_draws(tmp_path, trained_checkpoint, batch):
    out = bald.BaldScorer(trained_checkpoint, SPEC, 1, False, samples=6, seed=2, round_=3)(batch)
    model = checkpoint.load(trained_checkpoint, SPEC).eval()
    with torch.no_grad():
        z = model.features(to_tensor(batch["pixels"]))
        n, d, p = len(z), z.shape[1], model.dropout.p
        u = uniform_matrix(batch["id"], 6 * d, 2, 3, PURPOSE_MC_DROPOUT)
        draws = np.stack([torch.softmax(model.head(z * torch.from_numpy(u[:, t * d:(t + 1) * d] >= p) / (1 - p)),
                                        1).double().numpy() for t in range(6)])
    mean = draws.mean(0)
    want = -(mean * np.log(mean)).sum(1) + (draws * np.log(draws)).sum(2).mean(0)
    np.testing.assert_allclose(out["score"], want, rtol=1e-5, atol=1e-9)
    assert (out["score"] > 0).all()
    # A head that ignores the features gives every draw the same answer: no information, BALD exactly 0.
    flat = checkpoint.load(trained_checkpoint, SPEC)
    with torch.no_grad():
        flat.head.weight.zero_()
    checkpoint.save(flat, SPEC, str(tmp_path / "flat"))
    out = bald.BaldScorer(str(tmp_path / "flat"), SPEC, 1, False, samples=6, seed=2, round_=3)(batch)
    assert np.abs(out["score"]).max() < 1e-12
    np.testing.assert_allclose(out["confidence"], torch.softmax(flat.head.bias, 0).max().item())


def test_noise_stability_diffs_are_the_normalised_softmax_shifts_of_the_noisy_copies(trained_checkpoint, batch):
    out = noise_stability.NoiseScorer(trained_checkpoint, SPEC, 1, False, draws=3, scale=0.01, seed=1, round_=2,
                                      subset_fraction=0.5)(batch)
    model = checkpoint.load(trained_checkpoint, SPEC).eval()
    considered = uniform(batch["id"], 1, 2, PURPOSE_SUBSET) < 0.5
    assert out["considered"].astype(bool).tolist() == considered.tolist() and 0 < considered.sum() < 16
    with torch.no_grad():
        x = to_tensor(batch["pixels"][considered])
        clean = torch.softmax(model(x), 1)
        shifts = []
        for k in range(3):
            noisy = noise_stability.add_weight_noise(
                copy.deepcopy(model), 0.01, torch.Generator().manual_seed(noise_stability.draw_seed(1, 2, k)))
            shifts.append((torch.softmax(noisy(x), 1) - clean) / clean.norm(dim=1, keepdim=True))
    np.testing.assert_allclose(out["diff"][considered], torch.cat(shifts, 1).numpy(), rtol=1e-4, atol=1e-7)
    assert not out["diff"][~considered].any()
