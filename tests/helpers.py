"""Helpers shared by test modules."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from raydm2.service import loop
from raydm2.data import pool
from raydm2.ledger.config import ProjectConfig
from raydm2.data.images import ImageSpec, decode
from raydm2.ledger.project import Project

CLASSES = [str(i) for i in range(10)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained_project(path: str, pool_uri: str, checkpoint_dir: str, seed_n: int = 30, image: dict | None = None,
                    **strategy) -> Project:
    """A project whose round 0 (seed_n random images) is trained, with the fixture's real model standing in for
    Ray Train (which test_train.py and test_jobs.py cover)."""
    dm2 = strategy.get("name", "dm2") == "dm2"
    project = Project.create(path, ProjectConfig(name="p", pool=pool_uri, classes=CLASSES, seed=5, image=image or {},
                                                 strategy={"budget": 15, **({"knn": {"mode": "exact"}} if dm2 else {}),
                                                           **strategy}))
    loop.seed(project, seed_n)
    ids = project.selection(0).column("id").to_numpy()
    truth = pool.read_columns(pool_uri, ["id", "label"], ids).sort_by("id")
    # Pools without ground truth get placeholder labels: here only the round's state matters, since the fixture's
    # model stands in for training.
    known = truth.column("label").null_count == 0
    loop.label(project, ids=truth.column("id").to_numpy(),
               labels=truth.column("label").to_numpy() if known else np.zeros(len(ids), np.int64))
    with project.writing():
        shutil.copytree(checkpoint_dir, project.checkpoint_dir(0).path)
        project.update(0, state="trained")
    return project


def seeded_project(path: str, pool_uri: str, classes: list[str] = CLASSES, n: int = 10, name: str = "t") -> Project:
    """A project whose round 0 selected `n` random images (no labels yet)."""
    project = Project.create(path, ProjectConfig(name=name, pool=pool_uri, classes=classes))
    loop.seed(project, n)
    return project


def snapshot(root: str) -> dict[str, bytes]:
    """Every file under `root` with its bytes: 'the project is unchanged' is snapshot equality."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """`raydm2 ARGS` in its own process (and session, so it can be killed as a whole)."""
    return subprocess.Popen([sys.executable, "-m", "raydm2", *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen)


def _user_env() -> dict:
    """This environment as a user's shell has it: no RAY_ADDRESS (a command starts its own local cluster), no
    RAYDM2_LOG."""
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYDM2_LOG")}


def run_cli(*args: str, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """`raydm2 ARGS` run to completion in `cwd`, as a user types it: no RAY_ADDRESS (its own local cluster), no
    RAYDM2_LOG."""
    env = _user_env()
    return subprocess.run([sys.executable, "-m", "raydm2", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_cli_on_terminal(*args: str, cwd, timeout: int = 600) -> tuple[int, str, str]:
    """`raydm2 ARGS` on a pseudo-terminal (80×24, as a person's): (exit code, stdout, what the terminal received,
    with its line feeds as `\\n`). With `--json` only stderr is the terminal and stdout a pipe to a script, whose
    text is returned; otherwise both are the terminal and the returned stdout is empty."""
    import fcntl
    import pty
    import struct
    import termios

    env = _user_env()
    terminal, device = pty.openpty()
    fcntl.ioctl(device, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "raydm2", *args], cwd=cwd, env=env,
                                stdout=stdout if "--json" in args else device, stderr=device, stdin=subprocess.DEVNULL)
        os.close(device)
        received, deadline = b"", time.monotonic() + timeout
        # Read until the command has exited and the terminal is quiet: Ray's processes inherit the terminal and
        # may hold it open a moment after the command exits.
        while time.monotonic() < deadline:
            if not select.select([terminal], [], [], 1.0)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: every holder of the terminal's other end has closed it
                break
            if not chunk:
                break
            received += chunk
        os.close(terminal)
        code = proc.wait(timeout=max(1, deadline - time.monotonic()))
        stdout.seek(0)
        return code, stdout.read().decode(), received.decode(errors="replace").replace("\r\n", "\n")


def label_table(ids: np.ndarray, labels: np.ndarray) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64())})


def first_images(pool_uri: str, n: int, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The pool's first n images by id, decoded (N, H, W, C uint8), and their labels (int64)."""
    table = pool.read_columns(pool_uri, ["id", "image", "label"]).sort_by("id").slice(0, n)
    pixels = np.stack([decode(b, ImageSpec(size, channels)) for b in table.column("image").to_pylist()])
    return pixels, table.column("label").to_numpy().astype(np.int64)


def local_selection(config: ProjectConfig, checkpoint_uri: str, round_: int, excluded, labeled: pa.Table | None = None
                    ) -> pa.Table:
    """What the in-memory engine selects for this project config: the oracle the Ray engine is compared with."""
    from raydm2.acquisition import acquire

    return acquire(config.acquire_request(checkpoint_uri, round_, np.asarray(excluded, np.int64), labeled),
                   engine="local").selection


def open_in_chromium(path: str) -> dict:
    """The page at `path` as Debian's Chromium renders it: its title, its text and, per image, (loaded, natural
    width); a broken image has width 0."""
    import pytest

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed (`make test` installs Debian's package where it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto("file://" + os.path.abspath(path), wait_until="load")
            return {"title": page.title(), "text": page.inner_text("body"),
                    "images": page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth])")}
        finally:
            browser.close()
