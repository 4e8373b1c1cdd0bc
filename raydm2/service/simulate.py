"""Simulated active learning: whole runs with oracle labels from the pool's `label` column, for several
strategies and seeds, summarised as learning curves and AUBC (SPEC section 8).

Two engines run the same rounds:
- `ray` (default): each (strategy, seed) run is an ordinary project under `OUT/runs/<strategy>-seed<seed>/` driven
  through the `loop.seed / labels.oracle / loop.train / loop.acquire` steps a user runs, so what is measured is
  the product, Ray Train and the distributed acquisition included.
- `local`: the pool and test pool are decoded once into memory and each round runs in this process, training with
  `training.epochs.fit_in_process` (the Ray Train worker's own epoch loop) and selecting on the in-memory engine
  (`acquisition.local_engine`, which the suite proves equal to the distributed one for every strategy). Selection
  quality is the same computation; what it saves is Ray's fixed start-up per training and per acquisition, which
  dominates rounds of 20 labels. Its acquisition seconds are single-process figures, not the pipeline's.
A finished run leaves its record, `<strategy>-seed<seed>.json`, in the records folder (`OUT/records` unless told
otherwise); re-running `simulate` with that folder skips it, and a run that was interrupted is started again from
scratch (its scratch folder under `OUT/runs` is replaced). A record names the pools by their content, not their
location, so a records folder kept with the results resumes on another machine or under another OUT.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from functools import cache, cached_property
from typing import Callable, Literal

import numpy as np
import pyarrow as pa

from raydm2 import progress
from raydm2.ledger import labels
from raydm2.service import loop
from raydm2.data import pool
from raydm2.ledger.config import ProjectConfig, merge_settings, validate_config
from raydm2.errors import RayDM2Error
from raydm2.ledger.project import Project
from raydm2.acquisition.topk import top_rows

MAX_SEED_ATTEMPTS = 1000


@dataclass(frozen=True)
class SimulationPlan:
    base: ProjectConfig  # pool, test pool, model, training and strategy parameters shared by every run
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    initial: int
    per_round: int
    rounds: int
    engine: Literal["ray", "local"] = "ray"
    # How round 0 is chosen: at random (resampled until every class is in it, as NoiseStability's protocol does),
    # or by TypiClust on the initial model's features (`raydm2 seed --strategy typiclust`).
    seed_strategy: Literal["random", "typiclust"] = "random"


def aubc(labels_count: list[int], accuracy: list[float]) -> float:
    """Area under the accuracy-vs-labels curve (trapezoids), divided by the label range: in [0, 1]."""
    x, y = np.asarray(labels_count, float), np.asarray(accuracy, float)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def covering_salt(candidates: Callable[[int], np.ndarray], labels_of: Callable[[np.ndarray], np.ndarray],
                  num_classes: int, n: int) -> int:
    """The first salt whose random initial set `candidates(salt)` contains every class: the NoiseStability
    protocol resamples the initial set until it does."""
    for salt in range(MAX_SEED_ATTEMPTS):
        if len(set(labels_of(candidates(salt)).tolist())) == num_classes:
            return salt
    raise RayDM2Error(f"no random initial set of {n} images covers all {num_classes} classes")


def run_config(plan: SimulationPlan, strategy: str, seed: int) -> ProjectConfig:
    run = {"name": f"{strategy}-seed{seed}", "seed": seed, "strategy": {"name": strategy, "budget": plan.per_round}}
    return validate_config(merge_settings(plan.base.model_dump(mode="json"), run), source="simulation settings")


# Settings added after runs began to be recorded, with their defaults: while at its default such a setting is left
# out of the key, so adding it did not orphan every record made before it (those runs behaved as the default does).
# A setting added later goes here too.
ADDED_SETTINGS = {("strategy", "balance"): False}


def settings_key(plan: SimulationPlan, config: ProjectConfig, data: "PoolArrays") -> str:
    """What a finished run must have been run with to be resumed: its config, with the pools' locations replaced by
    the digest of their decoded content, and the plan's round shape."""
    settings = {**config.model_dump(mode="json"), "pool": data.digest, "test_pool": None}
    for (section, name), default in ADDED_SETTINGS.items():
        if settings.get(section, {}).get(name, default) == default:
            settings[section] = {k: v for k, v in settings[section].items() if k != name}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    seeding = "" if plan.seed_strategy == "random" else f"/seed-{plan.seed_strategy}"
    return f"{digest}/{plan.engine}/{plan.initial}+{plan.per_round}x{plan.rounds}{seeding}"


