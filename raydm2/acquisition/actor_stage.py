"""What the Ray engine wraps around the functions of its actor pools.

`ActorStage` is one actor of a pool: on CPU it decodes the batch's image bytes itself, so decode and model are one
stage (the decoded pixels never cross the object store, and there is no decode-task stage to schedule); it tells a
`Tally` the batch's rows while someone watches (`progress.wants_counts`: the console's live line shows rows/s and
ETA from them).
"""

from __future__ import annotations

import ray

from raydm2.data.images import ImageSpec, decode_batch


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
    """`fn_class(**kwargs)` called with each batch; with `decode`, the batch's `image` bytes are decoded first
    (`pixels`, `ok`); with `tally`, each batch's rows are told to it under `stage`, fire-and-forget (a batch never
    waits for the count)."""

    def __init__(self, fn_class: type, decode: ImageSpec | None = None, tally=None, stage: str | None = None,
                 **kwargs):
        self.fn = fn_class(**kwargs)
        self.decode, self.tally, self.stage = decode, tally, stage

    def __call__(self, batch: dict):
        rows = len(batch["id"])
        out = self.fn(decode_batch(batch, self.decode) if self.decode is not None else batch)
        if self.tally is not None:
            self.tally.add.remote(self.stage, rows)
        return out
