"""DM2-AT training on Ray Train (SPEC section 4): TorchTrainer, DDP via `prepare_model`, clean + FGSM loss,
a checkpoint every `checkpoint_every` epochs (by default every epoch once 100,000 images are trained between two;
smaller rounds checkpoint at the end), automatic resume, and clean/robust evaluation on the test pool."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.util.queue import Queue

from raydm2 import progress
from raydm2.errors import RayDM2Error
from raydm2.ledger.config import ProjectConfig, TrainConfig
from raydm2.models.registry import ModelSpec, build
from raydm2.runtime import started_local
from raydm2.training import hooks
from raydm2.training.data import labeled_dataset, load_shard, shard_refs, test_dataset
from raydm2.training.epochs import accuracy_counts, accuracy_metrics, make_optimizer, train_epochs

STATE_FILE = "state.pt"
# Images trained between two automatic checkpoints: a restart repeats at most this much work, and a round of a few
# hundred labels does not pay a checkpoint (and Ray Train's report, which waits for its controller's next poll,
# 2 s) every epoch.
CHECKPOINT_IMAGES = 100_000


def checkpoint_every(cfg: TrainConfig, rows: int) -> int:
    """Epochs between checkpoints: `train.checkpoint_every`, or enough epochs for `CHECKPOINT_IMAGES`."""
    return cfg.checkpoint_every or max(1, -(-CHECKPOINT_IMAGES // max(rows, 1)))


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs, validated on the driver."""

    model: ModelSpec
    train: TrainConfig
    seed: int
    threads: int
    checkpoint_every: int
    shards: dict  # dataset name -> each rank's block refs (`data.shard_refs`)


class _AllReduceCount:
    calls = 0


def _counting_allreduce(state: _AllReduceCount, bucket):
    """DDP comm hook: counts gradient all-reduces, then does the default one. Lets tests prove the FGSM
    input-gradient pass never triggers DDP communication."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state.calls += 1
    return allreduce_hook(None, bucket)


def restored_state(device) -> dict | None:
    """The state a restarted or re-run worker resumes from (the run's latest checkpoint), or None."""
    restored = ray.train.get_checkpoint()
    if not restored:
        return None
    with restored.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train.torch

    job: TrainJob = loop_config["job"]
    cfg = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)  # same initial weights on every rank (DDP also broadcasts them)
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(build(job.model, initial=True))
    counter = _AllReduceCount()
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model.register_comm_hook(counter, _counting_allreduce)
    module = getattr(model, "module", model)
    optimizer = make_optimizer(model, cfg)

    start_epoch = 0
    resumed_from = None
    state = restored_state(device)
    if state:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = resumed_from = int(state["epoch"])

    ids, x_all, y_all = load_shard(job.shards["train"][rank])
    hooks.shard_loaded(rank, ids)

    relay = loop_config.get("relay")

    def report(epoch: int, metrics: dict) -> None:
        metrics = {**metrics, "allreduce_calls": counter.calls, "resumed_from_epoch": resumed_from}
        if relay is not None and rank == 0:
            try:
                relay.put_nowait({"epoch": epoch + 1, "epochs": cfg.epochs, "loss": metrics.get("train_loss"),
                                  "images_per_s": metrics.get("images_per_s")})
            except Exception:  # a progress line is never worth failing a training run over
                pass
        last = epoch + 1 == cfg.epochs
        if not last and (epoch + 1) % job.checkpoint_every:
            return  # the relay has the epoch's figures; Ray Train gets checkpoints only
        if last and "test" in job.shards:
            # Evaluated before the final report so the metrics travel with the final checkpoint.
            metrics.update(_evaluate(model, cfg.epsilon, device, world, job.shards["test"][rank],
                                      job.model.num_classes))
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                            "epoch": torch.tensor(epoch + 1)}, os.path.join(tmp, STATE_FILE))
            ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
            ray.train.report(metrics, checkpoint=ckpt)
        hooks.epoch_reported(epoch + 1)

    train_epochs(model, optimizer, x_all, y_all, cfg, job.seed, rank, device, job.model.channels == 3, start_epoch,
                 report)


def _evaluate(model, epsilon: float, device, world: int, shard: list, num_classes: int) -> dict:
    _, x_test, y_test = load_shard(shard)
    counts = torch.from_numpy(accuracy_counts(model, x_test, y_test, epsilon, device, num_classes))
    if world > 1:
        torch.distributed.all_reduce(counts)
    return accuracy_metrics(counts.numpy(), epsilon)


# ---- the driver side -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainOptions:
    max_failures: int = 2


def _relayed(relay, done: threading.Event, epochs_done: list[int]) -> None:
    """Turn rank 0's epoch messages into progress notes (and `epochs_done[0]`, for the live line) until training is
    done and the queue is drained."""
    from ray.util.queue import Empty

    while True:
        try:
            m = relay.get(timeout=0.5)
        except Empty:
            if done.is_set():
                return
            continue
        epochs_done[0] = m["epoch"]
        loss = f"train loss {m['loss']:.3f}, " if m.get("loss") is not None else ""
        progress.note(f"epoch {m['epoch']}/{m['epochs']}: {loss}{m.get('images_per_s') or 0:,.0f} images/s")


@contextmanager
def _controller_settings() -> Iterator[None]:
    """Ray Train's controller polls its workers every 2 s by default, and a small round waits for that poll twice
    (its checkpoint's report, its end): poll every 0.5 s unless the user set the interval. The embedded local
    cluster is never preempted: no preemption-watcher actor there (one process fewer to start). Ray Train passes
    these variables from the driver's environment to its controller when `fit` starts."""
    wanted = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    if started_local():
        wanted["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    saved = {name: os.environ.get(name) for name in wanted}
    for name, value in wanted.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    if tc.use_gpu and not ray.cluster_resources().get("GPU") and started_local():
        # A real cluster may have GPU nodes still to come (autoscaling): Ray Train's GPU request starts them.
        raise RayDM2Error("train.use_gpu is true but the Ray cluster has no GPU")
    resources, threads = _worker_resources(tc)
    # Rank 0 tells the driver each finished epoch through a queue (an actor needing no CPU), so the driver can
    # say how training goes while Ray Train's own per-report lines stay off. Made first: its process starts while
    # the data loads.
    relay = Queue(actor_options={"num_cpus": 0})
    # Materialised before the workers start: the decode tasks need CPUs the workers would otherwise hold; and a
    # restarted worker group then re-reads the same blocks instead of re-running the reads.
    train = labeled_dataset(config, labels, counterpart_uris).materialize()
    shards = {"train": shard_refs(train, tc.num_workers)}
    test = test_dataset(config)
    if test is not None:
        shards["test"] = shard_refs(test.materialize(), tc.num_workers)
    job = TrainJob(model=config.model_spec(), train=tc, seed=config.seed, threads=threads,
                   checkpoint_every=checkpoint_every(tc, train.count()), shards=shards)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "relay": relay},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": hooks.environment()},
        ),
    )
    done, epochs_done = threading.Event(), [0]
    relaying = threading.Thread(target=_relayed, args=(relay, done, epochs_done), name="raydm2-epochs", daemon=True)
    relaying.start()
    try:
        with progress.counting("train_s", tc.epochs, lambda: epochs_done[0], unit="epochs"), _controller_settings():
            result = trainer.fit()
    finally:
        done.set()
        relaying.join(timeout=10)
        relay.shutdown()
    if result.error:
        raise RayDM2Error(f"training failed: {result.error}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    return state["model"], dict(result.metrics)
