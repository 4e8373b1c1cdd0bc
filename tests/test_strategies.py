"""The strategy suite: each heuristic on a hand-built case with a known answer, then every registered strategy
end to end through the distributed pipeline, checked against the same computation done in one process."""

import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydm2.acquisition import AcquireOptions, acquire, strategies
from raydm2.acquisition.greedy import (kcenter_greedy, kmeans_clusters, kmeans_representatives, kmeanspp_seeds,
                                       min_distances)
from raydm2.acquisition.strategies import alpha_mix, badge, bald, coreset, noise_stability, uncertainty
from raydm2.errors import RayDM2Error
from raydm2.ledger.config import ProjectConfig
from raydm2.models.registry import ModelSpec
from tests.helpers import local_selection
from tests.test_acquire import assert_same_selection

SPEC = ModelSpec("small_cnn", 10, 1, 28)
CLASSES = [str(i) for i in range(10)]


# ---- hand-built cases ----------------------------------------------------------------------------------------
def test_the_config_takes_exactly_the_registered_strategies_with_their_own_settings():
    assert {"random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge", "alpha_mix",
            "noise_stability", "typiclust", "dm2"} <= set(strategies.names())
    for name in strategies.names():
        config = ProjectConfig(name="t", pool="p", classes=CLASSES, strategy={"name": name})
        assert type(config.strategy) is strategies.get(name).settings
    with pytest.raises(RayDM2Error, match="strategy.name: unknown strategy 'magic'"):
        ProjectConfig(name="t", pool="p", classes=CLASSES).with_overrides({"strategy.name": "magic"})
    # One strategy's settings are refused by another ...
    with pytest.raises(Exception, match="lam"):
        ProjectConfig(name="t", pool="p", classes=CLASSES, strategy={"name": "margin", "lam": 0.5})
    # ... and switching strategies drops the old one's settings, keeping the budget.
    dm2 = ProjectConfig(name="t", pool="p", classes=CLASSES, strategy={"budget": 7, "lam": 0.5})
    assert dm2.with_overrides({"strategy.name": "margin"}).strategy.model_dump() == {"name": "margin", "budget": 7,
                                                                                  "candidates": None}


def test_probability_heuristics_rank_the_known_ambiguous_points():
    probs = np.array([
        [0.98, 0.01, 0.01],   # confident
        [0.50, 0.49, 0.01],   # two-way tie: the smallest margin
        [0.34, 0.33, 0.33],   # flat: the highest entropy and least confidence
        [0.70, 0.20, 0.10],
    ])
    assert np.argmax(uncertainty.margin(probs)) == 1
    assert np.argmax(uncertainty.entropy(probs)) == 2
    assert np.argmax(uncertainty.least_confidence(probs)) == 2
    assert np.argmin(uncertainty.least_confidence(probs)) == 0
    assert uncertainty.margin(probs)[1] == pytest.approx(0.99)


def test_bald_is_zero_when_draws_agree_and_high_when_they_disagree():
    agree = np.tile([[0.5, 0.5]], (10, 1))[:, None, :]
    disagree = np.array([[1.0, 0.0], [0.0, 1.0]] * 5)[:, None, :]
    scores = bald.bald(np.concatenate([agree, disagree], axis=1))
    assert scores[0] == pytest.approx(0.0, abs=1e-9)  # uncertain, but the model's weights agree: no information
    assert scores[1] == pytest.approx(np.log(2), rel=1e-6)


def test_coreset_picks_the_far_cluster_first():
    rng = np.random.default_rng(0)
    near = rng.normal(0, 0.1, (50, 4))
    far = rng.normal(10, 0.1, (5, 4))
    z = np.concatenate([near, far])
    labeled = rng.normal(0, 0.1, (20, 4))
    picked = coreset.coreset(np.arange(55), z, labeled, budget=2).column("id").to_pylist()
    assert picked[0] >= 50  # the first pick comes from the cluster no labeled centre covers
    # and once it is covered the next pick is the point farthest from both
    d = np.minimum(min_distances(z, labeled), np.linalg.norm(z - z[picked[0]], axis=1))
    assert picked[1] == int(np.argmax(np.where(np.arange(55) == picked[0], -1, d)))


