"""Submitting rounds and re-queries as Ray jobs, so a cron line (or `--every`) keeps a project moving.

Submission ids are deterministic: a round job of project P at URI U that will produce round N is
`raydm2-P-<digest of U>-N`, and a re-query with round T's checkpoint on UTC day D is `raydm2-P-<digest>-requery-T-D`.
The digest keeps two projects of one name apart on a cluster. A job for that id that is pending, running or
succeeded makes a repeat a no-op; after a FAILED or STOPPED one, the next attempt goes in as `<id>-a2`, `-a3`, ...
While any job of the project is pending or running, nothing new is submitted.

The entrypoint is an argument list (`python -m raydm2.service.jobs round --project URI`), quoted with `shlex.join`
for the job's shell, so no path becomes shell code. The cluster's `python` must have raydm2 installed (cluster.yaml
installs it); nothing is uploaded. Jobs carry metadata (project, round, strategy, raydm2 version) for `ray job list`.

Ray's dashboard can close a connection without answering (seen once in CI on 2 cores, mid-submission; the cause
is not known). A call that got no answer is tried again a few times; the deterministic id makes a repeated
submission safe even when the dropped attempt had already created the job.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from raydm2.errors import RayDM2Error
from raydm2.ledger.project import Project
from raydm2.service.console import say

ACTIVE = {"PENDING", "RUNNING"}
ENDED_BADLY = {"FAILED", "STOPPED"}
DASHBOARD_ATTEMPTS = 3
DASHBOARD_RETRY_WAIT_S = 5.0
JOBS = ("round", "requery")
T = TypeVar("T")


class DashboardUnreachableError(RayDM2Error):
    """The Ray dashboard gave no answer to a job API call, however often it was tried."""


@dataclass(frozen=True)
class Decision:
    submission_id: str | None
    submitted: bool
    reason: str


def project_prefix(project: Project) -> str:
    """`raydm2-<name>-<digest of the project's URI>-`: what every submission id of this project starts with."""
    return f"raydm2-{project.config.name}-{hashlib.sha256(project.uri.encode()).hexdigest()[:8]}-"


def next_round_job(project: Project) -> tuple[int | None, str]:
    """(round the next `round` job would produce, or None, and why)."""
    latest = project.latest_round()
    if latest is None:
        return None, "the project has no rounds; seed it first"
    state = project.manifest(latest)["state"]
    if state in ("labeled", "trained"):
        return latest + 1, f"round {latest} is {state}"
    return None, f"round {latest} is {state!r}: waiting for labels, nothing to submit"


def next_requery_job(project: Project, now: float | None = None) -> tuple[str | None, str]:
    trained = project.latest_in_state("trained")
    if trained is None:
        return None, "no trained round yet: nothing to re-query with"
    day = time.strftime("%Y%m%d", time.gmtime(now if now is not None else time.time()))
    return f"requery-{trained}-{day}", f"round {trained} is trained"


def entrypoint(job: str, project: Project) -> str:
    """The job's command line: an argument list quoted for the shell Ray runs it with."""
    return shlex.join(["python", "-m", "raydm2.service.jobs", job, "--project", project.uri])


def schedule_once(client, project: Project, job: str = "round") -> Decision:
    from raydm2 import __version__

    if job == "round":
        round_, why = next_round_job(project)
        key = None if round_ is None else str(round_)
    elif job == "requery":
        key, why = next_requery_job(project)
    else:
        raise RayDM2Error(f"unknown job {job!r}; choose {' or '.join(JOBS)}")
    if key is None:
        return Decision(None, False, why)
    prefix = project_prefix(project)
    sid = prefix + key
    attempts: dict[int, str] = {}
    for info in _answered(client, "listing jobs", lambda attempt: client.list_jobs()):
        job_id = info.submission_id or ""
        status = str(getattr(info.status, "value", info.status))
        attempt = _attempt_of(job_id, sid)
        if attempt is not None:
            attempts[attempt] = status
        elif job_id.startswith(prefix) and status in ACTIVE:
            return Decision(sid, False, f"previous job {job_id} of this project is still {status}")
    if attempts:
        last = max(attempts)
        if attempts[last] not in ENDED_BADLY:
            return Decision(sid, False, f"{_with_attempt(sid, last)} was already submitted (status {attempts[last]})")
        retry = f"; attempt {last} ended {attempts[last]}, so this is attempt {last + 1}"
        sid = _with_attempt(sid, last + 1)
    else:
        retry = ""
    command = entrypoint(job, project)
    metadata = {"raydm2_project": project.uri, "raydm2_job": job, "raydm2_key": key,
                "raydm2_strategy": project.config.strategy.name, "raydm2_version": __version__}

    def submit(attempt: int) -> Decision:
        try:
            client.submit_job(entrypoint=command, submission_id=sid, metadata=metadata,
                              runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
            if attempt > 1:  # the earlier attempt whose answer was lost created it
                return Decision(sid, True, f"submitted {sid}{retry} (the dashboard lost the first answer): {command}")
            return Decision(sid, False, f"{sid} was already submitted")  # a concurrent scheduler was first
        return Decision(sid, True, f"submitted {sid}{retry}: {command}")

    return _answered(client, f"submitting {sid}", submit)


def _with_attempt(sid: str, attempt: int) -> str:
    return sid if attempt == 1 else f"{sid}-a{attempt}"


def _attempt_of(job_id: str, sid: str) -> int | None:
    """1 for `sid` itself, n for `sid-an`, None for any other id."""
    if job_id == sid:
        return 1
    match = re.fullmatch(re.escape(sid) + r"-a(\d+)", job_id)
    return int(match.group(1)) if match else None


def _answered(client, what: str, call: Callable[[int], T]) -> T:
    """call(attempt) until the dashboard answers; attempt > 1 means an earlier call got no answer."""
    import requests  # a dependency of ray[default], which the job client needs anyway
    from ray.exceptions import AuthenticationError

    from raydm2.runtime import dashboard_refusal

    attempt = 1
    while True:
        try:
            return call(attempt)
        except AuthenticationError:
            raise RayDM2Error(dashboard_refusal(client.get_address(), True)) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt >= DASHBOARD_ATTEMPTS:
                raise DashboardUnreachableError(
                    f"the Ray dashboard at {client.get_address()} did not answer {what} "
                    f"in {DASHBOARD_ATTEMPTS} attempts: {type(exc).__name__}") from None
        time.sleep(DASHBOARD_RETRY_WAIT_S)
        attempt += 1


def parse_interval(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value, unit = float(text[:-1]), text[-1]
        if unit not in units or not value > 0 or value == float("inf"):
            raise ValueError
    except (ValueError, IndexError):
        raise RayDM2Error(f"interval {text!r} must look like 30m, 24h or 7d") from None
    return value * units[unit]


def run_every(client, project_uri: str, interval_s: float, job: str = "round", stop_after: int | None = None) -> None:
    """Check every `interval_s`; the project is re-read each time so new labels are seen. A dashboard that does
    not answer (a head node restarting) costs one tick, not the scheduler."""
    ticks = 0
    while stop_after is None or ticks < stop_after:
        try:
            reason = schedule_once(client, Project.open(project_uri), job).reason
        except DashboardUnreachableError as exc:
            reason = f"skipped: {exc}"
        say(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {reason}")
        ticks += 1
        if stop_after is None or ticks < stop_after:
            time.sleep(interval_s)
