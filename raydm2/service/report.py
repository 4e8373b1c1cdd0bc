"""`raydm2 report`: PNG plots of a project's rounds.

- accuracy.png: clean and FGSM-robust test accuracy against the number of labels trained on;
- stages.png: seconds per pipeline stage per round (stacked);
- map_round_N.png: a 2-D PCA map of a seeded sample of pool embeddings (the checkpoint the round was selected
  with), with that round's selection highlighted.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from raydm2.acquisition.hashing import PURPOSE_SUBSET, uniform  # noqa: E402
from raydm2.acquisition.topk import TopK  # noqa: E402
from raydm2.data import pool  # noqa: E402
from raydm2.data.images import UndecodableImage, decode, to_tensor  # noqa: E402
from raydm2.errors import RayDM2Error  # noqa: E402
from raydm2.ledger.project import Project  # noqa: E402
from raydm2.models import checkpoint  # noqa: E402

MAP_SAMPLE = 2000


def accuracy_plot(project: Project, out: str) -> str | None:
    rows = [(m["counts"].get("labels_trained_on"), m["metrics"].get("clean_accuracy"), m["metrics"].get("robust_accuracy"))
            for m in map(project.manifest, project.round_ids())]
    rows = [r for r in rows if r[0] is not None and r[1] is not None]
    if not rows:
        return None
    labels, clean, robust = zip(*rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(labels, clean, "o-", label="clean")
    ax.plot(labels, robust, "s--", label="FGSM-robust")
    ax.set(xlabel="labels", ylabel="test accuracy", title=f"{project.config.name}: accuracy vs labels")
    ax.legend()
    ax.grid(alpha=0.3)
    path = os.path.join(out, "accuracy.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def stages_plot(project: Project, out: str) -> str | None:
    timings = {n: {k: v for k, v in project.manifest(n)["timings"].items() if k != "total_s"}
               for n in project.round_ids()}
    stages = sorted({k for t in timings.values() for k in t})
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = np.zeros(len(timings))
    for stage in stages:
        values = np.array([t.get(stage, 0.0) for t in timings.values()])
        ax.bar([str(n) for n in timings], values, bottom=bottom, label=stage)
        bottom += values
    ax.set(xlabel="round", ylabel="seconds", title="time per stage")
    ax.legend(fontsize=8)
    path = os.path.join(out, "stages.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _sample_ids(project: Project, n: int) -> np.ndarray:
    best = TopK(n)
    for batch in pool.iter_batches(project.config.pool, ["id"]):
        ids = batch.column(0).to_numpy()
        best.push(pa.table({"id": ids, "score": uniform(ids, project.config.seed, 0, PURPOSE_SUBSET)}))
    return best.result().column("id").to_numpy()


def selection_map(project: Project, n: int, out: str) -> str:
    manifest = project.manifest(n)
    ckpt = manifest.get("checkpoint")
    if not ckpt:
        raise RayDM2Error(f"round {n} was not selected with a model checkpoint; nothing to map")
    selected = project.selection(n).column("id").to_numpy()
    ids = np.union1d(_sample_ids(project, MAP_SAMPLE), selected)
    table = pool.read_columns(project.config.pool, ["id", "image"], ids)
    cfg = project.config
    keep, pixels = [], []
    for i, blob in zip(table.column("id").to_numpy(), table.column("image").to_pylist()):
        try:
            pixels.append(decode(blob, cfg.image_spec()))
            keep.append(i)
        except UndecodableImage:
            continue
    model = checkpoint.load(ckpt, cfg.model_spec()).eval()
    with torch.inference_mode():
        z = torch.cat([model.features(to_tensor(np.stack(pixels[s:s + 512]))) for s in range(0, len(pixels), 512)])
    z = z.numpy().astype(np.float64)
    z -= z.mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    xy = z @ vt[:2].T
    is_sel = np.isin(np.asarray(keep), selected)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xy[~is_sel, 0], xy[~is_sel, 1], s=4, c="lightgray", label="pool sample")
    ax.scatter(xy[is_sel, 0], xy[is_sel, 1], s=14, c="crimson", label=f"round {n} selection")
    ax.set(title=f"round {n}: PCA of penultimate features", xticks=[], yticks=[])
    ax.legend(fontsize=8)
    path = os.path.join(out, f"map_round_{n}.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write(project: Project, out: str, rounds: list[int] | None = None) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = [p for p in (accuracy_plot(project, out), stages_plot(project, out)) if p]
    mappable = [n for n in project.round_ids() if project.manifest(n).get("checkpoint")]
    for n in rounds if rounds is not None else mappable[-1:]:
        paths.append(selection_map(project, n, out))
    return paths