def test_kcenter_never_picks_twice_and_breaks_ties_by_index():
    x = np.zeros((4, 2))
    picks, _ = kcenter_greedy(x, 4, np.zeros(4))
    assert picks.tolist() == [0, 1, 2, 3]


def test_noise_stability_first_pick_is_the_largest_norm_diff():
    rng = np.random.default_rng(1)
    diff = rng.normal(0, 1, (40, 6))
    diff[17] *= 5
    table = noise_stability.noise_stability(np.arange(100, 140), diff, np.ones(40, np.uint8), budget=3)
    ids = table.column("id").to_pylist()
    assert ids[0] == 117
    assert table.column("score")[0].as_py() == pytest.approx(np.linalg.norm(diff[17]))
    # only the considered subset can be picked
    considered = np.zeros(40, np.uint8)
    considered[:10] = 1
    sub = noise_stability.noise_stability(np.arange(40), diff, considered, budget=3).column("id").to_pylist()
    assert set(sub) <= set(range(10))


def test_weight_noise_has_the_specified_relative_norm_and_spares_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    noise_stability.add_weight_noise(model, 0.001, torch.Generator().manual_seed(3))
    for name, value in model.state_dict().items():
        if name.endswith("weight"):
            assert (value - before[name]).norm().item() == pytest.approx(0.001 * before[name].norm().item(), rel=1e-4)
        elif name.endswith("bias"):
            assert torch.equal(value, before[name])
    again = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 3))
    again.load_state_dict(before)
    noise_stability.add_weight_noise(again, 0.001, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_badge_gradient_embedding_and_seeding():
    probs = np.array([[0.7, 0.3], [0.5, 0.5]])
    z = np.array([[1.0, 2.0], [3.0, 0.0]])
    g = badge.gradient_embedding(probs, z)
    assert np.allclose(g[0], np.outer([0.7 - 1.0, 0.3], [1.0, 2.0]).ravel())
    x = np.random.default_rng(0).normal(0, 1, (30, 3))
    x[4] *= 20
    picks, _ = kmeanspp_seeds(x, 5, np.random.default_rng(0))
    assert picks[0] == 4 and len(set(picks.tolist())) == 5
    same, _ = kmeanspp_seeds(x, 5, np.random.default_rng(0))
    assert picks.tolist() == same.tolist()


def test_alpha_mix_flags_points_near_the_boundary():
    # Two classes split by x0 = 0: class 0 left, class 1 right.
    weight = np.array([[-1.0, 0.0], [1.0, 0.0]])
    bias = np.zeros(2)
    anchors = np.array([[-1.0, 0.0], [1.0, 0.0]])
    z = np.array([[-0.02, 0.3], [-3.0, 0.3]])  # barely class 0, deep in class 0
    flips, pred = alpha_mix.prediction_flips(z, weight, bias, anchors, alpha_cap=0.2)
    assert pred.tolist() == [0, 0]
    assert flips[0] >= 1 and flips[1] == 0


def test_alpha_mix_grows_its_cap_like_the_official_loop_and_clusters_directions():
    """Cap 0.2 flips only the image nearest the boundary; the cap grows until more than B = 2 images are
    candidates (0.4 adds the second); the third, deep in its class, never flips and is not a candidate. k-means
    runs on unit vectors: two candidates of one direction but different norms count as one cluster."""
    assert alpha_mix.caps(0.2) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and alpha_mix.caps(0.3)[-1] == 1.0
    weight, bias = np.array([[-1.0, 0.0], [1.0, 0.0]]), np.zeros(2)
    anchors = np.array([[-1.0, 0.0], [1.0, 0.0]])
    z = np.array([[-0.02, 0.3], [-0.2, 0.3], [-30.0, 0.3], [-0.03, 0.3]])
    batch = {"id": np.arange(4), "z": z, "conf": np.ones(4)}
    out = alpha_mix.flips_batch(batch, anchors, weight, bias, cap_step=0.2)
    assert out["first_cap"][0] == 0 and out["first_cap"][3] == 0 and np.isinf(out["first_cap"][2])
    assert 0 < out["first_cap"][1] < np.inf
    picked = alpha_mix.alpha_mix(np.arange(4), z, out["first_cap"], out["flips"], np.ones(4), 2, 0, 1)
    assert set(picked.column("id").to_pylist()) <= {0, 1, 3} and picked.num_rows == 2
    # Two directions; along x, norms 1, 2 and 100. On raw vectors k-means would split off the norm-100 one and
    # take both picks along x; on unit vectors it takes one pick per direction.
    z = np.array([[1.0, 0.0], [100.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 1.1]])
    picked = alpha_mix.alpha_mix(np.arange(5), z, np.zeros(5), np.ones(5, np.int64), np.ones(5), 2, 0, 1)
    assert sorted(int(i >= 3) for i in picked.column("id").to_pylist()) == [0, 1]


def test_typiclust_takes_the_most_typical_image_of_each_uncovered_cluster():
    """Three tight groups of directions (one labeled, so covered) and stragglers: B = 2 picks, one per uncovered
    group, each the member with the nearest neighbours (the group's dense centre), never an outlier."""
    from raydm2.acquisition.strategies import typiclust

    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    groups = [c + rng.normal(0, 0.02, (30, 3)) for c in centres]
    for g, c in zip(groups, centres):
        g[0] = c  # the centre itself: the most typical member
        g[1] = c + 0.15  # a straggler at the edge
    z = np.concatenate(groups)
    ids = np.arange(len(z)) + 1000
    picked = sorted(typiclust.typiclust(ids, z, labeled_z=centres[:1], budget=2, k=20, seed=3)
                    .column("id").to_pylist())
    assert [p // 30 for p in np.array(picked) - 1000] == [1, 2] and not {1031, 1061} & set(picked)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    for group, pick in zip((1, 2), picked):  # the highest typicality of its group, computed by brute force
        members = unit[30 * group:30 * group + 30]
        d = np.sqrt(((members[:, None] - members[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        assert np.argmax(1 / np.sort(d, axis=1)[:, :20].mean(1)) == pick - 1000 - 30 * group


def test_kmeans_representatives_take_one_per_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    x = np.concatenate([c + rng.normal(0, 0.1, (20, 2)) for c in centres])
    reps = kmeans_representatives(x, 3, seed=1)
    assert sorted(int(r) // 20 for r in reps) == [0, 1, 2]


def test_clustering_a_few_points_a_cluster_prints_no_faiss_warning(capfd):
    # DM2's spread clusters s·B candidates into B clusters: few points a cluster is the design, and FAISS's
    # "please provide at least ... training points" on stderr would land in every user's console.
    x = np.random.default_rng(0).normal(size=(200, 8))
    assign, _ = kmeans_clusters(x, 50, seed=0)
    assert len(np.unique(assign)) > 1 and "training points" not in capfd.readouterr().err


# ---- end to end through Ray, against the in-memory engine ---------------------------------------------------
# The first 200 images (part of the fixture model's training set) count as labeled; 600 are candidates.
LABELED = np.arange(0, 200, dtype=np.int64)
# A few strategies run with two actors and several blocks, the rest with one: sharding must not matter.
SHARDED = {"margin", "badge", "noise_stability", "coreset"}
# Settings that keep a strategy's run short on 2 cores.
# NoiseStability also runs its official protocol's per-round candidate subset, which every strategy takes.
QUICK = {"noise_stability": {"noise_stability": {"draws": 5}, "candidates": 150}}


def labeled_rows(pool_uri: str) -> pa.Table:
    from raydm2.data import pool

    table = pool.read_columns(pool_uri, ["id", "label"]).sort_by("id").slice(0, len(LABELED))
    return pa.table({"id": table.column("id"), "label": table.column("label").cast(pa.int64())})


@pytest.mark.parametrize("name", strategies.names())
def test_strategy_on_ray_equals_the_in_memory_engine(ray_cluster, small_pool, trained_checkpoint, name):
    cfg = ProjectConfig(name="t", pool=small_pool, classes=CLASSES, seed=7,
                        strategy={"name": name, "budget": 12, **QUICK.get(name, {})})
    labeled = labeled_rows(cfg.pool)
    opts = AcquireOptions(actors=2, batch_size=100, blocks=3) if name in SHARDED else AcquireOptions(actors=1)
    result = acquire(cfg.acquire_request(trained_checkpoint, 1, LABELED, labeled), opts)
    sel = result.selection
    assert sel.num_rows == 12 and sel.column_names[:3] == ["id", "rank", "score"]
    assert sel.column("rank").to_pylist() == list(range(12))
    assert not np.isin(sel.column("id").to_numpy(), LABELED).any()
    assert len(set(sel.column("id").to_pylist())) == 12
    assert result.counts["candidates"] == QUICK.get(name, {}).get("candidates", 600)
    assert_same_selection(sel, local_selection(cfg, trained_checkpoint, 1, LABELED, labeled))


def test_candidate_subsets_are_fresh_each_round_and_never_hold_excluded_ids(small_pool, trained_checkpoint):
    from raydm2.acquisition import outside_candidates
    from raydm2.data import pool

    ids = pool.read_columns(small_pool, ["id"]).column("id").to_numpy()
    cfg = ProjectConfig(name="t", pool=small_pool, classes=CLASSES, seed=7,
                        strategy={"name": "margin", "budget": 5, "candidates": 100})
    subsets = []
    for round_ in (1, 2, 1):
        excluded = outside_candidates(cfg.acquire_request(trained_checkpoint, round_, LABELED))
        subset = np.setdiff1d(ids, excluded)
        assert len(subset) == 100 and not np.isin(subset, LABELED).any() and np.isin(LABELED, excluded).all()
        subsets.append(subset)
    assert subsets[0].tolist() == subsets[2].tolist() and len(np.intersect1d(subsets[0], subsets[1])) < 50


@pytest.mark.ray
def test_seed_by_typiclust_on_a_transferred_backbone(ray_cluster, small_pool, trained_checkpoint, tmp_path):
    """`raydm2 seed --strategy typiclust` with a built-in body started from another checkpoint: round 0 is picked
    from the features, the features are kept with the round, and a second project picks the same."""
    from raydm2.ledger.project import Project
    from raydm2.models import checkpoint
    from raydm2.service import loop

    picks = []
    for name in ("a", "b"):
        project = Project.create(str(tmp_path / name), ProjectConfig(
            name=name, pool=small_pool, classes=CLASSES, seed=4,
            model={"weights": os.path.join(trained_checkpoint, checkpoint.WEIGHTS)}))
        selection = loop.seed(project, 10, strategy="typiclust")
        m = project.manifest(0)
        assert m["strategy"] == "typiclust" and m["state"] == "selected" and m["counts"]["candidates"] == 800
        assert checkpoint.read_meta(m["checkpoint"])["spec"]["arch"] == "small_cnn"
        picks.append(selection.column("id").to_pylist())
    assert len(set(picks[0])) == 10 and picks[0] == picks[1]
    with pytest.raises(RayDM2Error, match="unknown seed strategy 'kmeans'"):
        loop.seed(Project.create(str(tmp_path / "c"), ProjectConfig(name="c", pool=small_pool, classes=CLASSES)),
                  5, strategy="kmeans")
