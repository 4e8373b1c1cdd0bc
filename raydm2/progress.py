"""Progress events from the library to whoever shows them. The library reports; it never prints. The CLI's console
(`raydm2.service.console`) listens and turns events into lines; a program using the Python API can `listen` with
its own `Listener`, or none (the default: events go nowhere).

Two kinds of stage event: `stage_done` once per finished stage (seconds, rows), and, only for a listener that
`wants_counts` (a terminal: the console's live line), running counts while a stage runs. Counting costs a little
(a Ray actor that model actors tell their batches to), so the library counts only when someone watches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Stage keys of the manifests' `timings`, and what a person calls them.
STAGE_NAMES = {
    "embed_s": "embed", "index_s": "build index", "search_s": "search neighbours", "mix_score_s": "mix + score",
    "score_s": "score", "gather_s": "gather", "select_s": "select", "select_write_s": "select",
    "train_s": "train", "ingest_s": "ingest", "total_s": "total",
}


def pipeline_order(item: tuple[str, float]) -> int:
    """Sort key of (stage, seconds) pairs: the order the stages run in, unknown ones before the total."""
    order = list(STAGE_NAMES)
    return order.index(item[0]) if item[0] in order else order.index("total_s") - 1


def readable(stage: str) -> str:
    """`embed_s` -> `embed`; unknown keys lose their `_s` and underscores."""
    return STAGE_NAMES.get(stage, stage.removesuffix("_s").replace("_", " "))


class Listener:
    """What a listener may hear; each method does nothing unless overridden."""

    wants_counts = False

    def stage_done(self, stage: str, seconds: float, rows: int | None) -> None:
        """`stage` (a manifest timing key, e.g. `embed_s`) finished in `seconds` over `rows` rows (None: not rows)."""

    def stage_counted(self, stage: str, done: int, total: int | None, unit: str) -> None:
        """`done` of `total` (None: unknown) `unit` of a running stage so far; heard only with `wants_counts`."""

    def stage_ended(self, stage: str) -> None:
        """No more counts for `stage` will come (it finished, or failed): a live line may go."""

    def note(self, text: str) -> None:
        """A line of progress that is not a timed stage."""


_listener: Listener | None = None
_stages_muted = False


def listen(listener: Listener | None) -> None:
    """Send this process's progress events to `listener` (None: nowhere)."""
    global _listener
    _listener = listener


def stage_done(stage: str, seconds: float, rows: int | None = None) -> None:
    if _listener is not None and not _stages_muted:
        _listener.stage_done(stage, seconds, rows)


def wants_counts() -> bool:
    """Whether anyone shows running counts: the library sets up counting only then."""
    return _listener is not None and _listener.wants_counts and not _stages_muted


@contextmanager
def counting(stage: str, total: int | None, read: Callable[[], int], unit: str = "images",
             every_s: float = 0.5) -> Iterator[None]:
    """While the block runs, tell the listener `read()` (rows of `stage` done so far) every `every_s` seconds,
    from a thread, so the block itself (a Ray Data execution, a training run) is not slowed or changed."""
    listener = _listener
    if listener is None or not wants_counts():
        yield
        return
    stop = threading.Event()

    def tell() -> None:
        try:
            done = read()
        except Exception:  # a count that cannot be read now (an actor starting) is not worth failing over
            return
        listener.stage_counted(stage, done, total, unit)

    def poll() -> None:
        while not stop.wait(every_s):
            tell()

    listener.stage_counted(stage, 0, total, unit)
    thread = threading.Thread(target=poll, name=f"raydm2-count-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s * 4)
        # A stage shorter than a poll (actors that start slowly, then score every row in a blink) would otherwise
        # end with its line at 0.
        tell()
        listener.stage_ended(stage)


@contextmanager
def notes_only():
    """Within the block, stage events are dropped: a simulation reports its rounds, not every round's stages."""
    global _stages_muted
    before, _stages_muted = _stages_muted, True
    try:
        yield
    finally:
        _stages_muted = before


def note(text: str) -> None:
    """A line of progress that is not a timed stage: a simulation's run finished, a training epoch's loss."""
    if _listener is not None:
        _listener.note(text)
