"""The one place that connects to Ray and decides how big actor pools may be.

`RAY_ADDRESS` set: connect to that cluster. Otherwise start an embedded local cluster bound to 127.0.0.1, without a
dashboard unless asked for (then on 127.0.0.1 only): nothing listens on a public interface.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from dataclasses import dataclass

import ray
import ray.data

from raydm2 import plugins as plugins_mod
from raydm2.errors import RayDM2Error

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
# How long the embedded cluster keeps an idle worker process. Ray keeps only as many workers as the node has CPUs
# and kills the others after 1 s idle; Ray Data's own actors and raydm2's actor pools already exceed that on a small
# machine, so every task of every stage started a new Python process that imported torch again (1–3 s of CPU each):
# the hash-join test of mean mixing went from 61 s to 28 s with workers kept a minute.
IDLE_WORKER_KEEP_MS = 60_000


_verbose = False


def set_verbose(verbose: bool) -> None:
    """Whether Ray's own output (INFO logs, Ray Data's plans and progress bars, workers' stdout and stderr) reaches
    this process's console. Off by default: raydm2 reports progress itself (`raydm2.progress`); Ray's warnings and
    errors still show."""
    global _verbose
    _verbose = verbose
    _quiet_ray()


def _quiet_ray() -> None:
    from ray.util.debug import log_once

    level = logging.INFO if _verbose else logging.WARNING
    # Said on every start of a local cluster, where token auth is what raydm2 wants.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        level if _verbose else logging.ERROR)
    if not _verbose:
        # Ray logs these once per process; using up their turn silences two false alarms: "progress bars disabled"
        # (raydm2 disabled them and prints its own lines) and "no available CPUs, the job will hang", which Ray
        # Data says whenever raydm2's actor pools hold every CPU, as they are sized to.
        log_once("ray_data_progress_manager_disabled")
        log_once("cpu_warning")
        # Ray Data's advice to raise a pool's block count when a small (cached, restricted) input has fewer blocks
        # than actors: nothing a user of raydm2 can act on.
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = _verbose
    context.print_on_execution_start = _verbose
    if not _verbose:
        # Ray Data's tuning hints (memory-hungry operators, slow shuffles): many lines each, for Ray Data's own
        # knobs, which raydm2 sets itself.
        context.issue_detectors_config.detectors = []
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:  # Ray Data's console handler is its own, at INFO
            if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
                handler.setLevel(level)
    for name in ("ray", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)


def connect(address: str | None = None, include_dashboard: bool = False, num_cpus: int | None = None,
            num_gpus: int | None = None, temp_dir: str | None = None) -> None:
    """Join the cluster at `address` (default `$RAY_ADDRESS`); with neither, start an embedded local cluster on
    127.0.0.1 (`num_cpus`, `num_gpus` and `temp_dir` size and place it). A local cluster is always a new one
    (`address="local"`): never one started by someone else on this machine, and it keeps Ray's token auth. It has
    no dashboard unless `include_dashboard`: a command's cluster lives as long as the command, and starting a
    dashboard costs about a second of a small machine's CPU.
    Idempotent: does nothing when this process is already connected."""
    global _started_local
    _read_parquet_without_footer_actors()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning", "MKL_CBWR": os.environ["MKL_CBWR"]}}
    plugins = plugins_mod.modules()
    if plugins:
        # Strategies of the user's own, outside raydm2: their model functions run in Ray's workers, which import
        # them from these uploaded copies.
        runtime_env["py_modules"] = plugins
    if address and address != "local":
        _join(address, runtime_env)
        return
    _pin_to_loopback()
    ray.init(
        address="local",
        _node_ip_address=LOCALHOST,
        include_dashboard=include_dashboard,
        dashboard_host=LOCALHOST,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        _temp_dir=temp_dir,
        runtime_env=runtime_env,
        log_to_driver=_verbose,
        logging_level=logging.INFO if _verbose else logging.WARNING,
        _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS},
    )
    _quiet_ray()
    _started_local = True


_started_local = False


def started_local() -> bool:
    """Whether this process runs on the embedded cluster it started (which cannot grow: no autoscaler)."""
    return _started_local


def _join(address: str, runtime_env: dict) -> None:
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available)

    if address.startswith(("http://", "https://")):
        raise RayDM2Error(f"RAY_ADDRESS {address} is a dashboard (job submission) address; commands that run on the "
                          "cluster need its Ray address (ray://HOST:10001, HOST:6379 or auto), or submit them as "
                          "jobs (`raydm2 schedule`, `ray job submit`)")
    host, _, port = address.rpartition(":")
    if "://" not in address and address != "auto" and port.isdigit():
        _reachable(host, int(port), f"the Ray cluster at {address}")
    # Ray sends its token to an explicit address only with RAY_AUTH_MODE=token; this turns that on whenever a
    # token is configured (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), as `ray start` does.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        ray.init(address=address, log_to_driver=_verbose, runtime_env=runtime_env,
                 logging_level=logging.INFO if _verbose else logging.WARNING)
        _quiet_ray()
    except ConnectionError as exc:
        cause = f" ({exc.__cause__})".splitlines()[0] if exc.__cause__ else ""
        raise RayDM2Error(f"cannot join the Ray cluster at {address}{cause}; check the address and, for a cluster "
                          "with token authentication, its token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None


def _reachable(host: str, port: int, what: str) -> None:
    """Fail in seconds, not Ray's minutes of retries, when nothing listens at host:port."""
    try:
        socket.create_connection((host or LOCALHOST, port), timeout=5).close()
    except OSError as exc:
        raise RayDM2Error(f"cannot reach {what} ({exc.strerror or exc}); is the cluster up, and is that its "
                          "address?") from None


