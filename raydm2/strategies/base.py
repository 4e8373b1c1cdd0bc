"""What every strategy takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raydm2.config import ProjectConfig
from raydm2.models import ModelSpec, spec_from_config
from raydm2.storage import Location


@dataclass
class AcquireOptions:
    """Execution knobs that must not change the selection (tests vary them to prove it)."""

    actors: int | None = None
    batch_size: int = 256
    blocks: int | None = None
    use_gpu: bool | None = None


@dataclass
class AcquireRequest:
    config: ProjectConfig
    checkpoint_uri: str
    round_: int
    # Every id selected before this round: never selected again.
    excluded: np.ndarray
    # (id, label) of the labeled set the checkpoint was trained on: coreset's initial centres, ALFA-Mix's anchors.
    labeled: pa.Table
    opts: AcquireOptions = field(default_factory=AcquireOptions)
    # Embeddings of this checkpoint computed before (DM2 and coreset reuse them).
    cache: Location | None = None

    @property
    def spec(self) -> ModelSpec:
        return spec_from_config(self.config)

    @property
    def budget(self) -> int:
        return self.config.strategy.budget


@dataclass
class AcquireResult:
    selection: pa.Table
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
