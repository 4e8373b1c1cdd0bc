"""The public Python API: what `raydm2.__all__` promises is there, and docs/api.md's example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import ray

import raydm2
from raydm2.data import ingest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "api.md")


def test_every_public_name_resolves_and_the_version_is_the_package_version():
    from importlib.metadata import version

    assert raydm2.__version__ == version("raydm2")
    for name in raydm2.__all__:
        assert getattr(raydm2, name) is not None, name
    assert set(dir(raydm2)) == set(raydm2.__all__)


def test_the_documented_example_runs_as_written(ray_cluster, tmp_path):
    example = re.search(r"```python\n(.*?)```", open(DOCS).read(), re.S).group(1)
    ingest.ingest_idx_dataset(os.path.join(ingest.sample_data_dir(), "mnist"), str(tmp_path / "pools" / "mnist"),
                              "mnist")
    script = tmp_path / "example.py"
    script.write_text(example + "\nprint('SELECTED', selection.num_rows, 'RANKED', ranked.num_rows)\n")
    # A notebook on a machine whose cluster is already up: RAY_ADDRESS points at it.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "SELECTED 50 RANKED 50" in run.stdout
    project = raydm2.open_project(str(tmp_path / "proj"))
    assert project.round_ids() == [0, 1] and project.manifest(0)["state"] == "trained"
    assert project.manifest(1)["state"] == "selected"
