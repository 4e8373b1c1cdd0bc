"""Round orchestration over the ledger: create a project, seed it, label, train, acquire, re-query.

Each step takes the project lock, moves the round through its states and records counts and timings, so an
interrupted step leaves the round in a state from which re-running the same step is safe.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from raydm2 import progress
from raydm2.data import pool
from raydm2.errors import RayDM2Error
from raydm2.acquisition.hashing import PURPOSE_SEED, uniform
from raydm2.ledger.config import ProjectConfig
from raydm2.ledger.project import Project
from raydm2.acquisition.topk import TopK


def typiclust_seed_request(config: ProjectConfig, features: str, n: int):
    """The acquisition that picks a TypiClust round 0 of `n` images: the initial model (its weights, or a seeded
    random init) saved at `features`, where the round keeps it so the seed can be explained and repeated."""
    import torch

    from raydm2.acquisition import strategies
    from raydm2.acquisition.request import AcquireRequest
    from raydm2.models import checkpoint
    from raydm2.models.registry import build

    spec = config.model_spec()
    torch.manual_seed(config.seed)
    checkpoint.save(build(spec, initial=True), spec, features)
    return AcquireRequest(pool=config.pool, model=spec, checkpoint=features, round=0, seed=config.seed,
                          settings=strategies.get("typiclust").settings(budget=n), image=config.image_spec())


def _seed_by_typicality(project: Project, n: int) -> pa.Table:
    from raydm2 import acquisition

    project.new_round(0, strategy="typiclust")
    try:
        request = typiclust_seed_request(project.config, project.round_dir(0).join("seed_features").uri, n)
        project.update(0, state="acquiring", checkpoint=request.checkpoint)
        progress.note(f"seeding round 0 with typiclust: {n} clusters of the initial model's features")
        connect(project)
        started = time.perf_counter()
        result = acquisition.acquire(request, acquire_options(project.config))
    except BaseException:
        project.discard_round(0)
        raise
    project.write_selection(0, result.selection)
    project.update(0, state="selected", counts=result.counts,
                   timings={**result.timings, "total_s": round(time.perf_counter() - started, 4)})
    return result.selection


def connect(project: Project) -> None:
    """Join or start the cluster, shipping the module of the project's own model (if any) to its workers."""
    from raydm2 import runtime
    from raydm2.models import libraries

    if project.config.model.factory:
        libraries.factory(project.config.model.factory)
    runtime.connect()


def create_project(uri: str, config: ProjectConfig) -> Project:
    """A new project at `uri`, after checking that its pools exist, have the pool columns and unique ids, and
    that its model can take the project's images."""
    from raydm2.models.registry import check

    for pool_uri in filter(None, (config.pool, config.test_pool)):
        pool.pool_info(pool_uri)
    check(config.model_spec())
    return Project.create(uri, config)


def label(project: Project, ids=None, labels=None, file: str | None = None, fmt: str | None = None,
          oracle: bool = False, round_: int | None = None, allow_unselected: bool = False,
          from_name: str = "label") -> dict:
    """Import labels into round `round_` (default: the latest round waiting for them), from exactly one of: arrays
    `ids` and `labels` (class indices), a label `file` (CSV, JSONL or Label Studio export; `fmt` or the extension
    says which; `from_name` names a Label Studio project's Choices tag), or the pool's ground truth (`oracle`, for
    simulations). Returns the round and its label counts (and what a Label Studio export left out)."""
    from raydm2.ledger import exchange
    from raydm2.ledger import labels as ledger_labels

    if sum((ids is not None, file is not None, bool(oracle))) != 1:
        raise RayDM2Error("give exactly one source of labels: ids and labels, a file, or the oracle")
    n = round_ if round_ is not None else project.latest_in_state("selected", "exported", "labeled")
    if n is None:
        raise RayDM2Error("no round is waiting for labels")
    left_out = {}
    if oracle:
        ids, labels = ledger_labels.oracle(project, n)
    elif file is not None:
        parsed = exchange.parse(file, project.config.classes, fmt, from_name)
        ids, labels = parsed.ids, parsed.labels
        left_out = {"cancelled": parsed.cancelled, "unannotated": parsed.unannotated}
    result = ledger_labels.import_labels(project, n, ids, labels, allow_unselected=allow_unselected)
    return {"round": n, **result, **left_out}