def environment() -> str:
    """What besides its settings decides a run's numbers: raydm2's source, torch and numpy, the CPU kernels torch
    dispatches to and its thread count (the driver's, under the ray engine). Runs are deterministic in one
    environment, but a change in any of these can move every curve, so records carry it and a report says when its
    runs came from more than one."""
    import torch

    return (f"raydm2 {_source_digest()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads), numpy {np.__version__}")


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_files() -> list[str]:
    """Every Python file of the raydm2 package, sorted: what a record's environment digests."""
    return sorted(glob.glob(os.path.join(_PACKAGE, "**", "*.py"), recursive=True))


@cache
def _source_digest() -> str:
    """raydm2's source cannot change under a running process, but its thread count can: only this part is cached."""
    h = hashlib.sha256()
    for path in source_files():
        h.update(os.path.relpath(path, _PACKAGE).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def run_one(plan: SimulationPlan, strategy: str, seed: int, folder: str, data: "PoolArrays") -> dict:
    """One (strategy, seed) run in the scratch `folder`; `data` is the decoded pools (the local engine trains on
    them, and both engines' records are keyed by their digest)."""
    config = run_config(plan, strategy, seed)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    progress.note(f"{strategy}, seed {seed}:")
    rows: list[dict] = []  # each round's row as it finishes, counted by the live line on a terminal
    with progress.counting(f"{strategy}, seed {seed}", plan.rounds + 1, lambda: len(rows), unit="rounds"), \
            progress.notes_only():
        salt = (_run_local(plan, config, folder, data, rows) if plan.engine == "local"
                else _run_project(plan, config, folder, rows))
    return {"strategy": strategy, "seed": seed, "seed_salt": salt, "seed_strategy": plan.seed_strategy,
            "engine": plan.engine,
            "settings": settings_key(plan, config, data), "environment": environment(), "rounds": rows,
            "aubc": aubc([r["labels"] for r in rows], [r["clean_accuracy"] for r in rows]),
            "robust_aubc": aubc([r["labels"] for r in rows], [r["robust_accuracy"] for r in rows]),
            "balanced_aubc": aubc([r["labels"] for r in rows], [r["balanced_accuracy"] for r in rows])}


def _row(n: int, labels_count: int, metrics: dict, acquire_s: float, train_s: float | None,
         added: np.ndarray) -> dict:
    # acquire_s is the acquisition that made round n (round 0 is the seed set: none); `added` its ids, kept so that
    # what a strategy picks (classes, duplicates, corrupted images) can be studied from the record alone
    progress.note(f"round {n}: {labels_count} labels, accuracy {metrics.get('clean_accuracy', float('nan')):.3f}")
    return {"round": n, "labels": labels_count, "clean_accuracy": metrics.get("clean_accuracy"),
            "robust_accuracy": metrics.get("robust_accuracy"), "balanced_accuracy": metrics.get("balanced_accuracy"),
            "acquire_s": acquire_s, "train_s": train_s, "added": sorted(int(i) for i in added)}


def _run_project(plan: SimulationPlan, config: ProjectConfig, folder: str, rows: list[dict]) -> int:
    """Runs the simulation as a project; appends each round's row to `rows`, returns the seed's salt."""
    project = Project.create(folder, config)

    def labels_of(ids: np.ndarray) -> np.ndarray:
        return pool.read_columns(config.pool, ["id", "label"], ids).column("label").to_numpy()

    if plan.seed_strategy == "typiclust":
        salt = 0
        loop.seed(project, plan.initial, strategy="typiclust")
    else:
        salt = covering_salt(lambda salt: loop.seed_candidates(project, plan.initial, salt)[0].column("id")
                             .to_numpy(), labels_of, config.num_classes, plan.initial)
        loop.seed(project, plan.initial, salt)
    for n in range(plan.rounds + 1):
        added, truth = labels.oracle(project, n)
        labels.import_labels(project, n, added, truth)
        metrics = loop.train(project, n)
        timings = project.manifest(n)["timings"]
        rows.append(_row(n, int(project.all_labels(upto=n).num_rows), metrics, timings.get("total_s", 0.0),
                         timings.get("train_s"), added))
        if n < plan.rounds:
            loop.acquire(project)
    return salt


def _typiclust_seed(config: ProjectConfig, folder: str, data: "PoolArrays", n: int) -> np.ndarray:
    """What `raydm2 seed --strategy typiclust` picks, on the in-memory pool."""
    from raydm2 import acquisition
    from raydm2.acquisition.local_engine import LocalEngine

    request = loop.typiclust_seed_request(config, os.path.join(folder, "seed-features"), n)
    picked = acquisition.acquire(request, engine=LocalEngine(request, data.ids, data.pixels)).selection
    return picked.column("id").to_numpy()


@dataclass(frozen=True)
class PoolArrays:
    """A pool and its test pool decoded into memory (ids sorted), for the local engine."""

    ids: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray

    @classmethod
    def load(cls, config: ProjectConfig) -> "PoolArrays":
        from raydm2.acquisition.local_engine import load_pool

        if not config.test_pool:
            raise RayDM2Error("a simulation needs a test pool to measure accuracy on")

        def decoded(uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            ids, pixels, ok = load_pool(uri, config.image_spec())
            ids, pixels = ids[ok], pixels[ok]
            table = pool.read_columns(uri, ["id", "label"], ids).sort_by("id")
            if table.column("label").null_count:
                raise RayDM2Error(f"pool {uri!r} has images without a label: the oracle needs them all")
            return ids, pixels, table.column("label").to_numpy().astype(np.int64)

        ids, pixels, y = decoded(config.pool)
        _, test_pixels, test_y = decoded(config.test_pool)
        return cls(ids, pixels, y, test_pixels, test_y)

    @cached_property
    def digest(self) -> str:
        """Content digest of both pools (ids, decoded pixels, labels): equal wherever and however they are stored."""
        h = hashlib.sha256()
        for array in (self.ids, self.pixels, self.labels, self.test_pixels, self.test_labels):
            h.update(str((array.dtype.str, array.shape)).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()


def _run_local(plan: SimulationPlan, config: ProjectConfig, folder: str, data: PoolArrays, rows: list[dict]) -> int:
    """Runs the simulation in this process; appends each round's row to `rows`, returns the seed's salt."""
    from raydm2.models import checkpoint
    from raydm2 import acquisition
    from raydm2.acquisition.local_engine import LocalEngine
    from raydm2.models.registry import build
    from raydm2.training.epochs import fit_in_process

    def candidates(salt: int) -> np.ndarray:  # what loop.seed_candidates picks, on the in-memory ids
        return top_rows(loop.seed_scores(data.ids, config.seed, salt), plan.initial).column("id").to_numpy()

    spec = config.model_spec()
    if plan.seed_strategy == "typiclust":
        salt, labeled = 0, np.isin(data.ids, _typiclust_seed(config, folder, data, plan.initial))
    else:
        salt = covering_salt(candidates, lambda ids: data.labels[np.searchsorted(data.ids, ids)],
                             config.num_classes, plan.initial)
        labeled = np.isin(data.ids, candidates(salt))
    acquire_s, added = 0.0, data.ids[labeled]
    for n in range(plan.rounds + 1):
        started = time.perf_counter()
        weights, metrics = fit_in_process(config, data.pixels[labeled], data.labels[labeled], data.test_pixels,
                                          data.test_labels)
        rows.append(_row(n, int(labeled.sum()), metrics, acquire_s, round(time.perf_counter() - started, 4), added))
        if n == plan.rounds:
            break
        model = build(spec)
        model.load_state_dict(weights)
        ckpt = os.path.join(folder, f"round-{n:04d}")
        checkpoint.save(model, spec, ckpt)
        started = time.perf_counter()
        known = pa.table({"id": data.ids[labeled], "label": data.labels[labeled]})
        request = config.acquire_request(ckpt, n + 1, data.ids[labeled], known)
        picked = acquisition.acquire(request, engine=LocalEngine(request, data.ids, data.pixels)).selection
        added = picked.column("id").to_numpy()
        acquire_s = round(time.perf_counter() - started, 4)
        labeled |= np.isin(data.ids, added)
    return salt


def mean_std(values: list[float]) -> dict:
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def summarise(runs: list[dict]) -> dict:
    by_strategy: dict[str, list[dict]] = {}
    for r in runs:
        by_strategy.setdefault(r["strategy"], []).append(r)
    out = {}
    for name, rs in by_strategy.items():
        rounds = len(rs[0]["rounds"])
        out[name] = {
            "seeds": [r["seed"] for r in rs],
            "environments": sorted({r.get("environment", "not recorded") for r in rs}),
            "aubc": mean_std([r["aubc"] for r in rs]),
            "robust_aubc": mean_std([r["robust_aubc"] for r in rs]),
            "final_accuracy": mean_std([r["rounds"][-1]["clean_accuracy"] for r in rs]),
            "final_robust_accuracy": mean_std([r["rounds"][-1]["robust_accuracy"] for r in rs]),
            "acquire_s_per_round": mean_std([np.mean([x["acquire_s"] for x in r["rounds"][1:]] or [0.0])
                                              for r in rs]),
            "curve": [{"labels": rs[0]["rounds"][i]["labels"],
                       "accuracy": mean_std([r["rounds"][i]["clean_accuracy"] for r in rs]),
                       "robust_accuracy": mean_std([r["rounds"][i]["robust_accuracy"] for r in rs])}
                      for i in range(rounds)],
        }
        # Records from before balanced accuracy was measured have none; a summary never mixes the two.
        if all("balanced_aubc" in r for r in rs):
            out[name]["balanced_aubc"] = mean_std([r["balanced_aubc"] for r in rs])
            out[name]["final_balanced_accuracy"] = mean_std([r["rounds"][-1]["balanced_accuracy"] for r in rs])
    return out


def markdown(summary: dict, title: str) -> str:
    lines = [f"# {title}", "", "| strategy | AUBC | robust AUBC | final accuracy | final robust | acquire s/round |",
             "|---|---|---|---|---|---|"]
    for name, s in sorted(summary.items(), key=lambda kv: -kv[1]["aubc"]["mean"]):
        cells = [f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in
                 ("aubc", "robust_aubc", "final_accuracy", "final_robust_accuracy")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['acquire_s_per_round']['mean']:.1f} |")
    versions = sorted({v for s in summary.values() for v in s["environments"]})
    if len(versions) > 1:
        lines += ["", f"These runs came from {len(versions)} environments, so their differences are not only the "
                  "strategies' and seeds' (per strategy: `environments` in results.json):",
                  *[f"- {v}" for v in versions]]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key in zip(axes, ("accuracy", "robust_accuracy")):
        for name, s in sorted(summary.items()):
            x = [c["labels"] for c in s["curve"]]
            m = np.array([c[key]["mean"] for c in s["curve"]])
            sd = np.array([c[key]["std"] for c in s["curve"]])
            ax.plot(x, m, label=name, lw=2 if name == "dm2" else 1)
            ax.fill_between(x, m - sd, m + sd, alpha=0.15)
        ax.set_xlabel("labels")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def simulate(plan: SimulationPlan, out: str, title: str = "simulation", records: str | None = None) -> dict:
    """Run every (strategy, seed) without a finished record in `records` (default OUT/records); write
    results.json, results.md, curves.png and results.html (the table and curves in one page) to OUT."""
    records = records or os.path.join(out, "records")
    for folder in (out, records):
        os.makedirs(folder, exist_ok=True)
    data = PoolArrays.load(plan.base)
    runs: list[dict] = []
    with progress.counting("simulation", len(plan.strategies) * len(plan.seeds), lambda: len(runs), unit="runs"):
        _run_all(plan, out, records, data, runs)
    summary = summarise(runs)
    report = {"plan": {**asdict(plan), "base": plan.base.model_dump(mode="json")}, "records": records,
              "summary": summary, "runs": runs}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(summary, title))
    plot(summary, os.path.join(out, "curves.png"), title)
    with open(os.path.join(out, "results.html"), "w") as f:
        f.write(html_page(summary, os.path.join(out, "curves.png"), title, plan))
    return report


def _run_all(plan: SimulationPlan, out: str, records: str, data: "PoolArrays", runs: list[dict]) -> None:
    """Every (strategy, seed) run, each appended to `runs` when it finishes or was finished before."""
    for strategy in plan.strategies:
        for seed in plan.seeds:
            done = os.path.join(records, f"{strategy}-seed{seed}.json")
            if os.path.exists(done):
                finished = json.load(open(done))
                if finished.get("settings") != settings_key(plan, run_config(plan, strategy, seed), data):
                    raise RayDM2Error(f"{done} finished with other settings than this plan's; simulate into "
                                      "another records folder, or remove that record to redo the run")
                runs.append(finished)
                progress.note(f"{strategy}, seed {seed}: finished before, from {done}")
                continue
            result = run_one(plan, strategy, seed, os.path.join(out, "runs", f"{strategy}-seed{seed}"), data)
            with open(done + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(done + ".tmp", done)
            runs.append(result)


def html_page(summary: dict, curves: str, title: str, plan: SimulationPlan) -> str:
    from raydm2.service import html

    rows = [[name, *(f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in
                     ("aubc", "robust_aubc", "final_accuracy", "final_robust_accuracy")),
             round(s["acquire_s_per_round"]["mean"], 1)]
            for name, s in sorted(summary.items(), key=lambda kv: -kv[1]["aubc"]["mean"])]
    table = html.table(["strategy", "AUBC", "robust AUBC", "final accuracy", "final robust", "acquire s/round"],
                       rows)
    return html.page(title, [("Area under the budget curve (mean ± std over seeds)", table),
                             ("Accuracy against labels (bands: ± one std)", html.image(curves, "learning curves"))],
                     note=f"{len(plan.seeds)} seeds, {plan.initial} initial labels + {plan.rounds} rounds of "
                          f"{plan.per_round}, engine {plan.engine}")
