"""`simulate` with the local engine on the shipped sample: every run starts from the same class-covering seed,
grows by the budget each round, and the report's AUBC is the area under the recorded curve. A repeat resumes, also
from records moved with copies of the pools, and never from records of other settings or other pool content."""

import hashlib
import json
import os
import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np

import pytest

from raydm2.data import pool
from raydm2.ledger.config import validate_config
from raydm2.errors import RayDM2Error
from raydm2.ledger.presets import PRESETS
from raydm2.service.simulate import (SimulationPlan, aubc, environment, run_config, settings_key, simulate,
                                     source_files)

from helpers import CLASSES, open_in_chromium


def test_aubc_is_the_normalised_trapezoid_area():
    assert aubc([20, 40, 60], [0.5, 0.7, 0.8]) == pytest.approx(((0.5 + 0.7) / 2 * 20 + (0.7 + 0.8) / 2 * 20) / 40)
    assert aubc([20], [0.4]) == pytest.approx(0.4)


def test_a_setting_added_later_keeps_earlier_records_resumable():
    """Runs recorded before `dm2.balance` existed were keyed on configs without it: at its default the key is the
    one they carry, so they resume; turned on, it is another run's key."""
    base = validate_config({**PRESETS["fashion_mnist"], "name": "sim", "pool": "p", "classes": CLASSES})
    plan = SimulationPlan(base=base, strategies=("dm2",), seeds=(0,), initial=20, per_round=10, rounds=2,
                          engine="local")
    data = SimpleNamespace(digest="the pool's content")
    config = run_config(plan, "dm2", 0)
    before = {**config.model_dump(mode="json"), "pool": data.digest, "test_pool": None}
    del before["strategy"]["balance"]
    recorded = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert settings_key(plan, config, data) == f"{recorded}/local/20+10x2"
    on = run_config(replace(plan, base=base.with_overrides({"strategy.balance": True, "strategy.spread": None})),
                    "dm2", 0)
    assert settings_key(plan, on, data).split("/")[0] != recorded


def test_local_simulation_runs_rounds_and_resumes(sample_pools, tmp_path):
    base = validate_config({**PRESETS["mnist"], "name": "sim", "pool": sample_pools["mnist_train"],
                            "test_pool": sample_pools["mnist_test"], "classes": CLASSES,
                            "train": {"epochs": 2, "batch_size": 32, "epsilon": 2 / 255}})
    plan = SimulationPlan(base=base, strategies=("random", "margin"), seeds=(0,), initial=20, per_round=10,
                          rounds=2, engine="local")
    out = str(tmp_path / "sim")
    report = simulate(plan, out, title="sample")
    assert {os.path.basename(p) for p in os.listdir(out)} >= {"results.json", "results.md", "curves.png", "runs",
                                                              "results.html"}
    page = open_in_chromium(os.path.join(out, "results.html"))
    assert page["title"] == "sample" and page["images"] == [[True, page["images"][0][1]]]
    assert page["images"][0][1] > 500 and "margin" in page["text"] and "AUBC" in page["text"]
    # The random runs are a baseline for a project's report over the same pool, and only the same pool.
    from raydm2.ledger.project import Project
    from raydm2.service import report as report_mod

    project = Project.create(str(tmp_path / "p"), base)
    x, mean, std = report_mod.random_baseline(os.path.join(out, "results.json"), project)
    assert x.tolist() == [20, 30, 40] and mean.tolist() == [r["clean_accuracy"] for r in
                                                           report["runs"][0]["rounds"]] and std.tolist() == [0, 0, 0]
    other = Project.create(str(tmp_path / "q"), base.model_copy(update={"pool": sample_pools["mnist_test"]}))
    with pytest.raises(RayDM2Error, match="a baseline of other data would mislead"):
        report_mod.random_baseline(os.path.join(out, "results.json"), other)

    runs = {r["strategy"]: r for r in report["runs"]}
    for name, run in runs.items():
        rows = run["rounds"]
        assert [r["labels"] for r in rows] == [20, 30, 40]
        assert all(0.0 <= r["clean_accuracy"] <= 1.0 and 0.0 <= r["robust_accuracy"] <= 1.0 for r in rows)
        assert rows[0]["acquire_s"] == 0.0 and all(r["acquire_s"] > 0.0 for r in rows[1:])
        # Each round names the ids it added: the seed set, then each acquisition's picks, never one twice.
        added = [r["added"] for r in rows]
        assert [len(a) for a in added] == [20, 10, 10] and len(set().union(*added)) == 40
        assert run["aubc"] == pytest.approx(aubc([r["labels"] for r in rows], [r["clean_accuracy"] for r in rows]))
        assert report["summary"][name]["aubc"]["mean"] == pytest.approx(run["aubc"])
        assert run["balanced_aubc"] == pytest.approx(aubc([r["labels"] for r in rows],
                                                          [r["balanced_accuracy"] for r in rows]))
        assert report["summary"][name]["balanced_aubc"]["mean"] == pytest.approx(run["balanced_aubc"])
        assert run["environment"] == environment() and report["summary"][name]["environments"] == [environment()]
    # Same seed, same class-covering initial set, same deterministic training: round 0 is identical.
    assert runs["random"]["seed_salt"] == runs["margin"]["seed_salt"]
    assert runs["random"]["rounds"][0]["clean_accuracy"] == runs["margin"]["rounds"][0]["clean_accuracy"]
    assert runs["random"]["rounds"][0]["added"] == runs["margin"]["rounds"][0]["added"]
    assert runs["random"]["rounds"][1]["added"] != runs["margin"]["rounds"][1]["added"]
    # ... and the strategies then pick differently, so their later rounds train on different sets.
    def accuracies(run):
        return [(r["clean_accuracy"], r["robust_accuracy"]) for r in run["rounds"][1:]]

    assert accuracies(runs["random"]) != accuracies(runs["margin"])

    records = os.path.join(out, "records")
    assert sorted(os.listdir(records)) == ["margin-seed0.json", "random-seed0.json"]
    stamps = {p: os.path.getmtime(os.path.join(records, p)) for p in os.listdir(records)}
    again = simulate(plan, out, title="sample")
    assert again["summary"] == report["summary"]
    assert stamps == {p: os.path.getmtime(os.path.join(records, p)) for p in stamps}
    assert json.load(open(os.path.join(out, "results.json")))["summary"] == json.loads(json.dumps(report["summary"]))
    # A finished run is only resumed under the settings it ran with: more rounds, or another learning rate, must not
    # reuse it. (DM2's λ is no setting of these strategies' runs: each run carries only its own strategy's settings.)
    for changed in (replace(plan, rounds=3), replace(plan, base=base.with_overrides({"train.lr": 2e-3}))):
        with pytest.raises(RayDM2Error, match="other settings"):
            simulate(changed, out, title="sample")

    # The records, kept elsewhere, resume a simulation of copies of the same pools stored at other paths ...
    kept, moved = str(tmp_path / "kept-records"), tmp_path / "moved"
    shutil.copytree(records, kept)
    for key in ("mnist_train", "mnist_test"):
        shutil.copytree(sample_pools[key], moved / key)
    elsewhere = replace(plan, base=base.with_overrides({"pool": str(moved / "mnist_train"),
                                                        "test_pool": str(moved / "mnist_test")}))
    resumed = simulate(elsewhere, str(tmp_path / "other-out"), title="sample", records=kept)
    assert resumed["summary"] == report["summary"]
    assert stamps == {p: os.path.getmtime(os.path.join(kept, p)) for p in stamps}
    assert not os.path.exists(tmp_path / "other-out" / "runs")  # nothing was run again

    # ... but not once the pool's content differs: one more image is another experiment.
    pool.append_arrays(str(moved / "mnist_train"), np.zeros((1, 28, 28), np.uint8), np.array([0]), "extra")
    with pytest.raises(RayDM2Error, match="other settings"):
        simulate(elsewhere, str(tmp_path / "other-out"), title="sample", records=kept)

    # A record made in another environment has matching settings and is resumed, but the report says its runs mix
    # environments. One from before balanced accuracy was measured leaves it out of its strategy's summary.
    path = os.path.join(records, "margin-seed0.json")
    older = {**json.load(open(path)), "environment": "raydm2 000000000000, torch 0 (AVX2, 1 threads), numpy 0"}
    del older["balanced_aubc"]
    with open(path, "w") as f:
        json.dump(older, f)
    mixed = simulate(plan, out, title="sample")
    assert mixed["summary"]["margin"]["environments"] == [older["environment"]]
    assert mixed["summary"]["random"]["environments"] == [environment()]
    assert "balanced_aubc" not in mixed["summary"]["margin"] and "balanced_aubc" in mixed["summary"]["random"]
    assert "2 environments" in open(os.path.join(out, "results.md")).read()