def auth_headers() -> dict[str, str]:
    """The `Authorization` header of the Ray auth token configured for this user (RAY_AUTH_TOKEN, then
    RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token), whatever RAY_AUTH_MODE says; {} when there is none."""
    # Ray's own loader, so the precedence is Ray's; it lives in a private module.
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    try:
        return dict(AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True))
    except AuthenticationError as exc:  # RAY_AUTH_TOKEN_PATH names a missing or empty file
        raise RayDM2Error(str(exc).splitlines()[0]) from None


def job_client(address: str, explicit: bool = True):
    """A job-submission client for the Ray dashboard at `address` that sends the auth token whenever one is
    configured and gives up on a silent server after a minute. Refusals and unreachable addresses are one-line
    errors. With `explicit`, `address` wins over RAY_ADDRESS (Ray's client would take RAY_ADDRESS)."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    class TimedClient(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", (10, 60))
            return super()._do_request(method, endpoint, **kwargs)

    headers = auth_headers()
    hidden = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if explicit and k in os.environ}
    try:
        return TimedClient(address, headers=headers)
    except AuthenticationError:
        raise RayDM2Error(dashboard_refusal(address, bool(headers))) from None
    except (ConnectionError, requests.RequestException) as exc:
        raise RayDM2Error(f"cannot reach the Ray dashboard at {address} ({type(exc).__name__}); is the cluster up, "
                          "and is this its dashboard address (--address or RAY_ADDRESS, e.g. "
                          "http://127.0.0.1:8265)?") from None
    except RuntimeError as exc:  # e.g. "Version check returned 404": something else answers there
        raise RayDM2Error(f"{address} does not answer as a Ray dashboard: {str(exc).splitlines()[0]}") from None
    finally:
        os.environ.update(hidden)


def dashboard_refusal(address: str, sent_token: bool) -> str:
    if sent_token:
        return (f"the Ray dashboard at {address} rejected the auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                "~/.ray/auth_token): use the cluster's own token (`ray get-auth-token` on the head)")
    return (f"the Ray dashboard at {address} needs an auth token and none is configured: put the cluster's token in "
            "~/.ray/auth_token or RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it)")


def _read_parquet_without_footer_actors() -> None:
    """Ray Data's Parquet reader V2 (the default in Ray 2.60) starts 32 footer-reading actors for every
    `read_parquet`, whatever the number of files. Each acquisition reads the pool two or three times, and on a
    2-core machine those process start-ups cost a 2,000-image DM2 acquisition a third of its time: median 50.5 s
    with V2, 32.1 s with V1 (`benchmarks/acquire_bench.py startup`). A pool has one part per 20,000 images (50
    for a million), and the paths are passed explicitly, so V1's listing on the driver costs nothing. Ray's own
    switch, RAY_DATA_USE_DATASOURCE_V2, still wins when it is set."""
    if "RAY_DATA_USE_DATASOURCE_V2" not in os.environ:
        ray.data.DataContext.get_current().use_datasource_v2 = False


def _pin_to_loopback() -> None:
    """Ray on Linux replaces a loopback `_node_ip_address` with the routable interface address unless its
    multi-node support is off. The embedded cluster is single-node by definition, so switch that off here and
    for the Ray processes it spawns (they inherit this environment)."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


@dataclass(frozen=True)
class ActorPlan:
    """How an actor pool is laid out: `size` actors, each with these resources and torch threads."""

    size: int
    num_cpus: float
    num_gpus: float
    threads: int

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0


def plan_actors(requested: int | None = None, use_gpu: bool | None = None) -> ActorPlan:
    """Size an actor pool from the cluster.

    GPU actors (`use_gpu`, or by default when the cluster has GPUs) take a whole GPU each: `requested` of them, or
    one per GPU. On an autoscaling cluster whose GPU nodes are not up yet (`min_workers: 0`) the pool still asks
    for GPUs, and its pending actors make the autoscaler start them. On CPU the actors together take all but one
    free CPU, so Ray Data's read and decode tasks always have a CPU to run on; with `requested` actors the CPUs are
    split fractionally between them (a pool that holds every CPU hangs the pipeline).
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if use_gpu is None:
        use_gpu = gpus > 0
    if use_gpu:
        if gpus == 0 and started_local():
            raise RayDM2Error("compute.use_gpu is true but this machine's Ray cluster has no GPU (and no autoscaler "
                              "to start one)")
        size = requested or max(1, gpus)
        return ActorPlan(size=size, num_cpus=1.0, num_gpus=min(1.0, gpus / size) if gpus else 1.0, threads=1)
    free = float(ray.available_resources().get("CPU", 1.0))
    spare = max(0.5, free - 1.0) if free > 1.0 else max(0.25, free / 2)
    size = requested or max(1, int(spare))
    per_actor = max(0.1, math.floor(spare / size * 100) / 100)
    # The reservation only steers Ray's scheduler; torch's intra-op threads may use every core, since the decode
    # tasks beside the actors are light next to the model. Threads come from the cluster's CPUs, not the free ones:
    # a light task still finishing when a stage is planned would otherwise leave its actors one thread.
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return ActorPlan(size=size, num_cpus=per_actor, num_gpus=0.0, threads=max(1, int(cpus // size)))
