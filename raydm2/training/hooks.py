"""Fault injection for tests, read from `RAYDM2_TEST_*` environment variables; inert unless a test sets them.

Ray Train workers are separate processes, so a test cannot monkeypatch them: `ray_trainer.fit` forwards these
variables into the workers' runtime environment, and the worker loop calls the hooks below.
- RAYDM2_TEST_FAIL_AT_EPOCH=N with RAYDM2_TEST_FAIL_MARKER=PATH: once (while PATH does not exist) a worker creates
  PATH and SIGKILLs itself right after reporting epoch N.
- RAYDM2_TEST_SHARD_LOG_DIR=DIR: each rank writes the ids of its training shard to DIR/rank<r>.npy.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

PREFIX = "RAYDM2_TEST_"
# The controller collects reports when it polls the workers; on 2 busy cores a kill right after report() could
# land before the poll that records the epoch's checkpoint, and the injected fault would then test a crash with no
# checkpoint at all. Waiting out a few polls keeps it a crash after one.
POLL_GRACE_S = 5.0


def environment() -> dict[str, str]:
    """The test variables set in this process, for the workers' runtime environment."""
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}


def shard_loaded(rank: int, ids: np.ndarray) -> None:
    folder = os.environ.get(f"{PREFIX}SHARD_LOG_DIR")
    if folder:
        np.save(os.path.join(folder, f"rank{rank}.npy"), ids)


def epoch_reported(epoch: int) -> None:
    marker = os.environ.get(f"{PREFIX}FAIL_MARKER")
    if os.environ.get(f"{PREFIX}FAIL_AT_EPOCH") == str(epoch) and marker and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(POLL_GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)  # a real worker death, not an exception Ray could report