def seed_scores(ids: np.ndarray, seed: int, salt: int) -> pa.Table:
    """(id, score): the hash of (seed, salt, id) that ranks pool images for the random round 0."""
    return pa.table({"id": ids, "score": uniform(ids, seed, salt, PURPOSE_SEED)})


def seed_candidates(project: Project, n: int, salt: int = 0) -> tuple[pa.Table, int]:
    """The `n` pool ids with the highest `seed_scores`, best first, and the pool's row count.
    Streams the id column so memory stays O(n) for any pool size."""
    best = TopK(n)
    rows = 0
    for batch in pool.iter_batches(project.config.pool, ["id"]):
        ids = batch.column(0).to_numpy()
        rows += len(ids)
        best.push(seed_scores(ids, project.config.seed, salt))
    return best.result(), rows


SEED_STRATEGIES = ("random", "typiclust")


def seed(project: Project, n: int, salt: int = 0, strategy: str = "random") -> pa.Table:
    """Round 0: `n` pool images picked uniformly at random, as a pure function of (seed, salt, id); or with
    `strategy="typiclust"`, the most typical image of each of `n` clusters of the initial model's features (worth
    it when `model.weights` gives a pretrained backbone)."""
    if n <= 0:
        raise RayDM2Error(f"seed size must be positive, got {n}")
    if strategy not in SEED_STRATEGIES:
        raise RayDM2Error(f"unknown seed strategy {strategy!r}; choose {' or '.join(SEED_STRATEGIES)}")
    with project.writing():
        if project.has_round(0):
            raise RayDM2Error(
                f"round 0 already exists (state {project.manifest(0)['state']!r}); the project is already seeded"
            )
        if strategy == "typiclust":
            return _seed_by_typicality(project, n)
        started = time.perf_counter()
        chosen, rows = seed_candidates(project, n, salt)
        if rows == 0:
            raise RayDM2Error(f"pool {project.config.pool!r} is empty")
        if n > rows:
            raise RayDM2Error(f"seed size {n} is larger than the pool ({rows} images)")
        selection = pa.table(
            {
                "id": chosen.column("id"),
                "rank": pa.array(np.arange(chosen.num_rows, dtype=np.int32)),
                "score": chosen.column("score"),
            }
        )
        # The ledger is touched only once the selection exists, so a refused seed leaves no round behind.
        project.new_round(0, strategy="random")
        project.update(0, state="acquiring")
        project.write_selection(0, selection)
        project.update(
            0,
            state="selected",
            counts={"pool_rows": rows, "selected": selection.num_rows, "seed_salt": salt},
            timings={"select_s": round(time.perf_counter() - started, 4)},
        )
    return selection


def train(project: Project, round_: int | None = None, opts=None) -> dict:
    """Train on every label up to round n (default: the latest labeled round); the weights become round n's
    checkpoint, which the next acquisition loads. Re-running a killed training of the same round resumes it."""
    from raydm2.models import checkpoint
    from raydm2.models.registry import build
    from raydm2.training import counterparts
    from raydm2.training import ray_trainer as train_mod

    opts = opts or train_mod.TrainOptions()
    with project.writing():
        n = round_ if round_ is not None else project.latest_in_state("labeled", "trained")
        if n is None:
            raise RayDM2Error("no labeled round to train on: import labels first (`raydm2 label`)")
        state = project.manifest(n)["state"]
        if state not in ("labeled", "trained"):
            raise RayDM2Error(f"round {n} is {state!r}; train needs its labels imported first")
        labels = project.all_labels(upto=n)
        extra = counterparts.uris(project, n) if project.config.train.adversarial == "selection" else []
        cfg = project.config.train
        progress.note(f"training round {n} on {labels.num_rows} labels: {cfg.epochs} epochs, {cfg.num_workers} "
                      f"worker{'s' if cfg.num_workers > 1 else ''} (Ray Train)")
        connect(project)
        started = time.perf_counter()
        storage = project.loc.join("train_runs")
        weights, metrics = train_mod.fit(project.config, labels, storage.path, storage.fs, f"round-{n:04d}", opts,
                                         counterpart_uris=extra)
        spec = project.config.model_spec()
        model = build(spec)
        model.load_state_dict(weights)
        checkpoint.save(model, spec, project.checkpoint_dir(n),
                        extra={"round": n, "config_hash": project.config.hash(), "labels": labels.num_rows})
        keep = ("clean_accuracy", "robust_accuracy", "balanced_accuracy", "train_loss", "images_per_s", "epoch", "test_images",
                "eval_epsilon", "train_rows")
        project.update(
            n,
            state="trained",
            metrics={k: metrics[k] for k in keep if k in metrics},
            counts={"labels_trained_on": labels.num_rows, "counterpart_files": len(extra)},
            timings={"train_s": round(time.perf_counter() - started, 4)},
        )
    return metrics


