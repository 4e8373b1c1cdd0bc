"""Self-supervised pretraining of a project's backbone on its unlabeled pool (`raydm2 pretrain`): SimCLR as a Ray
Train job. lightly supplies the augmentations, the projection head and the NT-Xent loss, whose negatives are
gathered from every worker, as SimCLR's large batches need. The result is the backbone's state dict in one file,
which `model.weights` loads as the initial weights of every round (and of `raydm2 seed --strategy typiclust`'s
features), so the first rounds start from features of the pool rather than from noise.

A re-run with the same pool, model and settings resumes from the run's last checkpoint (Ray Train V2 resumes a
`RunConfig(name, storage_path)`); other settings are another run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raydm2 import progress
from raydm2.data import pool
from raydm2.errors import RayDM2Error
from raydm2.ledger.config import PretrainSettings, ProjectConfig
from raydm2.models.registry import REGISTRY, ModelSpec, build
from raydm2.training.data import load_shard, pool_dataset, shard_refs
from raydm2.training.ray_trainer import CHECKPOINT_IMAGES, STATE_FILE, _controller_settings, _relayed, \
    _worker_resources, restored_state

# Below this size (CIFAR, MNIST) lightly's CIFAR-10 setting drops the Gaussian blur, which wipes out such images.
BLUR_MIN_SIZE = 64


@dataclass(frozen=True)
class PretrainJob:
    model: ModelSpec
    settings: PretrainSettings
    seed: int
    threads: int
    checkpoint_every: int
    shards: list


class SimCLRNet(nn.Module):
    """The project's stem and body (what `model.weights` holds) under lightly's projection head; the classifier's
    own head stays out, so DDP sees no unused parameters."""

    def __init__(self, spec: ModelSpec):
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        classifier = build(spec, initial=True)
        self.stem, self.body = classifier.stem, classifier.body
        self.projection = SimCLRProjectionHead(classifier.feature_dim, classifier.feature_dim, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.body(self.stem(x)))


def augmentation(spec: ModelSpec):
    """lightly's SimCLR views at the pool's size. Grey pools (digits, letters, documents) are not flipped, since a
    mirrored character is another character; the stem normalises, so the views stay [0,1] pixels."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(input_size=spec.image_size, hf_prob=0.5 if spec.channels == 3 else 0.0,
                           gaussian_blur=0.5 if spec.image_size >= BLUR_MIN_SIZE else 0.0, normalize=None)


