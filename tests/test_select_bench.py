"""The selection benchmark's validation split: tuning must never evaluate on the test subset the tables report."""

import os
import sys

import numpy as np

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