def test_cli_simulate_keeps_records_where_told_and_resumes_from_them(sample_pools, tmp_path, capsys):
    from raydm2.service.cli import main

    records = tmp_path / "kept"
    argv = ["simulate", "--out", str(tmp_path / "sim"), "--records", str(records), "--engine", "local",
            "--pool", sample_pools["mnist_train"], "--test-pool", sample_pools["mnist_test"], "--preset", "mnist",
            "--set", "train.epochs=1", "--strategies", "random", "--seeds", "0", "--initial", "20",
            "--per-round", "10", "--rounds", "1"]
    assert main(argv) == 0
    record = json.load(open(records / "random-seed0.json"))
    assert [r["labels"] for r in record["rounds"]] == [20, 30]
    assert f"records in {records}" in capsys.readouterr().out
    stamp = os.path.getmtime(records / "random-seed0.json")
    assert main([*argv[:2], str(tmp_path / "sim-again"), *argv[3:]]) == 0
    assert os.path.getmtime(records / "random-seed0.json") == stamp
    assert not os.path.exists(tmp_path / "sim-again" / "runs")


def test_a_typiclust_round_0_is_its_own_setting(sample_pools, tmp_path):
    """Round 0 by TypiClust (what `raydm2 seed --strategy typiclust` picks) is a different run from the random,
    class-covering round 0: its own records key, and the record says how round 0 was chosen."""
    base = validate_config({**PRESETS["mnist"], "name": "sim", "pool": sample_pools["mnist_train"],
                            "test_pool": sample_pools["mnist_test"], "classes": CLASSES,
                            "train": {"epochs": 1, "batch_size": 32}})
    plans = [SimulationPlan(base=base, strategies=("random",), seeds=(0,), initial=20, per_round=10, rounds=1,
                            engine="local", seed_strategy=s) for s in ("random", "typiclust")]
    reports = [simulate(plan, str(tmp_path / plan.seed_strategy), title="t") for plan in plans]
    runs = [r["runs"][0] for r in reports]
    assert [r["seed_strategy"] for r in runs] == ["random", "typiclust"]
    assert runs[0]["settings"] != runs[1]["settings"] and runs[1]["settings"].endswith("/seed-typiclust")
    assert [x["labels"] for x in runs[1]["rounds"]] == [20, 30]


def test_a_records_environment_digests_the_whole_package():
    # It once digested raydm2/service alone, so runs before and after a change to a strategy or a preset named
    # one environment.
    import raydm2

    root = os.path.dirname(raydm2.__file__)
    files = {os.path.relpath(p, root) for p in source_files()}
    assert {"acquisition/strategies/dm2.py", "ledger/presets.py", "service/simulate.py"} <= files
