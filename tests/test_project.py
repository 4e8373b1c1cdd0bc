import json
import multiprocessing as mp
import os
import subprocess
import sys

import pytest

from raydm2.data import storage
from raydm2.service.cli import main as cli
from raydm2.ledger.config import ProjectConfig, parse_config_yaml
from raydm2.errors import ProjectLockedError, RayDM2Error, StateError
from raydm2.ledger.project import Project


def make_project(path, pools, **overrides):
    data = {"name": "t", "pool": pools["mnist_train"], "test_pool": pools["mnist_test"],
            "classes": [str(i) for i in range(10)]}
    data.update(overrides)
    return Project.create(str(path), ProjectConfig(**data))


def test_init_cli_writes_validated_yaml(tmp_path, sample_pools):
    proj = tmp_path / "p"
    rc = cli(["init", "--project", str(proj), "--preset", "mnist", "--pool", sample_pools["mnist_train"],
              "--set", "strategy.budget=7", "--set", "strategy.knn.k=5"])
    assert rc == 0
    cfg = Project.open(str(proj)).config
    assert cfg.strategy.budget == 7 and cfg.strategy.knn.k == 5 and cfg.image.size == 28
    assert abs(cfg.train.epsilon - 2 / 255) < 1e-12


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: [unclosed", "malformed"),
        ("name: t\npool: p\nclasses: [a, b]\nbogus: 1\n", "bogus"),
        ("name: t\npool: p\nclasses: [a, b]\nimage: {size: -3}\n", "image.size"),
        ("name: t\npool: p\nclasses: [a, b]\nstrategy: {budget: -1}\n", "strategy.budget"),
        ("name: t\npool: p\nclasses: [a, a]\n", "unique"),
        ("name: t\npool: p\nclasses: [a, b]\nstrategy: {name: nope}\n", "strategy.name"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_project_yaml_is_refused(text, message):
    with pytest.raises(RayDM2Error, match=message):
        parse_config_yaml(text)


def test_open_refuses_invalid_yaml_and_cli_exits_nonzero(tmp_path, sample_pools, capsys):
    make_project(tmp_path / "p", sample_pools)
    with open(tmp_path / "p" / "project.yaml", "a") as f:
        f.write("unknown_key: 1\n")
    assert cli(["status", "--project", str(tmp_path / "p")]) == 2
    assert "unknown_key" in capsys.readouterr().err


def test_init_refuses_existing_project(tmp_path, sample_pools):
    make_project(tmp_path / "p", sample_pools)
    before = (tmp_path / "p" / "project.yaml").read_text()
    with pytest.raises(RayDM2Error, match="already exists"):
        make_project(tmp_path / "p", sample_pools, name="other")
    assert (tmp_path / "p" / "project.yaml").read_text() == before


def test_state_machine_refuses_illegal_transitions(tmp_path, sample_pools):
    project = make_project(tmp_path / "p", sample_pools)
    with project.writing():
        project.new_round(1, "dm2")
        with pytest.raises(StateError, match="cannot become 'trained'"):
            project.update(1, state="trained")
        project.update(1, state="acquiring")
        project.update(1, state="selected", counts={"selected": 3})
        with pytest.raises(StateError):
            project.update(1, state="planned")
    m = project.manifest(1)
    assert m["state"] == "selected" and m["counts"] == {"selected": 3}
    assert [h["state"] for h in m["history"]] == ["planned", "acquiring", "selected"]


def test_writes_outside_the_lock_are_refused(tmp_path, sample_pools):
    project = make_project(tmp_path / "p", sample_pools)
    with pytest.raises(RuntimeError, match="writing"):
        project.new_round(0, "random")


def test_crash_between_temp_write_and_rename_keeps_old_file(tmp_path, monkeypatch):
    loc = storage.resolve(str(tmp_path / "f.json"))
    loc.write_json({"v": 1})

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(storage, "_rename_into_place", crash)
    with pytest.raises(OSError):
        loc.write_json({"v": 2})
    assert json.loads((tmp_path / "f.json").read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["f.json"]  # no temp file left behind


def _hold_lock(uri, ready, release):
    project = Project.open(uri)
    with project.writing():
        ready.set()
        release.wait(30)


def test_second_writer_gets_locked_error_and_stale_lock_is_taken_over(tmp_path, sample_pools):
    project = make_project(tmp_path / "p", sample_pools)
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(project.uri, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ProjectLockedError, match="project is locked"):
            with project.writing():
                pass
    finally:
        release.set()
        holder.join(30)
    # A lock left by a process that died without releasing it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "p" / ".lock"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "started_at": 0, "token": "x"}))
    with project.writing():
        project.new_round(0, "random")
    assert not lock.exists()


def test_seed_is_deterministic_and_refuses_bad_sizes(tmp_path, sample_pools, capsys):
    a = make_project(tmp_path / "a", sample_pools, seed=3)
    b = make_project(tmp_path / "b", sample_pools, seed=3)
    assert cli(["seed", "--project", a.uri, "--n", "25"]) == 0
    assert cli(["seed", "--project", b.uri, "--n", "25"]) == 0
    ids_a = a.selection(0).column("id").to_pylist()
    assert ids_a == b.selection(0).column("id").to_pylist() and len(set(ids_a)) == 25
    assert a.manifest(0)["state"] == "selected"
    assert cli(["seed", "--project", a.uri, "--n", "25"]) == 2
    assert "already seeded" in capsys.readouterr().err
    c = make_project(tmp_path / "c", sample_pools)
    assert cli(["seed", "--project", c.uri, "--n", "999999"]) == 2
    assert "larger than the pool" in capsys.readouterr().err
    assert c.round_ids() == []
    assert cli(["status", "--project", a.uri]) == 0
    assert "selected" in capsys.readouterr().out


def test_project_on_file_uri(tmp_path, sample_pools):
    project = make_project(f"file://{tmp_path}/p", sample_pools)
    with project.writing():
        project.new_round(0, "random")
    assert Project.open(f"file://{tmp_path}/p").round_ids() == [0]
    assert (tmp_path / "p" / "rounds" / "0000" / "manifest.json").exists()
