"""Submitting rounds and re-queries as Ray jobs with deterministic submission ids.

A round job for project P that will produce round N is always `raydm2-P-N`; a re-query with round T's
checkpoint on UTC day D is `raydm2-P-requery-T-D`. A repeated submission (cron firing twice, a retry after a
network error) finds the existing job and does nothing. While any job of the project is still pending or
running, nothing new is submitted.

Ray's dashboard can close a connection without answering (seen once in CI on 2 cores, mid-submission; the cause
is not known). A call that got no answer is tried again a few times; the deterministic id makes a repeated
submission safe even when the dropped attempt had already created the job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import yaml

from raydm2.errors import RayDM2Error
from raydm2.ledger.project import Project

ACTIVE = {"PENDING", "RUNNING"}
DASHBOARD_ATTEMPTS = 3
DASHBOARD_RETRY_WAIT_S = 5.0
T = TypeVar("T")
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DashboardUnreachableError(RayDM2Error):
    """The Ray dashboard gave no answer to a job API call, however often it was tried."""


@dataclass(frozen=True)
class Decision:
    submission_id: str | None
    submitted: bool
    reason: str


def runtime_env() -> dict:
    """jobs/runtime_env.yaml with working_dir pointing at this source checkout (entrypoints live in jobs/)."""
    with open(os.path.join(SOURCE_ROOT, "jobs", "runtime_env.yaml")) as f:
        env = yaml.safe_load(f)
    env["working_dir"] = SOURCE_ROOT
    return env


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
    return f"raydm2-{project.config.name}-requery-{trained}-{day}", f"round {trained} is trained"


def schedule_once(client, project: Project, job: str = "round", entrypoint_args: list[str] | None = None
                  ) -> Decision:
    if job == "round":
        round_, why = next_round_job(project)
        sid = None if round_ is None else f"raydm2-{project.config.name}-{round_}"
    elif job == "requery":
        sid, why = next_requery_job(project)
    else:
        raise RayDM2Error(f"unknown job {job!r}; choose round or requery")
    if sid is None:
        return Decision(None, False, why)
    prefix = f"raydm2-{project.config.name}-"
    for job in _answered(client, "listing jobs", lambda attempt: client.list_jobs()):
        job_id = job.submission_id or ""
        status = str(getattr(job.status, "value", job.status))
        if job_id == sid:
            return Decision(sid, False, f"{sid} was already submitted (status {status})")
        if job_id.startswith(prefix) and status in ACTIVE:
            return Decision(sid, False, f"previous job {job_id} of this project is still {status}")
    entrypoint = " ".join(["python", f"jobs/{job}.py", "--project", project.uri, *(entrypoint_args or [])])

    def submit(attempt: int) -> Decision:
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=sid, runtime_env=runtime_env())
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
            if attempt > 1:  # the earlier attempt whose answer was lost created it
                return Decision(sid, True, f"submitted {sid} (the dashboard lost the first answer): {entrypoint}")
            return Decision(sid, False, f"{sid} was already submitted")  # a concurrent scheduler was first
        return Decision(sid, True, f"submitted {sid}: {entrypoint}")

    return _answered(client, f"submitting {sid}", submit)


def _answered(client, what: str, call: Callable[[int], T]) -> T:
    """call(attempt) until the dashboard answers; attempt > 1 means an earlier call got no answer."""
    import requests  # a dependency of ray[default], which JobSubmissionClient needs anyway

    attempt = 1
    while True:
        try:
            return call(attempt)
        except requests.ConnectionError as exc:
            if attempt >= DASHBOARD_ATTEMPTS:
                raise DashboardUnreachableError(
                    f"the Ray dashboard at {client.get_address()} did not answer {what} "
                    f"in {DASHBOARD_ATTEMPTS} attempts: {exc}") from exc
        time.sleep(DASHBOARD_RETRY_WAIT_S)
        attempt += 1


def parse_interval(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value, unit = float(text[:-1]), text[-1]
        if unit not in units or value <= 0:
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
        print(time.strftime("%Y-%m-%d %H:%M:%S"), reason, flush=True)
        ticks += 1
        if stop_after is None or ticks < stop_after:
            time.sleep(interval_s)
