"""DM2-AT training on Ray Train (SPEC section 4): TorchTrainer, DDP via `prepare_model`, clean + FGSM loss,
a checkpoint every `checkpoint_every` epochs, automatic resume, and clean/robust evaluation on the test pool.

Data: the pool is filtered to the labeled ids through Ray Data and decoded there; each worker takes its shard
with `get_dataset_shard` and keeps it in memory, since a labeled set is small by construction (it is the
labeling budget) and re-streaming it every epoch would cost more than the training step itself.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch
import torch.nn.functional as F

from raydm2 import pool
from raydm2.config import ProjectConfig, TrainConfig
from raydm2.dm2 import to_tensor
from raydm2.embed import decode_batch
from raydm2.errors import RayDM2Error
from raydm2.fgsm import dm2at_loss, fgsm
from raydm2.models import ModelSpec, build, select_device, spec_from_config

STATE_FILE = "state.pt"
FAULT_POLL_GRACE_S = 5.0  # tests' injected worker death: seconds for the controller to collect queued reports


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs, validated on the driver. The last three fields exist for tests only."""

    model: ModelSpec
    train: TrainConfig
    seed: int
    threads: int
    fail_once_at_epoch: int | None = None
    fail_marker: str | None = None
    shard_log_dir: str | None = None


# ---- data ----------------------------------------------------------------------------------------------------
def labeled_dataset(config: ProjectConfig, labels: pa.Table, counterpart_uris: list[str] = ()) -> ray.data.Dataset:
    """(pixels, label) rows for the labeled ids: the pool filtered to those ids with their labels attached in
    CPU tasks (the labels travel as one shared ObjectRef), then decoded; plus the stored Algorithm 2
    counterparts (pseudo-labeled adversarial images) when given. A labeled set is budget-sized, so a filter
    beats a hash join, whose shuffle actors cost seconds on every training."""
    if labels.num_rows == 0:
        raise RayDM2Error("no labels to train on: import labels first")
    table = labels.select(["id", "label"]).sort_by("id")
    ref = [ray.put((table.column("id").to_numpy(), table.column("label").to_numpy().astype(np.int64)))]
    images = ray.data.read_parquet(pool.part_uris(config.pool)).select_columns(["id", "image"])
    joined = images.map_batches(_attach_labels, fn_kwargs={"labels": ref}, batch_format="numpy", num_cpus=0.25)
    if counterpart_uris:
        joined = joined.union(ray.data.read_parquet(list(counterpart_uris)).select_columns(["id", "image", "label"]))
    return _decode_with_labels(joined, config)


def _attach_labels(batch: dict, labels: list) -> dict:
    """Keep the rows whose id has a label and add it; `labels[0]` is the ObjectRef of (sorted ids, labels)."""
    ids, values = ray.get(labels[0])
    pos = np.minimum(np.searchsorted(ids, batch["id"]), len(ids) - 1)  # labels are never empty here
    keep = ids[pos] == batch["id"]
    return {"id": batch["id"][keep], "image": batch["image"][keep], "label": values[pos[keep]]}


def test_dataset(config: ProjectConfig) -> ray.data.Dataset | None:
    if not config.test_pool:
        return None
    info = pool.pool_info(config.test_pool)
    if not info.has_labels:
        raise RayDM2Error(f"test pool {config.test_pool!r} has no label column")
    ds = ray.data.read_parquet(pool.part_uris(config.test_pool)).select_columns(["id", "image", "label"])
    return _decode_with_labels(ds, config)


def _decode_with_labels(ds: ray.data.Dataset, config: ProjectConfig) -> ray.data.Dataset:
    def decode_keep_label(batch):
        out = decode_batch(batch, config.image.size, config.image.channels)
        ok = out["ok"].astype(bool)
        return {"id": out["id"][ok], "pixels": out["pixels"][ok], "label": batch["label"][ok].astype(np.int64)}

    return ds.map_batches(decode_keep_label, batch_format="numpy", num_cpus=0.5)


