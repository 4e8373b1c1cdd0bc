import os
import time

import ray
import ray.data

from raydm2 import runtime


def test_local_cluster_binds_localhost(ray_cluster):
    nodes = ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)


def test_cpu_actor_plan_leaves_room_for_upstream_tasks(ray_cluster):
    free = ray.available_resources().get("CPU", 0)
    plan = runtime.plan_actors()
    assert not plan.uses_gpu
    assert plan.size * plan.num_cpus <= max(free - 1, 0.5) + 1e-9
    three = runtime.plan_actors(requested=3)
    assert three.size == 3 and three.size * three.num_cpus < free


@ray.remote(num_cpus=1)
class _CpuHolder:
    def ready(self) -> bool:
        return True


def test_cpu_actor_threads_do_not_depend_on_a_task_still_holding_a_cpu(ray_cluster):
    # A stage is planned right after the one before; whatever still holds a CPU then must not cut the new
    # stage's actors to one thread for the rest of the acquisition.
    cpus = ray.cluster_resources()["CPU"]
    quiet = runtime.plan_actors()
    holder = _CpuHolder.remote()
    try:
        ray.get(holder.ready.remote())
        busy = runtime.plan_actors()
    finally:
        ray.kill(holder)
    assert cpus >= 2 and busy.threads == quiet.threads == int(cpus // quiet.size)


def test_connect_selects_the_v1_parquet_reader_unless_ray_is_told_otherwise(ray_cluster, monkeypatch):
    ctx = ray.data.DataContext.get_current()
    monkeypatch.setattr(ctx, "use_datasource_v2", True)
    monkeypatch.delenv("RAY_DATA_USE_DATASOURCE_V2", raising=False)
    runtime.connect()
    assert ctx.use_datasource_v2 is False
    ctx.use_datasource_v2 = True
    monkeypatch.setenv("RAY_DATA_USE_DATASOURCE_V2", "1")
    runtime.connect()
    assert ctx.use_datasource_v2 is True


@ray.remote(num_cpus=0.25)
def _pid() -> int:
    import torch  # noqa: F401  (as raydm2's tasks do: a process worth keeping)

    time.sleep(0.5)  # long enough that the stage's tasks run side by side
    return os.getpid()


def test_the_local_cluster_keeps_idle_workers_for_the_next_stage(ray_cluster):
    """A stage of light tasks runs 4 per CPU. Ray's default keeps one idle worker per CPU and kills the others after
    1 s idle, so every stage started new Python processes that imported torch again."""
    cpus = int(ray.cluster_resources()["CPU"])
    workers = set(ray.get([_pid.remote() for _ in range(4 * cpus)]))
    assert len(workers) > cpus  # more than Ray's default keeps
    time.sleep(3)
    gone = [pid for pid in workers if not _alive(pid)]
    assert not gone, (workers, gone)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
