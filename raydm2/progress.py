"""Progress events from the library to whoever shows them. The library reports; it never prints. The CLI's console
(`raydm2.service.console`) listens and turns events into one line each; a program using the Python API can
`listen` with its own listener, or none (the default: events go nowhere)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol

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


class Listener(Protocol):
    def stage_done(self, stage: str, seconds: float, rows: int | None) -> None: ...

    def note(self, text: str) -> None: ...


_listener: Listener | None = None
_stages_muted = False


def listen(listener: Listener | None) -> None:
    """Send this process's progress events to `listener` (None: nowhere)."""
    global _listener
    _listener = listener


def stage_done(stage: str, seconds: float, rows: int | None = None) -> None:
    if _listener is not None and not _stages_muted:
        _listener.stage_done(stage, seconds, rows)


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
