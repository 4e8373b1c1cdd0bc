"""Simulated active learning: whole runs with oracle labels from the pool's `label` column, for several
strategies and seeds, summarised as learning curves and AUBC (SPEC section 8).

Each (strategy, seed) run is an ordinary project under `OUT/runs/<strategy>-seed<seed>/` driven through the same
`loop.seed / labels.oracle / loop.train / loop.acquire` steps a user runs, so what is measured is the product.
A finished run leaves `run.json`; re-running `simulate` with the same OUT skips it, and a run that was
interrupted is started again from scratch (its project folder is replaced).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np

from raydm2 import labels, loop, pool
from raydm2.config import ProjectConfig, validate_config
from raydm2.errors import RayDM2Error
from raydm2.project import Project

MAX_SEED_ATTEMPTS = 1000


@dataclass(frozen=True)
class SimulationPlan:
    base: ProjectConfig  # pool, test pool, model, training and strategy parameters shared by every run
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    initial: int
    per_round: int
    rounds: int


def aubc(labels_count: list[int], accuracy: list[float]) -> float:
    """Area under the accuracy-vs-labels curve (trapezoids), divided by the label range: in [0, 1]."""
    x, y = np.asarray(labels_count, float), np.asarray(accuracy, float)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def seed_covering_classes(project: Project, n: int) -> int:
    """Seed round 0 with the first salt whose n random picks contain every class (the NoiseStability protocol
    resamples the initial set until it does). Returns the salt used."""
    want = set(range(project.config.num_classes))
    for salt in range(MAX_SEED_ATTEMPTS):
        chosen, _ = loop.seed_candidates(project, n, salt)
        ids = chosen.column("id").to_numpy()
        got = set(pool.read_columns(project.config.pool, ["id", "label"], ids).column("label").to_pylist())
        if want <= got:
            loop.seed(project, n, salt)
            return salt
    raise RayDM2Error(f"no random initial set of {n} images covers all {len(want)} classes")


def run_one(plan: SimulationPlan, strategy: str, seed: int, folder: str) -> dict:
    data = plan.base.model_dump(mode="json")
    data.update(name=f"{strategy}-seed{seed}", seed=seed)
    data["strategy"] = {**data["strategy"], "name": strategy, "budget": plan.per_round}
    if os.path.exists(folder):
        shutil.rmtree(folder)
    project = Project.create(folder, validate_config(data, source="simulation settings"))
    salt = seed_covering_classes(project, plan.initial)
    rows = []
    for n in range(plan.rounds + 1):
        labels.import_labels(project, n, *labels.oracle(project, n))
        metrics = loop.train(project, n)
        manifest = project.manifest(n)
        rows.append({
            "round": n,
            "labels": int(project.all_labels(upto=n).num_rows),
            "clean_accuracy": metrics.get("clean_accuracy"),
            "robust_accuracy": metrics.get("robust_accuracy"),
            # round n's acquisition time (round 0 is the random seed: none)
            "acquire_s": manifest["timings"].get("total_s", 0.0),
            "train_s": manifest["timings"].get("train_s"),
        })
        if n < plan.rounds:
            loop.acquire(project)
    return {"strategy": strategy, "seed": seed, "seed_salt": salt, "rounds": rows,
            "aubc": aubc([r["labels"] for r in rows], [r["clean_accuracy"] for r in rows]),
            "robust_aubc": aubc([r["labels"] for r in rows], [r["robust_accuracy"] for r in rows])}


def _mean_std(values: list[float]) -> dict:
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
            "aubc": _mean_std([r["aubc"] for r in rs]),
            "robust_aubc": _mean_std([r["robust_aubc"] for r in rs]),
            "final_accuracy": _mean_std([r["rounds"][-1]["clean_accuracy"] for r in rs]),
            "final_robust_accuracy": _mean_std([r["rounds"][-1]["robust_accuracy"] for r in rs]),
            "acquire_s_per_round": _mean_std([np.mean([x["acquire_s"] for x in r["rounds"][1:]] or [0.0])
                                              for r in rs]),
            "curve": [{"labels": rs[0]["rounds"][i]["labels"],
                       "accuracy": _mean_std([r["rounds"][i]["clean_accuracy"] for r in rs]),
                       "robust_accuracy": _mean_std([r["rounds"][i]["robust_accuracy"] for r in rs])}
                      for i in range(rounds)],
        }
    return out


def markdown(summary: dict, title: str) -> str:
    lines = [f"# {title}", "", "| strategy | AUBC | robust AUBC | final accuracy | final robust | acquire s/round |",
             "|---|---|---|---|---|---|"]
    for name, s in sorted(summary.items(), key=lambda kv: -kv[1]["aubc"]["mean"]):
        cells = [f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in
                 ("aubc", "robust_aubc", "final_accuracy", "final_robust_accuracy")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['acquire_s_per_round']['mean']:.1f} |")
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


def simulate(plan: SimulationPlan, out: str, title: str = "simulation") -> dict:
    """Run every (strategy, seed) not finished yet under `out`; write results.json, results.md, curves.png."""
    runs = []
    for strategy in plan.strategies:
        for seed in plan.seeds:
            folder = os.path.join(out, "runs", f"{strategy}-seed{seed}")
            done = os.path.join(folder, "run.json")
            if os.path.exists(done):
                runs.append(json.load(open(done)))
                continue
            result = run_one(plan, strategy, seed, folder)
            with open(done + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(done + ".tmp", done)
            runs.append(result)
    summary = summarise(runs)
    report = {"plan": {**asdict(plan), "base": plan.base.model_dump(mode="json")}, "summary": summary, "runs": runs}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(summary, title))
    plot(summary, os.path.join(out, "curves.png"), title)
    return report
