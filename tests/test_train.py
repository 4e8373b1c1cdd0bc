"""DM2-AT on Ray Train: DDP with 2 gloo workers, the FGSM loss, checkpoints and resume."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch
import torch.nn.functional as F

from raydm2.data import pool
from raydm2.data.images import ImageSpec, decode, to_tensor
from raydm2.ledger.config import ProjectConfig
from raydm2.models import checkpoint
from raydm2.models.fgsm import dm2at_loss, fgsm
from raydm2.models.registry import ModelSpec, build
from raydm2.training.epochs import accuracy_counts, accuracy_metrics
from raydm2.training.ray_trainer import TrainOptions, fit

SPEC = ModelSpec("small_cnn", 10, 1, 28)


def labels_for(pool_uri, ids):
    table = pool.read_columns(pool_uri, ["id", "label"], ids)
    n = table.num_rows
    return pa.table({"id": table.column("id"), "label": table.column("label"), "round": pa.array([0] * n),
                     "imported_at": pa.array([0] * n, pa.timestamp("s", tz="UTC"))})


def cfg(pools, **train):
    return ProjectConfig(name="t", pool=pools["mnist_train"], test_pool=pools["mnist_test"], seed=3,
                         classes=[str(i) for i in range(10)], train={"epsilon": 2 / 255, **train})


def test_two_worker_ddp_learns_on_disjoint_shards_without_extra_allreduce(ray_cluster, sample_pools, tmp_path,
                                                                         monkeypatch):
    ids = np.arange(1000, 1800)
    config = cfg(sample_pools, epochs=3, num_workers=2, batch_size=50)
    shards = tmp_path / "shards"
    shards.mkdir()
    monkeypatch.setenv("RAYDM2_TEST_SHARD_LOG_DIR", str(shards))
    weights, metrics = fit(config, labels_for(config.pool, ids), str(tmp_path / "runs"), pafs.LocalFileSystem(),
                           "ddp")
    r0, r1 = np.load(shards / "rank0.npy"), np.load(shards / "rank1.npy")
    assert len(np.intersect1d(r0, r1)) == 0 and np.array_equal(np.sort(np.concatenate([r0, r1])), ids)
    assert metrics["epoch"] == 3 and metrics["train_loss"] < math.log(10) * 0.6
    # One gradient all-reduce per optimizer step (the small CNN fits one DDP bucket): the FGSM input-gradient
    # pass adds none.
    assert metrics["allreduce_calls"] == metrics["steps"] * 3
    assert 0.5 < metrics["clean_accuracy"] <= 1 and metrics["robust_accuracy"] <= metrics["clean_accuracy"]
    assert metrics["test_images"] == 500
    # 800 labels are far from 100,000 images between automatic checkpoints: Ray Train got the last epoch only (it
    # keeps two, so a checkpoint every epoch would leave two folders).
    assert len([d for d in (tmp_path / "runs" / "ddp").glob("checkpoint_*") if d.is_dir()]) == 1
    model = build(SPEC)
    model.load_state_dict(weights)
    # Each worker counted its half of the test pool per class; their sum is what one process counts on all of it,
    # so the balanced accuracy is the whole test set's, not a mean of the workers'.
    table = pool.read_columns(config.test_pool, ["image", "label"])
    x = np.stack([decode(b, ImageSpec(28, 1)) for b in table.column("image").to_pylist()])
    whole = accuracy_metrics(accuracy_counts(model, x, table.column("label").to_numpy(), 2 / 255, "cpu", 10),
                             2 / 255)
    assert {k: metrics[k] for k in whole} == pytest.approx(whole, abs=1e-9)


def test_balanced_accuracy_is_the_mean_recall_over_the_classes_the_test_set_has():
    class AlwaysZero(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0, 0.0]]).repeat(len(x), 1)

    # 90 images of class 0 and 10 of class 1; class 2 has none, so it is left out of the mean, not counted as 0.
    y = np.array([0] * 90 + [1] * 10)
    counts = accuracy_counts(AlwaysZero(), np.zeros((100, 4, 4, 1), np.uint8), y, 0.0, "cpu", 3)
    assert counts.tolist() == [[90, 0, 0], [90, 0, 0], [90, 10, 0]]
    m = accuracy_metrics(counts, 0.0)
    assert (m["clean_accuracy"], m["robust_accuracy"], m["balanced_accuracy"], m["test_images"]) == (0.9, 0.9, 0.5,
                                                                                                     100)


def test_automatic_checkpoints_cost_at_most_a_set_amount_of_training():
    from raydm2.training.ray_trainer import CHECKPOINT_IMAGES, checkpoint_every

    train = ProjectConfig(name="t", pool="p", classes=["a", "b"]).train
    assert [checkpoint_every(train, rows) for rows in (100, 2000, CHECKPOINT_IMAGES - 1, CHECKPOINT_IMAGES, 10**7)
            ] == [1000, 50, 2, 1, 1]
    assert checkpoint_every(train.model_copy(update={"checkpoint_every": 3}), 100) == 3


def fail_once_at_epoch(monkeypatch, epoch: int, marker) -> None:
    """The worker SIGKILLs itself once, right after reporting `epoch` (raydm2.training.hooks)."""
    monkeypatch.setenv("RAYDM2_TEST_FAIL_AT_EPOCH", str(epoch))
    monkeypatch.setenv("RAYDM2_TEST_FAIL_MARKER", str(marker))


def test_killed_worker_resumes_from_checkpoint(ray_cluster, sample_pools, tmp_path, monkeypatch):
    config = cfg(sample_pools, epochs=4, num_workers=1, checkpoint_every=1)
    fail_once_at_epoch(monkeypatch, 2, tmp_path / "failed-once")
    _, metrics = fit(config, labels_for(config.pool, np.arange(200)), str(tmp_path / "runs"),
                     pafs.LocalFileSystem(), "resume", TrainOptions(max_failures=1))
    assert (tmp_path / "failed-once").exists()
    # The worker dies right after reporting epoch 2: Ray Train resumes from the last checkpoint it had
    # persisted by then (epoch 2's report may die with the worker), never from scratch.
    assert metrics["resumed_from_epoch"] in (1, 2) and metrics["epoch"] == 4


def test_rerunning_a_killed_run_resumes_rather_than_restarts(ray_cluster, sample_pools, tmp_path, monkeypatch):
    config = cfg(sample_pools, epochs=3, num_workers=1, adversarial="off", checkpoint_every=1)
    labels = labels_for(config.pool, np.arange(200))
    fail_once_at_epoch(monkeypatch, 2, tmp_path / "killed")
    with pytest.raises(Exception) as failure:
        fit(config, labels, str(tmp_path / "runs"), pafs.LocalFileSystem(), "rerun", TrainOptions(max_failures=0))
    assert "worker" in str(failure.value).lower()
    _, metrics = fit(config, labels, str(tmp_path / "runs"), pafs.LocalFileSystem(), "rerun", TrainOptions())
    assert metrics["resumed_from_epoch"] in (1, 2) and metrics["epoch"] == 3


@pytest.fixture(scope="module")
def test_batch(sample_pools):
    table = pool.read_columns(sample_pools["mnist_test"], ["image", "label"]).slice(0, 128)
    x = to_tensor(np.stack([decode(b, ImageSpec(28, 1)) for b in table.column("image").to_pylist()]))
    return x, torch.from_numpy(table.column("label").to_numpy())


def test_fgsm_bounds_and_raises_loss_on_trained_model(trained_checkpoint, test_batch):
    model = checkpoint.load(trained_checkpoint, SPEC).eval()
    x, y = test_batch
    eps = 8 / 255
    adv = fgsm(model, x, y, eps)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())  # the attack leaves parameter gradients alone


def test_zero_epsilon_is_exactly_plain_training(test_batch):
    x, y = test_batch

    def one_step(loss_fn):
        torch.manual_seed(0)
        model = build(SPEC)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        loss = loss_fn(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item(), [p.detach().clone() for p in model.parameters()]

    plain_loss, plain = one_step(lambda m: F.cross_entropy(m(x), y))
    zero_loss, zero = one_step(lambda m: dm2at_loss(m, x, y, 0.0, 0.5)[0])
    assert plain_loss == zero_loss and all(torch.equal(a, b) for a, b in zip(plain, zero))
    adv_loss, adv = one_step(lambda m: dm2at_loss(m, x, y, 8 / 255, 0.5)[0])
    assert not all(torch.equal(a, b) for a, b in zip(plain, adv))


def test_epochs_use_near_equal_batches_not_a_ragged_last_one():
    from raydm2.training.epochs import even_batches

    assert [len(b) for b in even_batches(np.arange(100), 96)] == [50, 50]
    assert [len(b) for b in even_batches(np.arange(192), 96)] == [96, 96]
    assert [len(b) for b in even_batches(np.arange(200), 96)] == [67, 67, 66]
    assert even_batches(np.arange(0), 96) == []
    order = np.random.default_rng(0).permutation(250)
    assert np.array_equal(np.concatenate(even_batches(order, 64)), order)  # every row once, order kept


def test_use_gpu_on_a_cluster_without_gpus_is_refused_before_any_work(ray_cluster, sample_pools, tmp_path):
    from raydm2.errors import RayDM2Error

    config = cfg(sample_pools, use_gpu=True)
    with pytest.raises(RayDM2Error, match="train.use_gpu is true but the Ray cluster has no GPU"):
        fit(config, labels_for(config.pool, np.arange(50)), str(tmp_path / "runs"), pafs.LocalFileSystem(), "gpu")
    assert not (tmp_path / "runs").exists()
