"""Shared fixtures: the shipped real sample ingested once, and one local Ray cluster for the session."""

from __future__ import annotations

import os

import pytest

from raydm2 import ingest

SAMPLE = ingest.sample_data_dir()
MNIST_DIR = os.path.join(SAMPLE, "mnist")
CIFAR_NPZ = os.path.join(SAMPLE, "cifar10", "cifar10_sample.npz")


@pytest.fixture(scope="session")
def sample_pools(tmp_path_factory):
    """Pools ingested from the shipped sample: {'mnist_train', 'mnist_test', 'cifar_train', 'cifar_test'}."""
    root = tmp_path_factory.mktemp("pools")
    ingest.ingest_idx_dataset(MNIST_DIR, str(root / "mnist"), "mnist")
    ingest.ingest_npz_dataset(CIFAR_NPZ, str(root / "cifar10"), "cifar10")
    return {
        "mnist_train": str(root / "mnist" / "train"),
        "mnist_test": str(root / "mnist" / "test"),
        "cifar_train": str(root / "cifar10" / "train"),
        "cifar_test": str(root / "cifar10" / "test"),
    }


@pytest.fixture(scope="session")
def ray_cluster():
    """An embedded local cluster for the whole session, stopped by its own handle at the end."""
    import ray

    from raydm2 import runtime

    os.environ.pop("RAY_ADDRESS", None)
    runtime.connect(include_dashboard=False, num_cpus=2)
    yield ray
    ray.shutdown()
