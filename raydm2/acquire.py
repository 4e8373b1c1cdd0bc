"""Acquisition's public entry: refuse a wrong checkpoint before any distributed work, then run the configured
strategy (`raydm2.strategies`) on the shared pipeline (`raydm2.pipeline`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raydm2 import checkpoint, strategies
from raydm2.config import ProjectConfig
from raydm2.models import spec_from_config
from raydm2.storage import Location
from raydm2.strategies.base import AcquireOptions, AcquireRequest, AcquireResult

__all__ = ["AcquireOptions", "AcquireResult", "acquire"]


def acquire(config: ProjectConfig, checkpoint_uri: str, round_: int, excluded: np.ndarray,
            labeled: pa.Table | None = None, opts: AcquireOptions | None = None,
            cache: Location | None = None) -> AcquireResult:
    """Round `round_`'s selection by `config.strategy.name` with the model in `checkpoint_uri`. Writes nothing
    but new entries of the embedding `cache`, when one is given."""
    select = strategies.get(config.strategy.name)
    checkpoint.load(checkpoint_uri, spec_from_config(config))
    labeled = labeled if labeled is not None else pa.table({"id": pa.array([], pa.int64()),
                                                            "label": pa.array([], pa.int64())})
    return select(AcquireRequest(config=config, checkpoint_uri=checkpoint_uri, round_=round_,
                                 excluded=np.asarray(excluded, np.int64), labeled=labeled,
                                 opts=opts or AcquireOptions(), cache=cache))