def _load_shard(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shard = ray.train.get_dataset_shard(name)
    ids, xs, ys = [], [], []
    for b in shard.iter_batches(batch_format="numpy", batch_size=4096):
        ids.append(b["id"])
        xs.append(b["pixels"])
        ys.append(b["label"])
    if not ids:
        return np.empty(0, np.int64), np.empty((0,), np.uint8), np.empty(0, np.int64)
    order = np.argsort(np.concatenate(ids), kind="stable")  # shard content, not arrival order, decides
    return np.concatenate(ids)[order], np.concatenate(xs)[order], np.concatenate(ys)[order]


# ---- the per-worker loop -------------------------------------------------------------------------------------
def augment(x: torch.Tensor, gen: torch.Generator, rgb: bool) -> torch.Tensor:
    """Random crop (pad 4 for RGB, 2 for grey) plus horizontal flip for RGB; deterministic given `gen`."""
    pad = 4 if rgb else 2
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if rgb:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class _AllReduceCount:
    calls = 0


def _counting_allreduce(state: _AllReduceCount, bucket):
    """DDP comm hook: counts gradient all-reduces, then does the default one. Lets tests prove the FGSM
    input-gradient pass never triggers DDP communication."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state.calls += 1
    return allreduce_hook(None, bucket)


@torch.no_grad()
def _accuracy_counts(model, x: np.ndarray, y: np.ndarray, epsilon: float, device) -> tuple[int, int, int]:
    """(clean correct, FGSM-robust correct, n) in eval mode; the attack itself needs gradients."""
    module = getattr(model, "module", model)
    module.eval()
    clean = robust = 0
    for s in range(0, len(y), 512):
        xb = to_tensor(x[s:s + 512]).to(device)
        yb = torch.from_numpy(y[s:s + 512]).to(device)
        clean += int((module(xb).argmax(1) == yb).sum())
        with torch.enable_grad():
            adv = fgsm(module, xb, yb, epsilon) if epsilon > 0 else xb
        robust += int((module(adv).argmax(1) == yb).sum())
    module.train()
    return clean, robust, len(y)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train.torch

    job: TrainJob = loop_config["job"]
    cfg = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)  # same initial weights on every rank (DDP also broadcasts them)
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(build(job.model))
    counter = _AllReduceCount()
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model.register_comm_hook(counter, _counting_allreduce)
    module = getattr(model, "module", model)
    optimizer = _optimizer(model, cfg)

    start_epoch = 0
    resumed_from = None
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = resumed_from = int(state["epoch"])

    ids, x_all, y_all = _load_shard("train")
    if job.shard_log_dir:
        np.save(os.path.join(job.shard_log_dir, f"rank{rank}.npy"), ids)

    def report(epoch: int, metrics: dict) -> None:
        metrics = {**metrics, "allreduce_calls": counter.calls, "resumed_from_epoch": resumed_from}
        last = epoch + 1 == cfg.epochs
        if last and "test" in loop_config["datasets"]:
            # Evaluated before the final report so the metrics travel with the final checkpoint.
            metrics.update(_evaluate(model, cfg.epsilon, device, world))
        if last or (epoch + 1) % cfg.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                                "epoch": torch.tensor(epoch + 1)}, os.path.join(tmp, STATE_FILE))
                ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
                ray.train.report(metrics, checkpoint=ckpt)
        else:
            ray.train.report(metrics)
        if job.fail_once_at_epoch == epoch + 1 and job.fail_marker and not os.path.exists(job.fail_marker):
            open(job.fail_marker, "w").close()
            # The controller collects reports when it polls the workers; on 2 busy cores a kill right after
            # report() could land before the poll that records epoch 1's checkpoint, and the injected fault would
            # then test a crash with no checkpoint at all. Waiting out a few polls keeps it a crash after one.
            time.sleep(FAULT_POLL_GRACE_S)
            os.kill(os.getpid(), signal.SIGKILL)  # a real worker death, not an exception Ray could report

    train_epochs(model, optimizer, x_all, y_all, cfg, job.seed, rank, device, job.model.channels == 3, start_epoch,
                 report)


def even_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`order` cut into ceil(n / batch_size) batches of near-equal size. A ragged last batch of a few images
    (100 labels at batch 96 leaves 4) still gets a full-size Adam step, and when it is the epoch's last step the
    model ends on it: the MNIST protocol's accuracy fell by 10-30 points at exactly those label counts."""
    steps = -(-len(order) // batch_size)
    return np.array_split(order, steps) if steps else []


def train_epochs(model, optimizer, x_all: np.ndarray, y_all: np.ndarray, cfg: TrainConfig, seed: int, rank: int,
                 device, rgb: bool, start_epoch: int, after_epoch) -> None:
    """Epochs `start_epoch`..`cfg.epochs` of DM2-AT on (x_all, y_all); `after_epoch(epoch, metrics)` follows
    each one. Shared by the Ray Train worker and `fit_in_process`, so both train identically."""
    for epoch in range(start_epoch, cfg.epochs):
        # The epoch's randomness depends only on (seed, epoch, rank), so a resumed run repeats it exactly.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
        perm = torch.randperm(len(y_all), generator=gen).numpy()
        model.train()
        started, seen, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        for idx in even_batches(perm, cfg.batch_size):
            xb = to_tensor(x_all[idx])
            if cfg.augment:
                xb = augment(xb, gen, rgb)
            xb, yb = xb.to(device), torch.from_numpy(y_all[idx]).to(device)
            eps = cfg.epsilon if cfg.adversarial == "online" else 0.0
            loss, _ = dm2at_loss(model, xb, yb, eps, cfg.adv_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            steps += 1
        elapsed = time.perf_counter() - started
        after_epoch(epoch, {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "images_per_s": seen / max(elapsed, 1e-9),
            "steps": steps,
            "train_rows": int(len(y_all)),
        })


def fit_in_process(config: ProjectConfig, x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None = None,
                   y_test: np.ndarray | None = None) -> tuple[dict, dict]:
    """What `fit` computes with one worker, without Ray Train: (state dict, final metrics). Rows must be sorted
    by id, as a worker's shard is. No checkpoints between epochs: this is for simulations of many small rounds
    (`raydm2 simulate --engine local`), where Ray Train's start-up would cost more than the training."""
    cfg = config.train
    if cfg.adversarial == "selection":
        raise RayDM2Error("train.adversarial 'selection' needs stored counterparts: use the ray engine")
    torch.manual_seed(config.seed)
    device = select_device(cfg.use_gpu)
    model = build(spec_from_config(config)).to(device)
    optimizer = _optimizer(model, cfg)
    metrics: dict = {}
    train_epochs(model, optimizer, x, y.astype(np.int64), cfg, config.seed, 0, device, config.image.channels == 3, 0,
                 lambda _, m: metrics.update(m))
    if x_test is not None:
        counts = _accuracy_counts(model, x_test, y_test.astype(np.int64), cfg.epsilon, device)
        metrics.update(_accuracy_metrics(*counts, cfg.epsilon))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics


def _evaluate(model, epsilon: float, device, world: int) -> dict:
    _, x_test, y_test = _load_shard("test")
    counts = torch.tensor(_accuracy_counts(model, x_test, y_test, epsilon, device), dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(counts)
    return _accuracy_metrics(*counts.tolist(), epsilon)


def _accuracy_metrics(clean: float, robust: float, n: float, epsilon: float) -> dict:
    return {"clean_accuracy": clean / max(n, 1), "robust_accuracy": robust / max(n, 1), "test_images": int(n),
            "eval_epsilon": epsilon}


# ---- the driver side -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainOptions:
    max_failures: int = 2
    fail_once_at_epoch: int | None = None  # tests: the worker SIGKILLs itself once after this epoch's checkpoint
    fail_marker: str | None = None
    shard_log_dir: str | None = None  # tests: each rank writes the ids of its shard here


def _worker_resources(cfg: TrainConfig) -> tuple[dict, int]:
    """CPU per worker and torch threads. On CPU the workers leave a CPU for Ray Data's tasks that feed them
    (workers holding every CPU starve the data pipeline and training hangs)."""
    free = float(ray.available_resources().get("CPU", 1.0))
    if cfg.use_gpu:
        return {"CPU": 1, "GPU": 1}, 1
    per_worker = max(0.1, np.floor(max(free - 1.0, 0.5) / cfg.num_workers * 100) / 100)
    return {"CPU": float(per_worker)}, max(1, int(free // cfg.num_workers))


def fit(config: ProjectConfig, labels: pa.Table, storage_path: str, storage_fs, run_name: str,
        opts: TrainOptions = TrainOptions(), counterpart_uris: list[str] = ()) -> tuple[dict, dict]:
    """Train on the labeled rows; returns (state dict of the final model, final metrics).

    Re-running with the same `run_name` and storage resumes from the run's latest checkpoint (Ray Train V2).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = config.train
    if tc.use_gpu and not ray.cluster_resources().get("GPU"):
        raise RayDM2Error("train.use_gpu is true but the Ray cluster has no GPU")
    resources, threads = _worker_resources(tc)
    job = TrainJob(model=spec_from_config(config), train=tc, seed=config.seed, threads=threads,
                   fail_once_at_epoch=opts.fail_once_at_epoch, fail_marker=opts.fail_marker,
                   shard_log_dir=opts.shard_log_dir)
    # Materialised before the workers start: the join's shuffle tasks each need a whole CPU, which the workers
    # would otherwise hold; and a restarted worker group then re-reads blocks instead of re-running the join.
    datasets = {"train": labeled_dataset(config, labels, counterpart_uris).materialize()}
    test = test_dataset(config)
    if test is not None:
        datasets["test"] = test.materialize()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "datasets": sorted(datasets)},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.error:
        raise RayDM2Error(f"training failed: {result.error}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    return state["model"], dict(result.metrics)
