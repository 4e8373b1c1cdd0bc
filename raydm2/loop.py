"""Round orchestration over the ledger: seed, and (in later modules) train, acquire and their combination.

Each step takes the project lock, moves the round through its states and records counts and timings, so an
interrupted step leaves the round in a state from which re-running the same step is safe.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from raydm2 import pool
from raydm2.errors import RayDM2Error
from raydm2.hashing import PURPOSE_SEED, uniform
from raydm2.project import Project
from raydm2.topk import TopK


def seed(project: Project, n: int) -> pa.Table:
    """Round 0: `n` pool images picked uniformly at random, as a pure function of (seed, id).

    Streams the id column so memory stays O(n) for any pool size.
    """
    if n <= 0:
        raise RayDM2Error(f"seed size must be positive, got {n}")
    with project.writing():
        if project.has_round(0):
            raise RayDM2Error(
                f"round 0 already exists (state {project.manifest(0)['state']!r}); the project is already seeded"
            )
        started = time.perf_counter()
        best = TopK(n)
        rows = 0
        for batch in pool.iter_batches(project.config.pool, ["id"]):
            ids = batch.column(0).to_numpy()
            rows += len(ids)
            best.push(pa.table({"id": ids, "score": uniform(ids, project.config.seed, 0, PURPOSE_SEED)}))
        if rows == 0:
            raise RayDM2Error(f"pool {project.config.pool!r} is empty")
        if n > rows:
            raise RayDM2Error(f"seed size {n} is larger than the pool ({rows} images)")
        chosen = best.result()
        selection = pa.table(
            {
                "id": chosen.column("id"),
                "rank": pa.array(np.arange(chosen.num_rows, dtype=np.int32)),
                "score": chosen.column("score"),
            }
        )
        # The ledger is touched only once the selection exists, so a refused seed leaves no round behind.
        project.new_round(0, strategy="random")
        project.update(0, state="acquiring")
        project.write_selection(0, selection)
        project.update(
            0,
            state="selected",
            counts={"pool_rows": rows, "selected": selection.num_rows},
            timings={"select_s": round(time.perf_counter() - started, 4)},
        )
    return selection
