"""What the `raydm2` command prints: its own lines, one per thing done, and nothing of Ray's unless `--verbose`.

Three levels: `--quiet` (errors only, for cron), the default (raydm2's lines: each training epoch, each stage's
seconds and rows/s as it finishes), `--verbose` or `RAYDM2_LOG=debug` (Ray's own logging and progress bars too). With
`--json`, stdout carries exactly one JSON document and raydm2's lines go to stderr.

On a terminal, the default level also shows one live line (tqdm) while a stage runs: rows done, rows/s and ETA,
replaced by the stage's summary line when it finishes. Logs and `ray job logs` get the summary lines only.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import sys
import threading

from raydm2 import progress

_level = "normal"
_json = False


def setup(quiet: bool = False, verbose: bool = False, as_json: bool = False, process: bool = False) -> None:
    """Choose the level for this process and listen to the library's progress events. `process`: this is the
    process's own command line (not a call from a program or test), so its stderr may be filtered."""
    from raydm2 import runtime

    global _level, _json
    verbose = verbose or os.environ.get("RAYDM2_LOG", "").lower() == "debug"
    _level = "verbose" if verbose else "quiet" if quiet else "normal"
    _json = as_json
    runtime.set_verbose(verbose)
    lines = sys.stderr if as_json else sys.stdout
    progress.listen(None if quiet else _Lines(live=not verbose and lines.isatty()))
    if process and not verbose:
        _filter_native_stderr()


# Lines Ray's C++ core writes straight to file descriptor 2, bypassing Python's logging, that say nothing a user can
# act on: an actor pool of Ray Data's own keeps its constructor arguments in the object store.
_NATIVE_NOISE = re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object "
                           rb"store and max_restarts > 0")
_END = b"\0raydm2-stderr-end\n"
_filter: tuple | None = None


def _filter_native_stderr() -> None:
    """Route fd 2 through a pipe whose reader drops `_NATIVE_NOISE` lines and passes everything else on."""
    global _filter
    if _filter is not None:
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)

    def pump() -> None:
        # Ctrl-C must reach the main thread: a signal the kernel hands to this thread would leave a main thread
        # that waits on a lock (Ray Data's executor does) waiting, never raising KeyboardInterrupt.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line + b"\n" == _END:
                        return
                    if not _NATIVE_NOISE.search(line):
                        os.write(original, line + b"\n")
        if pending:
            os.write(original, pending)

    thread = threading.Thread(target=pump, name="raydm2-stderr", daemon=True)
    thread.start()
    _filter = (original, write_end, thread)
    atexit.register(_restore_stderr)


def _restore_stderr() -> None:
    """Everything written so far reaches the terminal before the process exits."""
    global _filter
    if _filter is None:
        return
    original, write_end, thread = _filter
    sys.stderr.flush()
    os.dup2(original, 2)  # Ray's child processes may still hold the pipe: end the reader with a marker instead
    os.write(write_end, _END)
    thread.join(timeout=5)
    _filter = None


def verbose() -> bool:
    return _level == "verbose"


def say(text: str) -> None:
    """One line of raydm2's own (not shown with --quiet); above the live lines, if any."""
    if _level != "quiet":
        from tqdm import tqdm

        stream = sys.stderr if _json else sys.stdout
        tqdm.write(text, file=stream)
        stream.flush()  # a log file or `ray job logs` gets each line as it happens


def result(document: dict, text: str | None = None) -> None:
    """A command's outcome: `document` as JSON on stdout with --json, else `text` as a line."""
    if _json:
        print(json.dumps(document, default=_plain, sort_keys=True), flush=True)
    elif text is not None:
        say(text)


def _plain(value):
    if hasattr(value, "item"):
        return value.item()  # numpy scalars
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class _Lines(progress.Listener):
    """A finished stage as one aligned line, e.g. `  embed              2,000 images   3.1 s   645/s`; with `live`,
    a running stage as a tqdm line: `  embed     45% |█████     | 1,300/2,900 images  645/s  ETA 00:02`."""

    def __init__(self, live: bool = False):
        self.wants_counts = live
        self._bars: dict = {}

    def stage_counted(self, stage: str, done: int, total: int | None, unit: str) -> None:
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            fmt = ("{desc:<20}{percentage:3.0f}% |{bar:12}| {n:,}/{total:,} " + unit
                   + "  {rate_noinv_fmt}  ETA {remaining}" if total else "{desc:<20}{elapsed}")
            # The size from shutil, which falls back to $COLUMNS/$LINES or 80×24 where a terminal reports 0×0
            # (a fresh pty, `docker run -t`): tqdm would take 0 rows as no room and draw nothing.
            size = shutil.get_terminal_size()
            bar = self._bars[stage] = tqdm(total=total, desc=f"  {progress.readable(stage)}", unit="", unit_scale=True,
                                           bar_format=fmt, file=sys.stderr if _json else sys.stdout, leave=False,
                                           mininterval=0.2, ncols=size.columns, nrows=size.lines)
        bar.update(done - bar.n)

    def stage_ended(self, stage: str) -> None:
        bar = self._bars.pop(stage, None)
        if bar is not None:
            bar.refresh()  # the last count, which tqdm's `mininterval` may have held back
            bar.close()

    def stage_done(self, stage: str, seconds: float, rows: int | None) -> None:
        rate = f"  {rows / seconds:,.0f}/s" if rows and seconds > 0 else ""
        count = f"{rows:>9,} images" if rows is not None else " " * 16
        say(f"  {progress.readable(stage):<18}{count} {seconds:7.1f} s{rate}")

    def note(self, text: str) -> None:
        say(f"  {text}")
