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
from raydm2.data.images import ImageSpec, decode
from raydm2.service.cli import main as cli
from raydm2.ledger.config import ProjectConfig
from raydm2.ledger.project import Project
from raydm2.service.schedule import run_every, schedule_once
from tests.helpers import open_in_chromium, seeded_project

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


"""Rounds as Ray jobs against a real cluster started the way a user starts one (`ray start --head` with the token
that `ray get-auth-token --generate` leaves in ~/.ray/auth_token; own ports and RAY_TMPDIR), scheduled by
`raydm2 schedule` from a shell as cron would run it, plus the complete label loop. The cluster is stopped
through its own process group, never by process name."""

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from raydm2.data import pool
from raydm2.data.images import ImageSpec, decode
from raydm2.ledger import labels
from raydm2.ledger.project import Project
from raydm2.service.cli import main as cli
from raydm2.service.schedule import entrypoint, project_prefix, run_every, schedule_once
from tests.helpers import seeded_project, trained_project

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str  # the dashboard: http://127.0.0.1:PORT
    token: str
    home: str  # a user's home whose ~/.ray/auth_token holds the token
    tmpdir: str  # the cluster's RAY_TMPDIR (it writes ray_current_cluster there)
    client: object  # a JobSubmissionClient that sends the token

    def user_env(self, **extra) -> dict:
        """The environment of the user's shell: the token only in ~/.ray/auth_token, no RAY_AUTH_MODE."""
        env = {**os.environ, "HOME": self.home, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_TMPDIR": self.tmpdir}
        for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(name, None)
        return {**env, **extra}


def user_command(cluster: Cluster, *argv: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=cluster.user_env(**env), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def job_cluster(tmp_path_factory):
    """`ray get-auth-token --generate`, then `ray start --head`: token auth turns itself on from the token file.
    An earlier job is already listed when the tests start, as on any long-lived cluster."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    home = tmp_path_factory.mktemp("home")
    tmpdir = tempfile.mkdtemp(prefix="jc-", dir="/tmp")  # Ray's socket paths must stay short
    dash = free_port()
    cluster = Cluster(f"http://127.0.0.1:{dash}", "", str(home), tmpdir, None)
    made = user_command(cluster, "ray", "get-auth-token", "--generate")
    assert made.returncode == 0, made.stderr
    cluster.token = (home / ".ray" / "auth_token").read_text().strip()
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
         f"--ray-client-server-port={free_port()}", "--num-cpus=2", "--disable-usage-stats"],
        env={**cluster.user_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while True:
        try:
            cluster.client = JobSubmissionClient(cluster.address, headers=auth(cluster))
            cluster.client.list_jobs()
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            time.sleep(2)
    earlier = cluster.client.submit_job(entrypoint="python -c \"print('an earlier job')\"")
    assert wait_for(cluster.client, earlier) == JobStatus.SUCCEEDED
    yield cluster
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        # `ray start --block` can take half a minute to return after its processes got SIGTERM; nothing of the
        # cluster is needed after the tests, so it gets a short grace.
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(tmpdir, ignore_errors=True)


def wait_for(client, sid, timeout=900):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = client.get_job_status(sid)
        except requests.ConnectionError:  # the dashboard dropped one poll (see raydm2.service.schedule)
            status = None
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            return status
        time.sleep(3)
    raise TimeoutError(sid)


def schedule(cluster: Cluster, project_uri: str, *extra: str) -> subprocess.CompletedProcess:
    """`raydm2 schedule --once` from the user's shell, with the token only in ~/.ray/auth_token."""
    return user_command(cluster, "raydm2", "schedule", "--project", project_uri, "--address", cluster.address,
                        "--once", *extra, timeout=300)


def submitted_id(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 0 and run.stdout.startswith("submitted "), run.stdout + run.stderr[-3000:]
    return run.stdout.split()[1].rstrip(":;")


def test_scheduled_rounds_and_a_requery_succeed_on_a_token_cluster_from_a_path_with_shell_characters(
        job_cluster, ray_cluster, tmp_path, sample_pools):
    """seed -> export -> label (a Label Studio export) -> scheduled round job -> label -> scheduled round job ->
    scheduled re-query, every job SUCCEEDED, from a project path that a shell would otherwise run as code.

    The project uses `adversarial: selection` (Algorithm 2), so round 1's acquisition stores pseudo-labeled FGSM
    counterparts that round 2's training must use."""
    from ray.job_submission import JobStatus

    cluster, client = job_cluster, job_cluster.client
    budget = 20
    where = tmp_path / "my projects; echo INJECTED-$((6*7)); (x*)"
    where.mkdir()
    project_uri = str(where / "loop")
    assert cli(["init", "--project", project_uri, "--preset", "mnist", "--name", "loop",
                "--pool", sample_pools["mnist_train"], "--test-pool", sample_pools["mnist_test"],
                "--set", f"strategy.budget={budget}", "--set", "train.epochs=2",
                "--set", "train.adversarial=selection"]) == 0
    project = Project.open(project_uri)
    assert cli(["seed", "--project", project.uri, "--n", "40"]) == 0
    waiting = schedule(cluster, project.uri)
    assert waiting.returncode == 0 and "waiting for labels" in waiting.stdout  # round 0 has no labels yet

    tasks_path = tmp_path / "tasks.json"
    assert cli(["export", "--project", project.uri, "--format", "labelstudio", "--out", str(tasks_path)]) == 0
    truth = dict(zip(*labels.oracle(project, 0)))
    tasks = json.loads(tasks_path.read_text())
    for task in tasks:
        task["annotations"] = [{"result": [{"value": {"choices": [str(truth[task["data"]["raydm2_id"]])]}}]}]
    tasks_path.write_text(json.dumps(tasks))
    assert cli(["label", "--project", project.uri, "--file", str(tasks_path)]) == 0

    first = submitted_id(schedule(cluster, project.uri))
    assert first == project_prefix(project) + "1" and first.startswith("raydm2-loop-")
    repeat = schedule(cluster, project.uri)  # while it runs: refused; the same id is never doubled
    assert repeat.returncode == 0 and not repeat.stdout.startswith("submitted"), repeat.stdout
    assert wait_for(client, first) == JobStatus.SUCCEEDED, client.get_job_logs(first)[-3000:]
    # `ray job logs` of a round is raydm2's own lines: what it did, each stage with its seconds, no Ray chatter.
    log = client.get_job_logs(first).splitlines()
    assert len(log) <= 15 and not [line for line in log if " INFO " in line or "(pid=" in line], log
    assert any(line.startswith("round 1: selected 20 images with dm2") for line in log), log
    assert not schedule(cluster, project.uri).stdout.startswith("submitted")
    assert sum(j.submission_id == first for j in client.list_jobs()) == 1

    project = Project.open(project.uri)
    assert project.manifest(1)["state"] == "selected" and project.selection(1).num_rows == budget
    adv = pq.read_table(os.path.join(project.uri, "rounds", "0001", "adversarial.parquet"))
    assert sorted(adv.column("id").to_pylist()) == sorted(project.selection(1).column("id").to_pylist())
    clean = pool.read_columns(project.config.pool, ["id", "image"], adv.column("id").to_numpy()).sort_by("id")
    adv = adv.sort_by("id")
    diff = np.stack([decode(a, ImageSpec(28, 1)).astype(int) - decode(c, ImageSpec(28, 1)).astype(int) for a, c in
                     zip(adv.column("image").to_pylist(), clean.column("image").to_pylist())])
    assert np.abs(diff).max() == 2 and set(adv.column("label").to_pylist()) <= set(range(10))

    assert cli(["label", "--project", project.uri, "--oracle"]) == 0
    second = submitted_id(schedule(cluster, project.uri))
    assert second == project_prefix(project) + "2"
    assert wait_for(client, second) == JobStatus.SUCCEEDED, client.get_job_logs(second)[-3000:]

    project = Project.open(project.uri)
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
    files = sorted(p.name for p in report_dir.iterdir())
    assert files == ["accuracy.png", "classes.png", "map_round_2.png", "report.html", "stages.png"]
    assert all((report_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files if p.endswith(".png"))
    page = open_in_chromium(str(report_dir / "report.html"))  # renders in a real browser, every image loads
    assert page["title"] == "raydm2 report: loop" and len(page["images"]) == 4
    assert all(loaded and width > 300 for loaded, width in page["images"])
    assert "Selection map, round 2" in page["text"] and "Labels per class" in page["text"]

    requery = submitted_id(schedule(cluster, project.uri, "--job", "requery"))
    assert requery.startswith(project_prefix(project) + "requery-1-")  # round 1 is the latest trained
    assert not schedule(cluster, project.uri, "--job", "requery").stdout.startswith("submitted")
    assert wait_for(client, requery) == JobStatus.SUCCEEDED, client.get_job_logs(requery)[-3000:]
    assert len(os.listdir(os.path.join(project.uri, "requeries"))) == 1

    for sid, job in ((first, "round"), (second, "round"), (requery, "requery")):
        info = client.get_job_info(sid)
        assert info.entrypoint == entrypoint(job, project)
        assert shlex.split(info.entrypoint) == ["python", "-m", "raydm2.service.jobs", job, "--project", project.uri]
        assert info.metadata["raydm2_project"] == project.uri and info.metadata["raydm2_job"] == job
        assert "INJECTED-42" not in client.get_job_logs(sid)


def test_a_failed_round_job_is_submitted_again_as_the_next_attempt(job_cluster, tmp_path, sample_pools):
    from ray.job_submission import JobStatus

    client = job_cluster.client
    project = ready_for_round_1(str(tmp_path / "proj"), sample_pools["mnist_train"], "retry")
    sid = project_prefix(project) + "1"
    client.submit_job(entrypoint="python -c 'raise SystemExit(3)'", submission_id=sid)  # a round that failed
    assert wait_for(client, sid) == JobStatus.FAILED
    decision = schedule_once(client, project)
    assert decision.submitted and decision.submission_id == sid + "-a2"
    assert "attempt 1 ended FAILED, so this is attempt 2" in decision.reason
    client.stop_job(sid + "-a2")  # only the submission is under test here
    again = schedule_once(client, project)
    assert not again.submitted or again.submission_id == sid + "-a3"
    if again.submitted:
        client.stop_job(again.submission_id)


def test_two_projects_of_one_name_are_told_apart(job_cluster, tmp_path, sample_pools):
    client = job_cluster.client
    a = ready_for_round_1(str(tmp_path / "a"), sample_pools["mnist_train"], "twin")
    b = ready_for_round_1(str(tmp_path / "b"), sample_pools["mnist_train"], "twin")
    first, second = schedule_once(client, a), schedule_once(client, b)
    for decision in (first, second):
        client.stop_job(decision.submission_id)  # only the submissions are under test here
    assert first.submitted and second.submitted, (first.reason, second.reason)
    assert first.submission_id != second.submission_id


def test_failures_to_reach_or_authenticate_are_one_line(job_cluster, tmp_path, sample_pools):
    project = ready_for_round_1(str(tmp_path / "proj"), sample_pools["mnist_train"], "auth")
    stranger = tmp_path / "stranger"
    (stranger / ".ray").mkdir(parents=True)
    (stranger / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    cases = [
        ({"HOME": str(tmp_path / "nobody")}, job_cluster.address, "needs an auth token and none is configured"),
        ({"HOME": str(stranger)}, job_cluster.address, "rejected the auth token"),
        ({}, f"http://127.0.0.1:{free_port()}", "cannot reach the Ray dashboard at http://127.0.0.1:"),
        ({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, job_cluster.address, "RAY_AUTH_TOKEN_PATH is set"),
    ]
    for env, address, message in cases:
        run = user_command(job_cluster, "raydm2", "schedule", "--project", project.uri, "--address", address,
                           "--once", timeout=120, **env)
        assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    # --every is checked before any connection is tried
    run = user_command(job_cluster, "raydm2", "schedule", "--project", project.uri, "--address",
                       f"http://127.0.0.1:{free_port()}", "--every", "0h", timeout=60)
    assert run.returncode == 2 and "interval '0h'" in run.stderr, run.stderr
    # a command joining a cluster address nothing listens at fails in seconds, in one line
    started = time.monotonic()
    run = user_command(job_cluster, "raydm2", "train", "--project", project.uri, timeout=120,
                       RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    assert run.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in run.stderr, run.stderr[-2000:]
    assert time.monotonic() - started < 60 and len(run.stderr.strip().splitlines()) == 1


def test_a_command_without_ray_address_starts_its_own_cluster_beside_a_hand_started_one(
        job_cluster, tmp_path, sample_pools, trained_checkpoint):
    """The hand-started cluster wrote ray_current_cluster into the RAY_TMPDIR the command also uses: Ray's default
    `ray.init()` would have joined it."""
    assert os.path.exists(os.path.join(job_cluster.tmpdir, "ray", "ray_current_cluster"))
    drivers = {j.job_id for j in job_cluster.client.list_jobs() if str(j.type) in ("JobType.DRIVER", "DRIVER")}
    project = trained_project(str(tmp_path / "p"), sample_pools["mnist_train"], trained_checkpoint)
    run = user_command(job_cluster, "raydm2", "acquire", "--project", project.uri, "--actors", "1", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert Project.open(project.uri).manifest(1)["state"] == "selected"
    after = {j.job_id for j in job_cluster.client.list_jobs() if str(j.type) in ("JobType.DRIVER", "DRIVER")}
    assert after == drivers  # no driver of ours ever connected to the hand-started cluster


def test_the_documented_job_commands_run_as_written(job_cluster, tmp_path, sample_pools):
    """docs/jobs.md's tested block, verbatim, in a user's shell whose token is only in ~/.ray/auth_token."""
    from ray.job_submission import JobStatus

    text = open(os.path.join(ROOT, "docs", "jobs.md")).read()
    block = text.split("<!-- tested: tests/test_jobs.py::test_the_documented_job_commands_run_as_written -->", 1)[1]
    commands = block.split("```bash\n", 1)[1].split("```", 1)[0]
    project = ready_for_round_1(str(tmp_path / "proj"), sample_pools["mnist_train"], "docs")
    run = user_command(job_cluster, "bash", "-euo", "pipefail", "-c", commands, timeout=900,
                       RAY_ADDRESS=job_cluster.address, PROJECT=project.uri)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "succeeded" in run.stdout.lower()
    assert "waiting for labels, nothing to submit" in run.stdout  # round 1 was made by the submitted job
    project = Project.open(project.uri)
    assert project.manifest(1)["state"] == "selected"
    jobs = [j for j in job_cluster.client.list_jobs() if (j.entrypoint or "").endswith(shlex.quote(project.uri))]
    assert jobs and all(j.status == JobStatus.SUCCEEDED for j in jobs)


def auth(cluster: Cluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.token}"}


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


def test_a_submission_whose_answer_was_lost_is_retried_and_lands_once(job_cluster, tmp_path, sample_pools):
    from ray.job_submission import JobSubmissionClient

    project = ready_for_round_1(str(tmp_path / "proj"), sample_pools["mnist_train"], "lost")
    sid = project_prefix(project) + "1"
    relay = AnswerLosingRelay(job_cluster.address)
    try:
        decision = schedule_once(JobSubmissionClient(relay.address, headers=auth(job_cluster)), project)
    finally:
        relay.close()
    job_cluster.client.stop_job(sid)  # only the submission is under test here
    assert relay.answers_lost == 1
    assert decision.submitted and decision.submission_id == sid, decision.reason
    assert [job.submission_id for job in job_cluster.client.list_jobs()].count(sid) == 1


def test_the_scheduler_outlives_a_dashboard_that_stopped_answering(job_cluster, tmp_path, sample_pools, capsys):
    from ray.job_submission import JobSubmissionClient

    project = ready_for_round_1(str(tmp_path / "proj"), sample_pools["mnist_train"], "gone")
    relay = AnswerLosingRelay(job_cluster.address)
    client = JobSubmissionClient(relay.address, headers=auth(job_cluster))
    relay.close()
    run_every(client, project.uri, interval_s=1, stop_after=1)
    assert f"skipped: the Ray dashboard at {relay.address} did not answer listing jobs in 3 attempts" \
        in capsys.readouterr().out
    assert all(not (job.submission_id or "").startswith("raydm2-gone-") for job in job_cluster.client.list_jobs())


def test_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(open(os.path.join(ROOT, "cluster.yaml")))
    validate_config(prepare_config(config))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert all("[gpu]" in cmd for cmd in config["setup_commands"] if "pip install -e" in cmd)
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("export RAY_AUTH_MODE=token;" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in starts[0]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the head passes it to the workers
    assert {".venv", ".git", "demo_project"} <= set(config["rsync_exclude"]) and ".gitignore" in config["rsync_filter"]
    # The cluster installs the Ray and torch this client runs, so the two agree.
    import ray
    import torch

    pins = " ".join(config["setup_commands"])
    assert f"ray[default,train,data]=={ray.__version__}" in pins
    assert f"torch=={torch.__version__.split('+')[0]}" in pins
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] > 0


def test_the_kubernetes_cronjob_in_the_docs_uses_only_cronjob_fields():
    """Every key of docs/jobs.md's CronJob is a field of the kubernetes client's batch/v1 models (the API's own
    schema, as the official Python client generates it), with `concurrencyPolicy: Forbid`."""
    from kubernetes import client as k8s

    text = open(os.path.join(ROOT, "docs", "jobs.md")).read()
    manifest = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "CronJob"
    assert manifest["spec"]["concurrencyPolicy"] == "Forbid"

    def check(value, model: str, where: str) -> None:
        cls = getattr(k8s, model)
        fields = {json_name: cls.openapi_types[attr] for attr, json_name in cls.attribute_map.items()}
        for key, sub in value.items():
            assert key in fields, f"{where}.{key} is not a field of {model}"
            kind = fields[key]
            if kind.startswith("list[V1"):
                for item in sub:
                    check(item, kind[5:-1], f"{where}.{key}[]")
            elif kind.startswith("V1"):
                check(sub, kind, f"{where}.{key}")

    check(manifest, "V1CronJob", "CronJob")
