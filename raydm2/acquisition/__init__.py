"""Acquisition: which unlabeled images to label next.

`acquire(request)` refuses a checkpoint that does not fit before any work, then runs the strategy the request's
settings name (`strategies/`, one module each) on an engine: `RayEngine` (distributed, the default) or
`LocalEngine` (one process, in memory). It writes nothing but new entries of the embedding cache, when the request
names one; the ledger (rounds, manifests) is the caller's.
"""

from __future__ import annotations

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
