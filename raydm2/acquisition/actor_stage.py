"""What the Ray engine wraps around the functions of its actor pools.

`ActorStage` is one actor of a pool: it completes each batch before its model function sees it (`prepare`: on CPU
it decodes the batch's image bytes, and DM2's scorers look anchors and partners up in the pool's images shared
through the object store), so preparation and model are one stage (the pixels never cross the object store, and
there is no task stage to schedule); it tells a `Tally` the batch's rows while someone watches
(`progress.wants_counts`: the console's live line shows rows/s and ETA from them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import ray


@ray.remote(num_cpus=0)
class Tally:
    """Rows done per stage, counted where they are done and read by the driver while the stage runs."""

    def __init__(self):
        self.rows: dict[str, int] = {}

    def add(self, stage: str, rows: int) -> None:
        self.rows[stage] = self.rows.get(stage, 0) + rows

    def read(self, stage: str) -> int:
        return self.rows.get(stage, 0)


class ActorStage:
    """`fn_class(**kwargs)` called with each batch, after `function(batch, **args)` with `prepare`
    (`(function, args)`). A kwarg or arg that is a one-element list holding an ObjectRef (Ray Data does not resolve
    refs inside constructor arguments, and a list keeps Ray from resolving it at submission) is fetched once, when
    the actor starts. With `tally`, each batch's rows are told to it under `stage`, fire-and-forget (a batch never
    waits for the count)."""

    def __init__(self, fn_class: type, prepare: tuple[Callable, dict] | None = None, tally=None,
                 stage: str | None = None, **kwargs):
        self.fn = fn_class(**_fetched(kwargs))
        self.prepare = None
        if prepare is not None:
            function, args = prepare
            self.prepare = functools.partial(function, **_fetched(args))
        self.tally, self.stage = tally, stage

    def __call__(self, batch: dict):
        rows = len(batch["id"])
        out = self.fn(self.prepare(batch) if self.prepare is not None else batch)
        if self.tally is not None:
            self.tally.add.remote(self.stage, rows)
        return out


def _fetched(kwargs: dict) -> dict:
    return {name: ray.get(value[0]) if isinstance(value, list) and len(value) == 1
            and isinstance(value[0], ray.ObjectRef) else value for name, value in kwargs.items()}
