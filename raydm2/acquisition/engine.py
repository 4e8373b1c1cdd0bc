"""The engine interface (SPEC section 10): the few operations every strategy is made of.

A strategy's plan (one file in `strategies/`) is written once against `Engine`; `RayEngine` runs it distributed
(Ray Data actor pools, joins, a gather actor), `LocalEngine` runs the same plan on in-memory arrays in one process
(the test oracle, and `simulate --engine local`). A `Handle` is an engine's own table of rows, passed from one
operation to the next and never opened by the plan: a Ray Dataset in one engine, a dict of numpy columns in the
other.

Model functions, the per-image work an engine runs:
- a `ModelActor` subclass (`raydm2.acquisition.model_actors`), built once per actor with the checkpoint and called
  with batches of decoded `pixels` plus `ok`, or
- a plain function `fn(batch, **kwargs)` of such a batch (no model, e.g. random scores).
Either returns columns of equal length that include `id`, `ok` and `finite` when run over the pool.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from raydm2 import progress
from raydm2.acquisition.request import AcquireRequest

Handle = Any


class Engine(ABC):
    """Holds one acquisition's request, and the counts and per-stage seconds that go into its manifest."""

    def __init__(self, request: AcquireRequest):
        self.request = request
        self.counts: dict = {}
        self.timings: dict[str, float] = {}
        self.index: dict = {}
        self._lap_started = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Record the seconds since the previous lap under `stage` (e.g. `embed_s`), and report the stage done."""
        now = time.perf_counter()
        self.timings[stage] = round(now - self._lap_started, 4)
        self._lap_started = now
        progress.stage_done(stage, self.timings[stage], self.counts.get("candidates"))

    @abstractmethod
    def embed(self, with_labeled: bool = False) -> Handle | tuple[Handle, Handle]:
        """(`id`, penultimate features `z`, own confidence `conf`) of every decodable unlabeled image, through the
        embedding cache; with `with_labeled`, also the labeled images' rows as a second handle."""

    @abstractmethod
    def score(self, model_fn, stage: str | None = None, on: Handle | None = None, **kwargs) -> Handle:
        """Run a model function over the decoded unlabeled pool (`on=None`; counts and the `stage` lap are
        recorded, undecodable and non-finite rows are refused or dropped), or over the rows of `on`."""

    @abstractmethod
    def map(self, handle: Handle, fn: Callable, **kwargs) -> Handle:
        """`fn(batch, **kwargs)` over the rows of `handle`, no model (CPU work)."""

    @abstractmethod
    def top(self, handle: Handle, keep: int) -> pa.Table | None:
        """The `keep` best rows by (`score` descending, `id` ascending), best first; None when there are none."""

    @abstractmethod
    def gather(self, fn: Callable, inputs: dict[str, tuple[Handle, list[str]]], **kwargs):
        """`fn(**{name: {column: array}}, **kwargs)` with every row of each input in one place, rows sorted by id
        (`columns[0]` is `id`): for algorithms that need all vectors at once (k-center, k-means)."""

    @abstractmethod
    def neighbours(self, embedded: Handle, knn, params) -> Handle:
        """For each row of `embedded`: its k nearest rows under the combined distance (`nbr_ids`, `nbr_dists`),
        the mixing partner chosen among them (`nbr_id`, `nbr_dist`), and its `conf`. Records `index_s`, `search_s`
        and the index's description."""

    @abstractmethod
    def with_partners(self, searched: Handle, mean: bool) -> Handle:
        """`searched` with each anchor's pixels and its partner's (the chosen neighbour, or with `mean` the pixel
        mean of all k neighbours), ready for a mix-and-score model function."""


def sorted_by_id(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows sorted by `id`, so what a gathered algorithm picks on ties does not depend on how rows arrived."""
    order = np.argsort(columns["id"], kind="stable")
    return {c: a[order] for c, a in columns.items()}
