"""The selection benchmark's pools: a validation split that tuning evaluates on, never the test subset the tables
report, and the long-tailed cuts of the imbalanced protocols."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import select_bench  # noqa: E402
from raydm2.data import pool  # noqa: E402


def test_validation_split_is_carved_from_the_train_subset_and_never_touches_test(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    # Every image distinct (its first three pixels encode its split and index), so pools compare by content.
    x_train = rng.integers(0, 256, (3000, 28, 28), dtype=np.uint8)
    x_train[:, 0, :3] = np.stack([np.zeros(3000), np.arange(3000) // 256, np.arange(3000) % 256], 1)
    x_test = rng.integers(0, 256, (500, 28, 28), dtype=np.uint8)
    x_test[:, 0, :3] = np.stack([np.ones(500), np.arange(500) // 256, np.arange(500) % 256], 1)
    arrays = (x_train, rng.integers(0, 10, 3000), x_test, rng.integers(0, 10, 500))
    monkeypatch.setattr(select_bench, "_arrays", lambda dataset, data_root: arrays)

    def images(uri):
        from raydm2.data.images import ImageSpec, decode

        return {decode(b, ImageSpec(28, 1))[0, :3, 0].tobytes()
                for b in pool.read_columns(uri, ["image"]).column("image").to_pylist()}

    fit, val = select_bench.pools("mnist", "unused", str(tmp_path), "validation")
    train, test = select_bench.pools("mnist", "unused", str(tmp_path), "test")
    fit_i, val_i, train_i, test_i = images(fit), images(val), images(train), images(test)
    assert len(val_i) == select_bench.VALIDATION_SUBSET and len(fit_i) == 3000 - select_bench.VALIDATION_SUBSET
    assert fit_i | val_i == train_i and not fit_i & val_i
    assert not (fit_i | val_i) & test_i and len(test_i) == 500
    # Seeded: the same split again.
    assert select_bench.pools("mnist", "unused", str(tmp_path), "validation") == (fit, val)


def test_long_tailed_cut_keeps_the_exponential_profile_from_the_smallest_class():
    rng = np.random.default_rng(0)
    # 100 images of each class but class 0, which has 130: the head keeps 100 (the smallest class's count).
    y = rng.permutation(np.concatenate([np.repeat(np.arange(10), 100), np.zeros(30, int)]))
    keep = select_bench.long_tailed(y, 10)
    # ⌊100 · 10^(−c/9)⌋, worked by hand.
    assert np.bincount(y[keep]).tolist() == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert np.all(np.diff(keep) > 0)
    # Each class keeps its first images, so a cut at ratio 50 is inside the cut at ratio 10.
    assert set(select_bench.long_tailed(y, 50)) < set(keep)
    assert np.bincount(y[select_bench.long_tailed(y, 50)])[-1] == 2


def test_long_tailed_pools_cut_the_pool_only(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8), np.repeat(np.arange(10), 100),
              rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), np.repeat(np.arange(10), 20))
    monkeypatch.setattr(select_bench, "_arrays", lambda dataset, data_root: arrays)

    def counts(uri):
        return np.bincount(pool.read_columns(uri, ["label"]).column("label").to_numpy()).tolist()

    train, test = select_bench.pools("fashion_mnist", "unused", str(tmp_path), "test", long_tail=10)
    assert counts(train) == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10] and counts(test) == [20] * 10
    # The balanced protocol's pools are other folders, untouched.
    balanced, _ = select_bench.pools("fashion_mnist", "unused", str(tmp_path), "test")
    assert balanced != train and counts(balanced) == [100] * 10


def test_noisy_pool_corrupts_a_fifth_as_cifar10c_and_appends_near_duplicates():
    rng = np.random.default_rng(0)
    # Mid-grey images with texture, so that noise is not clipped away and contrast has something to lower.
    x = rng.integers(64, 192, (300, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 300)
    out, labels, kind = select_bench.noisy(x, y, corrupt=0.2, duplicate=0.1)
    assert out.shape == (330, 28, 28) and out.dtype == np.uint8
    assert {k: int((kind == k).sum()) for k in set(kind)} == {
        "clean": 240, "gaussian_noise": 20, "gaussian_blur": 20, "contrast": 20, "duplicate": 30}
    assert np.array_equal(labels[:300], y)
    first = out[:300].astype(float)
    clean = kind[:300] == "clean"
    assert np.array_equal(out[:300][clean], x[clean])

    def spread(images):  # per image standard deviation about its own mean
        return images.reshape(len(images), -1).std(1)

    noise = kind[:300] == "gaussian_noise"
    assert abs((first[noise] - x[noise]).std() - 0.10 * 255) < 1.0
    contrast = kind[:300] == "contrast"
    assert np.allclose(spread(first[contrast]) / spread(x[contrast].astype(float)), 0.15, atol=0.01)
    blur = kind[:300] == "gaussian_blur"
    assert np.all(spread(first[blur]) < 0.5 * spread(x[blur].astype(float)))
    # Each near-copy is a clean image plus noise of σ 1/255, under its label.
    copies = out[300:].astype(int)
    source = [np.flatnonzero((np.abs(x.astype(int) - c).max((1, 2)) <= 5) & clean) for c in copies]
    assert all(len(s) == 1 for s in source)
    assert np.array_equal(labels[300:], y[[s[0] for s in source]])
    assert 0.5 < np.abs(copies - x[[s[0] for s in source]]).mean() < 1.5
    # Seeded; colour images keep their layout.
    assert np.array_equal(select_bench.noisy(x, y, 0.2, 0.1)[0], out)
    rgb = select_bench.noisy(rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), y[:50], 0.2, 0.1)[0]
    assert rgb.shape == (55, 32, 32, 3)


def test_noisy_pools_change_the_pool_only(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), np.repeat(np.arange(10), 20),
              rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), np.repeat(np.arange(10), 5))
    monkeypatch.setattr(select_bench, "_arrays", lambda dataset, data_root: arrays)
    train, test = select_bench.pools("fashion_mnist", "unused", str(tmp_path), "test",
                                     noise=select_bench.PROTOCOLS["noisy_fashion_mnist"]["noisy"])
    assert pool.read_columns(train, ["id"]).num_rows == 220 and pool.read_columns(test, ["id"]).num_rows == 50
    balanced, _ = select_bench.pools("fashion_mnist", "unused", str(tmp_path), "test")
    assert balanced != train and pool.read_columns(balanced, ["id"]).num_rows == 200


def test_pick_shares_count_each_strategys_acquired_images_by_group():
    group = np.array(["clean"] * 6 + ["blur"] * 2 + ["duplicate"] * 2)
    rounds = [{"added": [0, 1]}, {"added": [6, 8]}, {"added": [2, 9]}]  # the seed set (0, 1) is not counted
    other = [{"added": [0, 1]}, {"added": [2, 3]}, {"added": [4, 7]}]
    runs = [{"strategy": "dm2", "rounds": rounds}, {"strategy": "dm2", "rounds": other},
            {"strategy": "old", "rounds": [{"labels": 20}]}]
    shares = select_bench.pick_shares(runs, group)
    assert set(shares) == {"dm2"}  # records without `added` are left out
    assert shares["dm2"]["clean"]["mean"] == (1 / 4 + 3 / 4) / 2
    assert shares["dm2"]["blur"]["mean"] == (1 / 4 + 1 / 4) / 2 and shares["dm2"]["blur"]["std"] == 0.0
    assert shares["dm2"]["duplicate"]["mean"] == (2 / 4 + 0) / 2
    assert np.isclose(shares["dm2"]["duplicate"]["std"], np.std([0.5, 0.0], ddof=1))


def test_pool_arrays_groups_the_rarer_half_of_a_long_tail_and_a_noisy_pools_origins(monkeypatch):
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8), np.repeat(np.arange(10), 100),
              rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), np.repeat(np.arange(10), 20))
    monkeypatch.setattr(select_bench, "_arrays", lambda dataset, data_root: arrays)
    x, y, group, _, _ = select_bench.pool_arrays("fashion_mnist", "unused", long_tail=10)
    assert (group == "tail").sum() == 27 + 21 + 16 + 12 + 10 and set(y[group == "tail"]) == {5, 6, 7, 8, 9}
    _, _, group, _, _ = select_bench.pool_arrays("fashion_mnist", "unused", noise={"corrupt": 0.2, "duplicate": 0.1})
    assert len(group) == 1100 and (group == "clean").sum() == 800 and (group == "duplicate").sum() == 100
    assert set(select_bench.pool_arrays("fashion_mnist", "unused")[2]) == {"all"}


def test_class_balance_of_picks_is_the_normalised_entropy_of_their_classes():
    assert select_bench.class_balance(np.array([0, 1, 2, 3]), 4) == pytest.approx(1.0)
    assert select_bench.class_balance(np.array([2, 2, 2]), 4) == 0.0
    # Two classes of four, equally: ln 2 / ln 4.
    assert select_bench.class_balance(np.array([0, 0, 3, 3]), 4) == pytest.approx(0.5)
    y = np.array([0, 0, 1, 1, 2, 3])
    runs = [{"strategy": "dm2", "rounds": [{"added": [0]}, {"added": [0, 1]}, {"added": [2, 4]}]}]
    balance = select_bench.pick_balance(runs, y)["dm2"]
    assert balance["first_round"]["mean"] == 0.0  # ids 0 and 1 are both class 0
    assert balance["all_rounds"]["mean"] == pytest.approx(select_bench.class_balance(np.array([0, 0, 1, 2]), 4))
