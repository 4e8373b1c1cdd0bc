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