def _views(transform, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    pairs = [transform(Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p)) for p in pixels]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def pretrain_loop_per_worker(loop_config: dict) -> None:
    import ray.train.torch
    from lightly.loss import NTXentLoss

    job: PretrainJob = loop_config["job"]
    s = job.settings
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(SimCLRNet(job.model))
    module = getattr(model, "module", model)
    # SimCLR's small-batch recipe as lightly's benchmarks run it: SGD with momentum, lr scaled by the global batch,
    # cosine decay over the epochs.
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr * s.batch_size / 256, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, s.epochs)
    loss_fn = NTXentLoss(temperature=s.temperature, gather_distributed=world > 1)
    start = 0
    state = restored_state(device)
    if state:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["epoch"])
    _, pixels, _ = load_shard(job.shards[rank])
    transform = augmentation(job.model)
    per_rank = max(2, s.batch_size // world)
    relay = loop_config.get("relay")
    for epoch in range(start, s.epochs):
        gen = torch.Generator().manual_seed(job.seed * 1_000_003 + epoch * 1009 + rank)
        # Every rank takes the same number of steps (DDP's all-reduces must pair up): whole batches of the
        # smallest shard's size, which `pretrain` made equal.
        order = torch.randperm(len(pixels), generator=gen).numpy()
        steps, loss_sum, started = max(1, len(order) // per_rank), 0.0, time.perf_counter()
        torch.manual_seed(job.seed * 1_000_003 + epoch * 1009 + rank)  # the augmentations' randomness
        model.train()
        for i in range(steps):
            a, b = _views(transform, pixels[order[i * per_rank:(i + 1) * per_rank]])
            # One forward over both views: one DDP pass, and BatchNorm sees the pair as SimCLR's batch.
            za, zb = model(torch.cat([a, b]).to(device)).chunk(2)
            loss = loss_fn(za, zb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
        schedule.step()
        metrics = {"epoch": epoch + 1, "ssl_loss": loss_sum / steps,
                   "images_per_s": steps * per_rank * world / (time.perf_counter() - started)}
        if relay is not None and rank == 0:
            try:
                relay.put_nowait({"epoch": epoch + 1, "epochs": s.epochs, "loss": metrics["ssl_loss"],
                                  "images_per_s": metrics["images_per_s"]})
            except Exception:  # a progress line is never worth failing a run over
                pass
        last = epoch + 1 == s.epochs
        if not last and (epoch + 1) % job.checkpoint_every:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "epoch": torch.tensor(epoch + 1)},
                           os.path.join(tmp, STATE_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


def run_name(config: ProjectConfig, settings: PretrainSettings) -> str:
    """The Ray Train run of these settings on this pool (its location and parts: an appended pool is another
    pool): the same name resumes, anything else starts afresh."""
    key = {"pool": pool.part_uris(config.pool), "model": config.model_spec().__dict__, "seed": config.seed,
           "settings": settings.model_dump(), "workers": config.train.num_workers}
    return "pretrain-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def check(config: ProjectConfig) -> None:
    """What is refused before any work: a missing pool, a model pretrain does not train, lightly missing."""
    from raydm2.models.libraries import is_library

    pool.pool_info(config.pool)
    spec = config.model_spec()
    if spec.factory or is_library(spec.arch):
        # A library body would learn under raydm2's own normalisation but be loaded from a file with ImageNet's.
        raise RayDM2Error(f"raydm2 pretrain trains the built-in models ({', '.join(sorted(REGISTRY))}); "
                          f"{spec.arch!r} starts from its library's pretrained weights (model.weights)")
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise RayDM2Error("raydm2 pretrain needs lightly: pip install 'raydm2[ssl]'") from None


def pretrain(config: ProjectConfig, settings: PretrainSettings, out: str, storage_path: str) -> dict:
    """SimCLR on every image of `config.pool`; writes the backbone's state dict (the body's own keys, what
    `model.weights` loads) to `out` atomically and returns the final metrics."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray.util.queue import Queue

    from raydm2.training import hooks

    check(config)
    spec = config.model_spec()
    tc = config.train
    resources, threads = _worker_resources(tc)
    relay = Queue(actor_options={"num_cpus": 0})
    images = pool_dataset(config).materialize()
    rows = images.count()
    if rows < 2 * tc.num_workers:
        raise RayDM2Error(f"pool {config.pool!r} has {rows} decodable images: too few to pretrain on")
    job = PretrainJob(model=spec, settings=settings, seed=config.seed, threads=threads,
                      checkpoint_every=max(1, math.ceil(CHECKPOINT_IMAGES / rows)),
                      shards=shard_refs(images, tc.num_workers))
    trainer = TorchTrainer(
        pretrain_loop_per_worker, train_loop_config={"job": job, "relay": relay},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=run_name(config, settings), storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=2),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": hooks.environment()}))
    done, epochs_done = threading.Event(), [0]
    relaying = threading.Thread(target=_relayed, args=(relay, done, epochs_done), name="raydm2-epochs", daemon=True)
    relaying.start()
    try:
        with progress.counting("pretrain_s", settings.epochs, lambda: epochs_done[0], unit="epochs"), \
                _controller_settings():
            result = trainer.fit()
    finally:
        done.set()
        relaying.join(timeout=10)
        relay.shutdown()
    if result.error:
        raise RayDM2Error(f"pretraining failed: {result.error}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)["model"]
    body = {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save(body, out + ".tmp")
    os.replace(out + ".tmp", out)
    return {**dict(result.metrics), "images": rows}
