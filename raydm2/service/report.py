"""`raydm2 report`: one self-contained HTML page (report.html, images inline) and its PNG plots.

- accuracy.png: clean and FGSM-robust test accuracy against the labels trained on, with the random strategy's
  mean curve (± one std over seeds) from a `raydm2 simulate` of the same pool when one is given;
- classes.png: labels per class after each round (the class balance of what was picked);
- stages.png: seconds per round, acquisition stages and training apart, under readable names;
- map_round_N.png: a 2-D PCA map of a seeded sample of pool embeddings (the checkpoint the round was selected
  with), coloured by class where the ledger knows the label, with that round's picks marked.
"""

from __future__ import annotations

import json
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
from raydm2.progress import pipeline_order, readable  # noqa: E402
from raydm2.service import html  # noqa: E402

MAP_SAMPLE = 2000


def random_baseline(results_path: str, project: Project) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, mean accuracy, std) of the `random` runs in a simulate results.json over this project's pool."""
    try:
        with open(results_path) as f:
            results = json.load(f)
        base_pool = results["plan"]["base"]["pool"]
        runs = [r for r in results["runs"] if r["strategy"] == "random"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RayDM2Error(f"--baseline {results_path} is not a `raydm2 simulate` results.json ({exc})") from None
    if os.path.abspath(base_pool) != os.path.abspath(project.config.pool):
        raise RayDM2Error(f"--baseline {results_path} simulated pool {base_pool}, not this project's "
                          f"{project.config.pool}: a baseline of other data would mislead")
    if not runs:
        raise RayDM2Error(f"--baseline {results_path} has no runs of the random strategy")
    curves = np.array([[r["clean_accuracy"] for r in run["rounds"]] for run in runs], dtype=float)
    labels = np.array([r["labels"] for r in runs[0]["rounds"]])
    return labels, curves.mean(0), curves.std(0)


def accuracy_plot(project: Project, out: str, baseline: tuple | None = None) -> str | None:
    rows = [(m["counts"].get("labels_trained_on"), m["metrics"].get("clean_accuracy"),
             m["metrics"].get("robust_accuracy")) for m in map(project.manifest, project.round_ids())]
    rows = [r for r in rows if r[0] is not None and r[1] is not None]
    if not rows:
        return None
    labels, clean, robust = zip(*rows)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if baseline is not None:
        x, mean, std = baseline
        ax.plot(x, mean, ":", color="gray", label="random (simulated)")
        ax.fill_between(x, mean - std, mean + std, color="gray", alpha=0.2)
    ax.plot(labels, clean, "o-", label=f"clean ({project.config.strategy.name})")
    ax.plot(labels, robust, "s--", label="FGSM-robust")
    ax.set(xlabel="labels", ylabel="test accuracy", title=f"{project.config.name}: accuracy vs labels")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out, "accuracy.png")


def classes_plot(project: Project, out: str) -> str | None:
    classes = project.config.classes
    counts = []
    for n in project.round_ids():
        labels = project.labels(n).column("label").to_numpy()
        counts.append(np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int))
    if not counts or not np.sum(counts):
        return None
    total = np.cumsum(np.array(counts), axis=0)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bottom = np.zeros(len(total))
    for c, name in enumerate(classes):
        ax.bar([str(n) for n in project.round_ids()], total[:, c], bottom=bottom, label=name,
               color=plt.cm.tab20(c % 20))
        bottom += total[:, c]
    ax.set(xlabel="after round", ylabel="labels", title="labels per class")
    if len(classes) <= 20:
        ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, out, "classes.png")


def stages_plot(project: Project, out: str) -> str | None:
    timings = {n: {k: v for k, v in project.manifest(n)["timings"].items() if k != "total_s"}
               for n in project.round_ids()}
    stages = sorted({k for t in timings.values() for k in t}, key=lambda k: pipeline_order((k, 0)))
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bottom = np.zeros(len(timings))
    acquisition = [s for s in stages if s != "train_s"]
    for k, stage in enumerate(acquisition + (["train_s"] if "train_s" in stages else [])):
        values = np.array([t.get(stage, 0.0) for t in timings.values()])
        training = stage == "train_s"
        ax.bar([str(n) for n in timings], values, bottom=bottom, color="tab:orange" if training else
               plt.cm.Blues(0.35 + 0.6 * k / max(1, len(acquisition))), hatch="//" if training else None,
               label=("training: " if training else "acquisition: ") + readable(stage))
        bottom += values
    ax.set(xlabel="round", ylabel="seconds", title="time per round")
    ax.legend(fontsize=8)
    return _save(fig, out, "stages.png")


def _save(fig, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
    keep = np.asarray(keep)
    is_sel = np.isin(keep, selected)
    known = project.all_labels()
    label_of = dict(zip(known.column("id").to_pylist(), known.column("label").to_pylist()))
    classes = np.array([label_of.get(int(i), -1) for i in keep])
    fig, ax = plt.subplots(figsize=(6.5, 5))
    unknown = classes < 0
    ax.scatter(xy[unknown, 0], xy[unknown, 1], s=4, c="lightgray", label="not labeled")
    for c in np.unique(classes[~unknown]):
        at = classes == c
        ax.scatter(xy[at, 0], xy[at, 1], s=10, color=plt.cm.tab20(int(c) % 20), label=cfg.classes[int(c)])
    ax.scatter(xy[is_sel, 0], xy[is_sel, 1], s=40, facecolors="none", edgecolors="black", linewidths=1.2,
               label=f"round {n} picks")
    ax.set(title=f"round {n}: PCA of penultimate features", xticks=[], yticks=[])
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, out, f"map_round_{n}.png")


def html_page(project: Project, images: list[str]) -> str:
    rows = []
    for n in project.round_ids():
        m = project.manifest(n)
        t = m["timings"]
        acquisition = sum(v for k, v in t.items() if k not in ("train_s", "total_s"))
        rows.append([n, m["state"], m["strategy"], m["counts"].get("selected"), m["counts"].get("labels_trained_on"),
                     m["metrics"].get("clean_accuracy"), m["metrics"].get("robust_accuracy"),
                     round(acquisition, 1) if acquisition else None, t.get("train_s")])
    sections = [("Rounds", html.table(["round", "state", "strategy", "selected", "trained on", "accuracy",
                                       "robust accuracy", "acquisition s", "training s"], rows))]
    titles = {"accuracy.png": "Accuracy", "classes.png": "Labels per class", "stages.png": "Time per round"}
    for path in images:
        name = os.path.basename(path)
        title = titles.get(name, name.removesuffix(".png").replace("map_round_", "Selection map, round "))
        sections.append((title, html.image(path, title)))
    return html.page(f"raydm2 report: {project.config.name}", sections,
                     note=f"{project.uri}; pool {project.config.pool}; {len(project.round_ids())} rounds")


def write(project: Project, out: str, rounds: list[int] | None = None, baseline: str | None = None) -> list[str]:
    """The PNGs and report.html (which holds them inline) in `out`; returns their paths."""
    curve = random_baseline(baseline, project) if baseline else None
    os.makedirs(out, exist_ok=True)
    paths = [p for p in (accuracy_plot(project, out, curve), classes_plot(project, out), stages_plot(project, out))
             if p]
    mappable = [n for n in project.round_ids() if project.manifest(n).get("checkpoint")]
    for n in rounds if rounds is not None else mappable[-1:]:
        paths.append(selection_map(project, n, out))
    page = os.path.join(out, "report.html")
    with open(page, "w") as f:
        f.write(html_page(project, paths))
    return paths + [page]
