"""Acquisition: which unlabeled images to label next.

`acquire(request)` refuses a checkpoint that does not fit before any work, then runs the strategy the request's
settings name (`strategies/`, one module each) on an engine: `RayEngine` (distributed, the default) or
`LocalEngine` (one process, in memory). It writes nothing but new entries of the embedding cache, when the request
names one; the ledger (rounds, manifests) is the caller's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from raydm2.acquisition import strategies
from raydm2.acquisition.engine import Engine
from raydm2.acquisition.request import AcquireOptions, AcquireRequest, AcquireResult, StrategySettings
from raydm2.errors import RayDM2Error
from raydm2.models import checkpoint

__all__ = ["AcquireOptions", "AcquireRequest", "AcquireResult", "StrategySettings", "acquire"]


def acquire(request: AcquireRequest, opts: AcquireOptions | None = None, engine: str | Engine = "ray"
            ) -> AcquireResult:
    """Round `request.round`'s selection by the strategy `request.settings.name`, on the engine `engine` ("ray",
    "local", or an `Engine` built for this request)."""
    strategy = strategies.get(request.settings.name)
    checkpoint.load(request.checkpoint, request.model)
    if request.settings.candidates:
        request = replace(request, excluded=outside_candidates(request))
    if engine == "ray":
        from raydm2.acquisition.ray_engine import RayEngine

        engine = RayEngine(request, opts)
    elif engine == "local":
        from raydm2.acquisition.local_engine import LocalEngine

        engine = LocalEngine.from_pool(request)
    elif not isinstance(engine, Engine):
        raise RayDM2Error(f"unknown engine {engine!r}; choose ray or local")
    selection, warnings = strategy.plan(engine, request)
    return AcquireResult(selection=selection, counts={**engine.counts, "selected": selection.num_rows},
                         timings=engine.timings, index=engine.index, warnings=warnings)


def outside_candidates(request: AcquireRequest) -> np.ndarray:
    """`request.excluded` plus every unlabeled id outside this round's candidate subset: the `candidates`
    unlabeled ids ranked first by a hash of (seed, round, id), so each round draws afresh and any engine, any
    sharding draws the same. Reads only the pool's id column."""
    from raydm2.acquisition.hashing import PURPOSE_CANDIDATES, uniform
    from raydm2.acquisition.topk import TopK
    from raydm2.data import pool

    best, rest = TopK(request.settings.candidates), []
    for batch in pool.iter_batches(request.pool, ["id"]):
        ids = batch.column(0).to_numpy()
        ids = ids[~np.isin(ids, request.excluded)]
        rest.append(ids)
        best.push(pa.table({"id": ids, "score": uniform(ids, request.seed, request.round, PURPOSE_CANDIDATES)}))
    chosen = best.result().column("id").to_numpy()
    unlabeled = np.concatenate(rest) if rest else np.empty(0, np.int64)
    return np.union1d(request.excluded, unlabeled[~np.isin(unlabeled, chosen)])
