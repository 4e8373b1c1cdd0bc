"""`simulate` with the local engine on the shipped sample: every run starts from the same class-covering seed,
grows by the budget each round, and the report's AUBC is the area under the recorded curve. A repeat resumes."""

import json
import os
from dataclasses import replace

import pytest

from raydm2.config import validate_config
from raydm2.errors import RayDM2Error
from raydm2.presets import PRESETS
from raydm2.simulate import SimulationPlan, aubc, simulate

from helpers import CLASSES


def test_aubc_is_the_normalised_trapezoid_area():
    assert aubc([20, 40, 60], [0.5, 0.7, 0.8]) == pytest.approx(((0.5 + 0.7) / 2 * 20 + (0.7 + 0.8) / 2 * 20) / 40)
    assert aubc([20], [0.4]) == pytest.approx(0.4)


def test_local_simulation_runs_rounds_and_resumes(sample_pools, tmp_path):
    base = validate_config({**PRESETS["mnist"], "name": "sim", "pool": sample_pools["mnist_train"],
                            "test_pool": sample_pools["mnist_test"], "classes": CLASSES,
                            "train": {"epochs": 2, "batch_size": 32, "epsilon": 2 / 255}})
    plan = SimulationPlan(base=base, strategies=("random", "margin"), seeds=(0,), initial=20, per_round=10,
                          rounds=2, engine="local")
    out = str(tmp_path / "sim")
    report = simulate(plan, out, title="sample")
    assert {os.path.basename(p) for p in os.listdir(out)} >= {"results.json", "results.md", "curves.png", "runs"}

    runs = {r["strategy"]: r for r in report["runs"]}
    for name, run in runs.items():
        rows = run["rounds"]
        assert [r["labels"] for r in rows] == [20, 30, 40]
        assert all(0.0 <= r["clean_accuracy"] <= 1.0 and 0.0 <= r["robust_accuracy"] <= 1.0 for r in rows)
        assert rows[0]["acquire_s"] == 0.0 and all(r["acquire_s"] > 0.0 for r in rows[1:])
        assert run["aubc"] == pytest.approx(aubc([r["labels"] for r in rows], [r["clean_accuracy"] for r in rows]))
        assert report["summary"][name]["aubc"]["mean"] == pytest.approx(run["aubc"])
    # Same seed, same class-covering initial set, same deterministic training: round 0 is identical.
    assert runs["random"]["seed_salt"] == runs["margin"]["seed_salt"]
    assert runs["random"]["rounds"][0]["clean_accuracy"] == runs["margin"]["rounds"][0]["clean_accuracy"]
    # ... and the strategies then pick differently, so their later rounds train on different sets.
    def accuracies(run):
        return [(r["clean_accuracy"], r["robust_accuracy"]) for r in run["rounds"][1:]]

    assert accuracies(runs["random"]) != accuracies(runs["margin"])

    runs_dir = os.path.join(out, "runs")
    stamps = {p: os.path.getmtime(os.path.join(runs_dir, p, "run.json")) for p in os.listdir(runs_dir)}
    again = simulate(plan, out, title="sample")
    assert again["summary"] == report["summary"]
    assert stamps == {p: os.path.getmtime(os.path.join(runs_dir, p, "run.json")) for p in stamps}
    assert json.load(open(os.path.join(out, "results.json")))["summary"] == json.loads(json.dumps(report["summary"]))
    # A finished run is only resumed under the settings it ran with: more rounds, or another λ, must not reuse it.
    for changed in (replace(plan, rounds=3), replace(plan, base=base.with_overrides({"strategy.lam": 0.6}))):
        with pytest.raises(RayDM2Error, match="other settings"):
            simulate(changed, out, title="sample")
