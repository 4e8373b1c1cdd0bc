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


@pytest.fixture(scope="session")
def trained_checkpoint(sample_pools, tmp_path_factory):
    """A real small CNN trained for two epochs on the first 1,000 sample images (plain PyTorch, ~10 s), saved in
    the checkpoint format acquisition loads. Ray Train training is tested on its own in test_train.py."""
    import torch
    import torch.nn.functional as F

    from helpers import first_images
    from raydm2 import checkpoint
    from raydm2.dm2 import to_tensor
    from raydm2.models import ModelSpec, build

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
