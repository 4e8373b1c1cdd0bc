"""Faults injected against a real local Ray cluster: killed actors, a killed acquisition process, an
interrupted label import, two writers at once and a stale lock (training worker kills: test_train.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import ray

from raydm2.acquisition import AcquireOptions, acquire
from raydm2.data import storage
from raydm2.ledger import labels
from raydm2.ledger.project import Project
from tests.helpers import cli, local_selection, snapshot, trained_project
from tests.test_acquire import LABELED, assert_same_selection, config


class ActorKiller(threading.Thread):
    """Kills, by its own pid, each Ray Data pool actor (`_MapWorker`) once it has been alive for `after` s. On a warm
    cluster a pool actor of this small acquisition is alive for well under a second (it is created, scores its
    batches and goes), so the default kills it the first time it is seen alive, when it has batches to do."""

    def __init__(self, after: float = 0.0, limit: int = 2, every: float = 0.05):
        super().__init__(daemon=True)
        self.after, self.limit, self.every = after, limit, every
        self.killed: list[tuple[str, int, float]] = []
        self.stop = threading.Event()

    def run(self):
        from ray._private.state import actors

        seen: dict[str, float] = {}
        done: set[str] = set()
        while not self.stop.is_set() and len(self.killed) < self.limit:
            for actor_id, info in actors().items():
                if "MapWorker" not in (info.get("ActorClassName") or "") or info.get("State") != "ALIVE":
                    continue
                first = seen.setdefault(actor_id, time.monotonic())
                if actor_id not in done and time.monotonic() - first >= self.after and info.get("Pid"):
                    os.kill(int(info["Pid"]), signal.SIGKILL)
                    done.add(actor_id)
                    self.killed.append((actor_id, int(info["Pid"]), time.monotonic()))
            time.sleep(self.every)


def test_actors_killed_mid_acquisition_do_not_change_the_selection(ray_cluster, sample_pools, trained_checkpoint):
    cfg = config(sample_pools["mnist_train"], knn={"mode": "exact"})
    killer = ActorKiller()
    killer.start()
    try:
        result = acquire(cfg.acquire_request(trained_checkpoint, 1, LABELED), AcquireOptions(actors=1, batch_size=64))
        finished = time.monotonic()
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed, "no pool actor was killed: the fault was not injected"
    assert all(at < finished for _, _, at in killer.killed)
    for _, pid, _ in killer.killed:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert_same_selection(result.selection, local_selection(cfg, trained_checkpoint, 1, LABELED))


def _wait_state(project_path: str, n: int, state: str, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        project = Project.open(project_path)
        if project.has_round(n) and project.manifest(n)["state"] == state:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"round {n} never reached {state!r}")


def _kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()  # reaped, so its pid is really gone (a zombie would still look alive to the stale-lock check)


def test_writers_refused_locks_taken_over_and_a_killed_acquisition_rerun(ray_cluster, tmp_path, sample_pools,
                                                                          trained_checkpoint):
    """One project through three process-level faults in a row (each driver is its own process, joined to the
    session's cluster through RAY_ADDRESS):
    1. two `round` processes at once: the second is refused with "project is locked";
    2. the first is SIGKILLed, leaving its lock behind: the next command takes the stale lock over;
    3. that `acquire` is SIGKILLed while the round is `acquiring`: the re-run completes it with the reference's
       selection, no duplicate ids, and one completed round."""
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    project = trained_project(str(tmp_path / "p"), sample_pools["mnist_train"], trained_checkpoint)
    lock = project.loc.join(".lock")

    first = cli("round", "--project", project.uri, env=env)
    deadline = time.monotonic() + 120
    while not (lock.exists() and f'"pid": {first.pid}' in lock.read_text()):
        assert time.monotonic() < deadline and first.poll() is None, "the first round never took the lock"
        time.sleep(0.1)
    second = cli("round", "--project", project.uri, env=env)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and "project is locked" in err, err[-2000:]
    _kill(first)
    assert lock.exists()  # left behind by a pid that no longer exists

    killed = cli("acquire", "--project", project.uri, "--actors", "1", "--batch-size", "32", env=env)
    _wait_state(project.uri, 1, "acquiring", killed)  # it got past the stale lock
    time.sleep(3)
    _kill(killed)
    assert Project.open(project.uri).manifest(1)["state"] == "acquiring", "killed too late: it had finished"

    rerun = cli("acquire", "--project", project.uri, env=env)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    project = Project.open(project.uri)
    assert project.round_ids() == [0, 1] and not lock.exists()
    manifest = project.manifest(1)
    assert manifest["state"] == "selected"
    assert [h["state"] for h in manifest["history"]].count("selected") == 1
    selection = project.selection(1)
    ids = selection.column("id").to_numpy()
    assert len(np.unique(ids)) == len(ids) == 15
    assert not np.isin(ids, project.selected_ids(before=1)).any()
    assert_same_selection(selection, local_selection(project.config, trained_checkpoint, 1,
                                                     project.selected_ids(before=1)))


def test_interrupted_label_import_keeps_previous_labels_and_retry_succeeds(tmp_path, sample_pools, monkeypatch):
    from raydm2.service import loop
    from raydm2.ledger.config import ProjectConfig

    project = Project.create(str(tmp_path / "p"), ProjectConfig(
        name="p", pool=sample_pools["mnist_train"], classes=[str(i) for i in range(10)]))
    loop.seed(project, 20)
    ids, truth = labels.oracle(project, 0)
    labels.import_labels(project, 0, ids[:10], truth[:10])
    before = snapshot(project.uri)

    def crash(src, dst):
        raise OSError("simulated crash between the temp write and the rename")

    monkeypatch.setattr(storage, "_rename_into_place", crash)
    with pytest.raises(OSError):
        labels.import_labels(project, 0, ids[10:], truth[10:])
    assert snapshot(project.uri) == before  # old labels intact, no temp file, manifest unchanged
    monkeypatch.undo()

    result = labels.import_labels(project, 0, ids[10:], truth[10:])
    assert result == {"labels": 20, "complete": True}
    assert sorted(project.labels(0).column("id").to_pylist()) == sorted(ids.tolist())
    assert project.manifest(0)["state"] == "labeled"