def acquire_options(config: ProjectConfig, actors: int | None = None, batch_size: int | None = None):
    """The actor pool of project.yaml's `compute` section; `actors` and `batch_size` override it for one run."""
    from raydm2.acquisition import AcquireOptions

    c = config.compute
    return AcquireOptions(actors=actors or c.actors, batch_size=batch_size or c.batch_size, use_gpu=c.use_gpu)


def acquire(project: Project, opts=None) -> pa.Table:
    """Select round t+1 with the checkpoint of the latest trained round t. A round left in `acquiring` by a
    crash is re-run from scratch; its result is the same because the selection is deterministic."""
    from raydm2 import acquisition
    from raydm2.models import checkpoint
    from raydm2.training import counterparts

    strategy = project.config.strategy
    with project.writing():
        t = project.latest_in_state("trained")
        if t is None:
            raise RayDM2Error("no trained round yet: train on the seed labels first (`raydm2 train`)")
        n = t + 1
        ckpt = project.checkpoint_dir(t)
        # A checkpoint that does not fit the project is refused before the ledger is touched.
        checkpoint.load(ckpt, project.config.model_spec())
        resuming = project.has_round(n)
        if resuming:
            state = project.manifest(n)["state"]
            if state != "acquiring":
                raise RayDM2Error(f"round {n} is already {state!r}; label and train it before acquiring again")
        else:
            project.new_round(n, strategy=strategy.name)
        project.update(n, state="acquiring", checkpoint=ckpt.uri)
        excluded = project.selected_ids(before=n)
        progress.note(f"selecting round {n} with {strategy.name} (budget {strategy.budget}), model of round {t}")
        connect(project)
        started = time.perf_counter()
        cache = project.embedding_cache(checkpoint.fingerprint(ckpt, project.config.model.freeze_backbone))
        try:
            request = project.config.acquire_request(ckpt.uri, n, excluded, project.all_labels(upto=t), cache)
            result = acquisition.acquire(request, opts or acquire_options(project.config))
        except RayDM2Error:
            # Refused (a diverged model, nothing left to select): leave no half-started round behind. A crash
            # never gets here, and its re-run resumes the round instead.
            if not resuming:
                project.discard_round(n)
            raise
        project.write_selection(n, result.selection)
        if project.config.train.adversarial == "selection":
            result.counts["adversarial_counterparts"] = counterparts.make(project, n, ckpt.uri)
        project.update(
            n,
            state="selected",
            counts=result.counts,
            timings={**result.timings, "total_s": round(time.perf_counter() - started, 4)},
            index=result.index,
            warnings=result.warnings,
        )
    return result.selection


def requery(project: Project, opts=None) -> tuple[pa.Table, str]:
    """Score the current pool (images appended since the last round included) with the latest checkpoint and
    write a ranked selection under `requeries/`, without creating a round or training. Embeddings of images
    already embedded with the same weights come from the cache. The hash round is the next round's, so with
    an unchanged pool a requery ranks exactly what the next acquisition would select."""
    from raydm2 import acquisition
    from raydm2.models import checkpoint

    with project.writing():
        t = project.latest_in_state("trained")
        if t is None:
            raise RayDM2Error("no trained round yet: a requery needs a checkpoint")
        ckpt = project.checkpoint_dir(t)
        connect(project)
        started = time.perf_counter()
        request = project.config.acquire_request(ckpt.uri, t + 1, project.selected_ids(), project.all_labels(upto=t),
                                                 project.embedding_cache(checkpoint.fingerprint(ckpt, project.config.model.freeze_backbone)))
        result = acquisition.acquire(request, opts or acquire_options(project.config))
        out = project.requery_dir(f"{t:04d}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
        out.join("selection.parquet").write_table(result.selection)
        out.join("manifest.json").write_json({
            "checkpoint_round": t, "checkpoint": ckpt.uri, "strategy": project.config.strategy.name,
            "config_hash": project.config.hash(), "counts": result.counts, "index": result.index,
            "timings": {**result.timings, "total_s": round(time.perf_counter() - started, 4)},
            "warnings": result.warnings, "created_at": time.time(),
        })
    return result.selection, out.uri
