"""Rounds as Ray jobs against a real cluster started with `ray start --head` (own ports and temp dir), plus
the complete label loop. The cluster is stopped through its own process group, never by process name."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from raydm2.ledger import labels
from raydm2.data import pool
from raydm2.data.images import decode
from raydm2.service.cli import main as cli
from raydm2.ledger.config import ProjectConfig
from raydm2.ledger.project import Project
from raydm2.service.schedule import run_every, schedule_once
from tests.helpers import seeded_project

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_auth_headers() -> dict[str, str]:
    """The job cluster runs with token authentication like cluster.yaml, on its own token: Ray 2.60's first local
    `ray.init()` writes ~/.ray/auth_token and `ray start` then turns token mode on by itself, so a cluster left to
    its defaults needs a token or not depending on which tests ran before."""
    return {"Authorization": f"Bearer {secrets.token_hex(32)}"}


@pytest.fixture(scope="module")
def job_cluster(tmp_path_factory, job_auth_headers):
    temp = tmp_path_factory.mktemp("raytmp")
    dash = free_port()
    bin_dir = os.path.dirname(sys.executable)
    # As if started from the activated environment: job entrypoints' `python` is this interpreter.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": job_auth_headers["Authorization"].removeprefix("Bearer ")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
         f"--temp-dir={temp}", "--num-cpus=2", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    from ray.job_submission import JobSubmissionClient

    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while True:
        try:
            client = JobSubmissionClient(address, headers=job_auth_headers)
            client.list_jobs()
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            time.sleep(2)
    yield client
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        # `ray start --block` can take half a minute to return after its processes got SIGTERM; nothing of the
        # cluster is needed after the tests, so it gets a short grace.
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for(client, sid, timeout=900):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = client.get_job_status(sid)
        except requests.ConnectionError:  # the dashboard dropped one poll (see raydm2.schedule); the next may land
            status = None
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            return status
        time.sleep(3)
    raise TimeoutError(sid)


def test_full_loop_with_a_round_submitted_as_a_ray_job(job_cluster, ray_cluster, tmp_path, sample_pools):
    """seed -> export -> label (a Label Studio export) -> round as a Ray job -> label -> round in-process.

    The project uses `adversarial: selection` (Algorithm 2), so round 1's acquisition (in the job) stores
    pseudo-labeled FGSM counterparts that round 2's training (in-process) must use."""
    from ray.job_submission import JobStatus

    budget = 20
    project = Project.create(str(tmp_path / "proj"), ProjectConfig(
        name="loop", pool=sample_pools["mnist_train"], test_pool=sample_pools["mnist_test"],
        classes=[str(i) for i in range(10)], strategy={"budget": budget},
        train={"epochs": 2, "epsilon": 2 / 255, "adversarial": "selection"}))
    assert cli(["seed", "--project", project.uri, "--n", "40"]) == 0
    assert schedule_once(job_cluster, project).submitted is False  # round 0 waits for labels

    tasks_path = tmp_path / "tasks.json"
    assert cli(["export", "--project", project.uri, "--format", "labelstudio", "--out", str(tasks_path)]) == 0
    truth = dict(zip(*labels.oracle(project, 0)))
    tasks = json.loads(tasks_path.read_text())
    for task in tasks:
        task["annotations"] = [{"result": [{"value": {"choices": [str(truth[task["data"]["raydm2_id"]])]}}]}]
    tasks_path.write_text(json.dumps(tasks))
    assert cli(["label", "--project", project.uri, "--file", str(tasks_path)]) == 0

    decision = schedule_once(job_cluster, project)
    assert decision.submitted and decision.submission_id == "raydm2-loop-1"
    repeat = schedule_once(job_cluster, project)  # while running: refused; the same id is never doubled
    assert not repeat.submitted
    assert wait_for(job_cluster, decision.submission_id) == JobStatus.SUCCEEDED, \
        job_cluster.get_job_logs(decision.submission_id)[-3000:]
    assert not schedule_once(job_cluster, project).submitted
    assert sum(j.submission_id == "raydm2-loop-1" for j in job_cluster.list_jobs()) == 1

    assert project.manifest(1)["state"] == "selected" and project.selection(1).num_rows == budget
    adv = pq.read_table(tmp_path / "proj" / "rounds" / "0001" / "adversarial.parquet")
    assert sorted(adv.column("id").to_pylist()) == sorted(project.selection(1).column("id").to_pylist())
    clean = pool.read_columns(project.config.pool, ["id", "image"], adv.column("id").to_numpy()).sort_by("id")
    adv = adv.sort_by("id")
    diff = np.stack([decode(a, 28, 1).astype(int) - decode(c, 28, 1).astype(int) for a, c in
                     zip(adv.column("image").to_pylist(), clean.column("image").to_pylist())])
    assert np.abs(diff).max() == 2 and set(adv.column("label").to_pylist()) <= set(range(10))
    labels.import_labels(project, 1, *labels.oracle(project, 1))
    assert cli(["round", "--project", project.uri]) == 0

    selected = np.concatenate([project.selection(n).column("id").to_numpy() for n in (0, 1, 2)])
    assert len(selected) == 40 + 2 * budget and len(np.unique(selected)) == len(selected)
    assert project.manifest(0)["counts"]["labels_trained_on"] == 40
    assert project.manifest(1)["counts"]["labels_trained_on"] == 40 + budget
    assert project.manifest(1)["metrics"]["train_rows"] == 40 + 2 * budget  # labels + counterparts
    assert project.manifest(0)["metrics"]["train_rows"] == 40  # the random seed round has no counterparts
    for n in (0, 1):
        metrics = project.manifest(n)["metrics"]
        assert 0 <= metrics["robust_accuracy"] <= metrics["clean_accuracy"] <= 1

    report_dir = tmp_path / "report"
    assert cli(["report", "--project", project.uri, "--out", str(report_dir)]) == 0
    pngs = sorted(p.name for p in report_dir.iterdir())
    assert pngs == ["accuracy.png", "map_round_2.png", "stages.png"]
    assert all((report_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    requery = schedule_once(job_cluster, project, "requery")
    assert requery.submitted and requery.submission_id.startswith("raydm2-loop-requery-1-")
    assert not schedule_once(job_cluster, project, "requery").submitted
    job_cluster.stop_job(requery.submission_id)  # only the submission is under test here


def ready_for_round_1(path: str, pool_uri: str, name: str) -> Project:
    """A project whose random round 0 is labeled, so its next round job can be submitted."""
    project = seeded_project(path, pool_uri, n=20, name=name)
    labels.import_labels(project, 0, *labels.oracle(project, 0))
    return project


class AnswerLosingRelay:
    """A TCP relay in front of the real dashboard that lets the first `POST /api/jobs/` reach it, waits for the
    dashboard's answer and closes both connections instead of passing the answer on: the dropped connection
    that failed a submission in CI, made to happen on purpose."""

    def __init__(self, dashboard_address: str):
        self.upstream = ("127.0.0.1", int(dashboard_address.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.answers_lost = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), which close() alone would not
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(downstream,), daemon=True).start()

    def _relay(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        head = downstream.recv(65536)
        lose = head.startswith(b"POST /api/jobs/") and not self.answers_lost
        upstream.sendall(head)
        threading.Thread(target=self._pipe, args=(downstream, upstream), daemon=True).start()
        if lose:
            upstream.recv(65536)  # the dashboard answered, so the job exists
            self.answers_lost += 1
            for sock in (downstream, upstream):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            return
        self._pipe(upstream, downstream)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_a_submission_whose_answer_was_lost_is_retried_and_lands_once(job_cluster, job_auth_headers, tmp_path,
                                                                     sample_pools):
    from ray.job_submission import JobSubmissionClient

    project = ready_for_round_1(str(tmp_path / "proj"), sample_pools["mnist_train"], "lost")
    relay = AnswerLosingRelay(job_cluster.get_address())
    try:
        decision = schedule_once(JobSubmissionClient(relay.address, headers=job_auth_headers), project)
    finally:
        relay.close()
    job_cluster.stop_job("raydm2-lost-1")  # only the submission is under test here
    assert relay.answers_lost == 1
    assert decision.submitted and decision.submission_id == "raydm2-lost-1", decision.reason
    assert [job.submission_id for job in job_cluster.list_jobs()].count("raydm2-lost-1") == 1


def test_the_scheduler_outlives_a_dashboard_that_stopped_answering(job_cluster, job_auth_headers, tmp_path,
                                                                  sample_pools, capsys):
    from ray.job_submission import JobSubmissionClient

    project = ready_for_round_1(str(tmp_path / "proj"), sample_pools["mnist_train"], "gone")
    relay = AnswerLosingRelay(job_cluster.get_address())
    client = JobSubmissionClient(relay.address, headers=job_auth_headers)
    relay.close()
    run_every(client, project.uri, interval_s=1, stop_after=1)
    assert f"skipped: the Ray dashboard at {relay.address} did not answer listing jobs in 3 attempts" \
        in capsys.readouterr().out
    assert all(not (job.submission_id or "").startswith("raydm2-gone-") for job in job_cluster.list_jobs())


def test_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(open(os.path.join(ROOT, "cluster.yaml")))
    validate_config(prepare_config(config))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert all("[gpu]" in cmd for cmd in config["setup_commands"] if "pip install -e" in cmd)
    assert all("--dashboard-host=127.0.0.1" in c and "RAY_AUTH_MODE=token" in c
               for c in config["head_start_ray_commands"] if "ray start" in c)
