"""Shared fixtures: the shipped real sample ingested once, and one local Ray cluster for the session."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from raydm2.data import ingest

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
def ray_cluster(tmp_path_factory):
    """A new embedded local cluster for the whole session, in its own temp dir and without GPUs, so neither a
    cluster left on the machine nor a GPU runner changes what the suite tests; stopped by its own handle."""
    import ray

    from raydm2 import runtime

    os.environ.pop("RAY_ADDRESS", None)
    # Ray's socket paths must stay short (AF_UNIX limit): a short folder of our own, not pytest's deep tmp path.
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    runtime.connect(address="local", include_dashboard=False, num_cpus=2, num_gpus=0, temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_checkpoint(sample_pools, tmp_path_factory):
    """A real small CNN trained for two epochs on the first 1,000 sample images (plain PyTorch, ~10 s), saved in
    the checkpoint format acquisition loads. Ray Train training is tested on its own in test_train.py."""
    import torch
    import torch.nn.functional as F

    from helpers import first_images
    from raydm2.models import checkpoint
    from raydm2.data.images import to_tensor
    from raydm2.models.registry import ModelSpec, build

    x, labels = first_images(sample_pools["mnist_train"], 1000, 28, 1)
    y = torch.from_numpy(labels)
    torch.manual_seed(0)
    spec = ModelSpec("small_cnn", 10, 1, 28)
    model = build(spec)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(2):
        perm = torch.randperm(len(y))
        for s in range(0, len(y), 64):
            idx = perm[s:s + 64]
            loss = F.cross_entropy(model(to_tensor(x[idx.numpy()])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = str(tmp_path_factory.mktemp("ckpt") / "small_cnn")
    checkpoint.save(model, spec, path)
    return path


@pytest.fixture(scope="session")
def small_pool(sample_pools, tmp_path_factory):
    """The first 800 images of the MNIST sample as a pool of their own (ids 0..799)."""
    from raydm2.data import pool

    table = pool.read_columns(sample_pools["mnist_train"], ["id", "image", "label"]).sort_by("id").slice(0, 800)
    uri = str(tmp_path_factory.mktemp("small") / "pool")
    pool.append(uri, table.column("image").to_pylist(), table.column("label").to_pylist())
    return uri
