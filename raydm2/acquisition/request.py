"""What an acquisition takes and gives back: the request (pool, model, checkpoint, round, the strategy's settings,
what is already labeled), execution options that must never change the selection, and the result."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from raydm2.data.images import ImageSpec
from raydm2.data.storage import Location
from raydm2.models.registry import ModelSpec


class StrategySettings(BaseModel):
    """Base of every strategy's own settings model (`strategy:` in project.yaml). A strategy adds its fields and
    narrows `name` to a `Literal` of its registered name."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    name: str
    budget: int = Field(100, gt=0, le=10_000_000)
    # Score a fresh seeded random subset of this many unlabeled images each round instead of the whole pool (the
    # protocol of NoiseStability's and several baselines' official code); None: the whole pool.
    candidates: int | None = Field(None, gt=0)


@dataclass(frozen=True)
class AcquireOptions:
    """Execution knobs that must not change the selection (tests vary them to prove it)."""

    actors: int | None = None
    batch_size: int = 256
    blocks: int | None = None
    use_gpu: bool | None = None


def _no_labels() -> pa.Table:
    return pa.table({"id": pa.array([], pa.int64()), "label": pa.array([], pa.int64())})


@dataclass
class AcquireRequest:
    """Round `round`'s selection from `pool` with the model in `checkpoint`."""

    pool: str
    model: ModelSpec
    checkpoint: str
    round: int
    seed: int
    settings: StrategySettings
    # Every id selected before this round: never selected again.
    excluded: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    # (id, label) of the labeled set the checkpoint was trained on: coreset's initial centres, ALFA-Mix's anchors.
    labeled: pa.Table = field(default_factory=_no_labels)
    # Embeddings of this checkpoint computed before (DM2, coreset and ALFA-Mix reuse them).
    cache: Location | None = None
    # How pool images become model inputs (default: the model's size and channels, centre-cropped).
    image: ImageSpec | None = None

    def __post_init__(self):
        self.excluded = np.asarray(self.excluded, np.int64)
        if self.image is None:
            self.image = ImageSpec(self.model.image_size, self.model.channels)

    @property
    def budget(self) -> int:
        return self.settings.budget


@dataclass
class AcquireResult:
    selection: pa.Table
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
