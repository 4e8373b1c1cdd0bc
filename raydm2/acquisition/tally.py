"""Rows done per stage, counted where they are done (in the model and search actors) and read by the driver while
the stage runs: what the console's live line shows as rows/s and ETA. Set up only when someone watches
(`progress.wants_counts`); otherwise the actors run as they are."""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class Tally:
    def __init__(self):
        self.rows: dict[str, int] = {}

    def add(self, stage: str, rows: int) -> None:
        self.rows[stage] = self.rows.get(stage, 0) + rows

    def read(self, stage: str) -> int:
        return self.rows.get(stage, 0)


class Counted:
    """An actor-pool function (`fn_class(**kwargs)`) that also tells `tally` each batch's rows under `stage`.
    Telling is fire-and-forget: a batch never waits for the count."""

    def __init__(self, fn_class: type, tally, stage: str, **kwargs):
        self.fn = fn_class(**kwargs)
        self.tally = tally
        self.stage = stage

    def __call__(self, batch: dict):
        out = self.fn(batch)
        self.tally.add.remote(self.stage, len(batch["id"]))
        return out
