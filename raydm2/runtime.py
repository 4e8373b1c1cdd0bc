"""The one place that connects to Ray and decides how big actor pools may be.

`RAY_ADDRESS` set: connect to that cluster. Otherwise start an embedded local cluster bound to 127.0.0.1 with the
dashboard on 127.0.0.1 only (nothing listens on a public interface).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import ray
import ray.data

from raydm2 import plugins as plugins_mod

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"


def connect(address: str | None = None, include_dashboard: bool | None = None, num_cpus: int | None = None,
            num_gpus: int | None = None, temp_dir: str | None = None) -> None:
    """Join the cluster at `address` (default `$RAY_ADDRESS`); with neither, start an embedded local cluster on
    127.0.0.1 (`num_cpus`, `num_gpus` and `temp_dir` size and place it). A local cluster is always a new one
    (`address="local"`): never one started by someone else on this machine. Idempotent: does nothing when this
    process is already connected."""
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
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
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
        log_to_driver=True,
    )


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
    """Size an actor pool from what the cluster has free.

    With GPUs: one actor per GPU (or `requested`), each with a whole GPU. On CPU: the actors together take all
    but one free CPU, so Ray Data's read and decode tasks always have a CPU to run on; with `requested` actors
    the CPUs are split fractionally between them (a pool that holds every CPU hangs the pipeline).
    """
    resources = ray.available_resources()
    gpus = int(resources.get("GPU", 0))
    if use_gpu is None:
        use_gpu = gpus > 0
    if use_gpu:
        if gpus == 0:
            raise RuntimeError("use_gpu was requested but the Ray cluster has no free GPU")
        size = requested or gpus
        return ActorPlan(size=size, num_cpus=1.0, num_gpus=min(1.0, gpus / size), threads=1)
    free = float(resources.get("CPU", 1.0))
    spare = max(0.5, free - 1.0) if free > 1.0 else max(0.25, free / 2)
    size = requested or max(1, int(spare))
    per_actor = max(0.1, math.floor(spare / size * 100) / 100)
    # The reservation only steers Ray's scheduler; torch's intra-op threads may use every free core, since
    # the decode tasks beside the actors are light next to the model.
    return ActorPlan(size=size, num_cpus=per_actor, num_gpus=0.0, threads=max(1, int(free // size)))
