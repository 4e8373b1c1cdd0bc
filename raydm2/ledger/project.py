"""The project ledger: config plus one folder per acquisition round.

    <project>/project.yaml
    <project>/rounds/NNNN/manifest.json      state, config hash, checkpoint used, counts, timings, metrics
    <project>/rounds/NNNN/selection.parquet  id, rank, score, strategy columns
    <project>/rounds/NNNN/labels.parquet     id, label, round, imported_at
    <project>/rounds/NNNN/checkpoint/        weights trained on every label up to this round

Every file is written atomically (see `raydm2.storage`) and every write happens under the project lock.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from raydm2.ledger.config import ProjectConfig, parse_config_yaml
from raydm2.errors import RayDM2Error, StateError
from raydm2.ledger.lock import ProjectLock
from raydm2.models import libraries
from raydm2.data.storage import Location, resolve

STATES = ("planned", "acquiring", "selected", "exported", "labeled", "trained")
# Re-entering the same state is allowed where a step can be re-run: a crashed acquisition restarts from
# `acquiring`, labels arrive over several imports, and a round may be retrained.
TRANSITIONS = {
    "planned": {"acquiring"},
    "acquiring": {"acquiring", "selected"},
    "selected": {"exported", "labeled"},
    "exported": {"exported", "labeled"},
    "labeled": {"labeled", "trained"},
    "trained": {"trained"},
}
LABELS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("round", pa.int64(), nullable=False),
        pa.field("imported_at", pa.timestamp("s", tz="UTC"), nullable=False),
    ]
)


def _anchored(path: str, project: Location) -> str:
    if "://" in path or os.path.isabs(os.path.expanduser(path)):
        return path
    return project.join(path).uri


def round_name(n: int) -> str:
    return f"{n:04d}"


class Project:
    def __init__(self, loc: Location, config: ProjectConfig):
        self.loc = loc
        self.config = config
        self._lock = ProjectLock(loc.join(".lock"))

    # ---- opening -------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, uri: str, config: ProjectConfig) -> "Project":
        """A new project at `uri`. Its pool and weights-file paths are stored absolute (a relative one is taken from the working
        directory, where the user typed it), so the project reads the same pools from anywhere."""
        loc = resolve(uri)
        if loc.join("project.yaml").exists():
            raise RayDM2Error(f"a project already exists at {loc.uri}; open it instead of re-creating it")
        if loc.exists() and not loc.is_dir():
            raise RayDM2Error(f"{loc.uri} is a file, not a folder: choose another place for the project")
        config = config.model_copy(update={key: resolve(getattr(config, key)).uri
                                           for key in ("pool", "test_pool") if getattr(config, key)})
        weights = config.model.weights
        if weights and libraries.is_file(weights):
            config = config.model_copy(update={"model": config.model.model_copy(
                update={"weights": resolve(weights).uri})})
        loc.mkdir()
        project = cls(loc, config)
        with project.writing():
            loc.join("project.yaml").write_text(config.to_yaml())
        return project

    @classmethod
    def open(cls, uri: str) -> "Project":
        loc = resolve(uri)
        cfg = loc.join("project.yaml")
        if not cfg.exists():
            raise RayDM2Error(f"no project at {loc.uri} (project.yaml not found); create one with `raydm2 init`")
        try:
            text = cfg.read_text()
        except UnicodeDecodeError:
            raise RayDM2Error(f"{cfg.uri} is not UTF-8 text: it is not a project.yaml raydm2 wrote") from None
        config = parse_config_yaml(text, source=cfg.uri)
        # A relative pool path (a hand-edited project.yaml) is relative to the project, never the working directory.
        config = config.model_copy(update={key: _anchored(getattr(config, key), loc)
                                           for key in ("pool", "test_pool") if getattr(config, key)})
        weights = config.model.weights
        if weights and libraries.is_file(weights):
            config = config.model_copy(update={"model": config.model.model_copy(
                update={"weights": _anchored(weights, loc)})})
        return cls(loc, config)

    @property
    def uri(self) -> str:
        return self.loc.uri

    # ---- locking -------------------------------------------------------------------------------------------
    @contextmanager
    def writing(self):
        """Hold the project lock for a block of writes (re-entrant within a process)."""
        with self._lock:
            yield self

    def _require_lock(self) -> None:
        if self._lock.loc.uri not in ProjectLock._held:
            raise RuntimeError("project writes must happen inside `with project.writing():`")

    # ---- rounds --------------------------------------------------------------------------------------------
    def _round(self, n: int) -> Location:
        return self.loc.join("rounds", round_name(n))

    def round_ids(self) -> list[int]:
        return [int(name) for name in self.loc.join("rounds").list_dir() if name.isdigit()]

    def has_round(self, n: int) -> bool:
        return self._round(n).join("manifest.json").exists()

    def manifest(self, n: int) -> dict:
        path = self._round(n).join("manifest.json")
        if not path.exists():
            raise RayDM2Error(f"round {n} does not exist in {self.uri}")
        return path.read_json()

    def _write_manifest(self, n: int, manifest: dict) -> None:
        self._require_lock()
        self._round(n).join("manifest.json").write_json(manifest)

    def new_round(self, n: int, strategy: str) -> dict:
        self._require_lock()
        if self.has_round(n):
            raise RayDM2Error(f"round {n} already exists")
        manifest = {
            "round": n,
            "state": "planned",
            "strategy": strategy,
            "config_hash": self.config.hash(),
            "checkpoint": None,
            "counts": {},
            "timings": {},
            "metrics": {},
            "history": [{"state": "planned", "at": time.time()}],
        }
        self._write_manifest(n, manifest)
        return manifest

    def discard_round(self, n: int) -> None:
        """Remove a round that never got a selection (refused input): the project is left as it was before."""
        self._require_lock()
        state = self.manifest(n)["state"]
        if state not in ("planned", "acquiring") or self._round(n).join("selection.parquet").exists():
            raise StateError(f"round {n} is {state!r} with a selection; only an unfinished acquisition is discarded")
        self._round(n).delete()

    def update(self, n: int, state: str | None = None, **sections) -> dict:
        """Move round n to `state` (checked against the state machine) and merge `sections` into the manifest."""
        self._require_lock()
        manifest = self.manifest(n)
        if state is not None:
            if state not in STATES:
                raise StateError(f"unknown round state {state!r}")
            if state not in TRANSITIONS[manifest["state"]]:
                raise StateError(
                    f"round {n} is {manifest['state']!r}; it cannot become {state!r}"
                    f" (allowed: {', '.join(sorted(TRANSITIONS[manifest['state']])) or 'none'})"
                )
            manifest["state"] = state
            manifest["history"].append({"state": state, "at": time.time()})
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                manifest[key].update(value)
            else:
                manifest[key] = value
        self._write_manifest(n, manifest)
        return manifest

    def latest_round(self) -> int | None:
        ids = self.round_ids()
        return ids[-1] if ids else None

    def latest_in_state(self, *states: str) -> int | None:
        for n in reversed(self.round_ids()):
            if self.manifest(n)["state"] in states:
                return n
        return None

    # ---- selection -----------------------------------------------------------------------------------------
    def write_selection(self, n: int, table: pa.Table) -> None:
        self._require_lock()
        for col in ("id", "rank", "score"):
            if col not in table.column_names:
                raise RayDM2Error(f"selection table lacks column {col!r}")
        self._round(n).join("selection.parquet").write_table(table)

    def selection(self, n: int) -> pa.Table:
        path = self._round(n).join("selection.parquet")
        if not path.exists():
            raise RayDM2Error(f"round {n} has no selection yet")
        return path.read_table()

    def selected_ids(self, before: int | None = None) -> np.ndarray:
        """Every id selected in rounds before `before` (default: all rounds); such ids are never selected again."""
        parts = [
            self.selection(n).column("id").to_numpy()
            for n in self.round_ids()
            if (before is None or n < before) and self._round(n).join("selection.parquet").exists()
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    # ---- labels --------------------------------------------------------------------------------------------
    def labels(self, n: int) -> pa.Table:
        path = self._round(n).join("labels.parquet")
        # Cast so every round's table has the same schema (Parquet drops the schema's field metadata).
        return path.read_table().cast(LABELS_SCHEMA) if path.exists() else LABELS_SCHEMA.empty_table()

    def write_labels(self, n: int, table: pa.Table) -> None:
        """Replace round n's label file with `table` (callers merge and validate first; see `raydm2.labels`)."""
        self._require_lock()
        self._round(n).join("labels.parquet").write_table(table.cast(LABELS_SCHEMA))

    def all_labels(self, upto: int | None = None) -> pa.Table:
        tables = [self.labels(n) for n in self.round_ids() if upto is None or n <= upto]
        return pa.concat_tables(tables) if tables else LABELS_SCHEMA.empty_table()

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint_dir(self, n: int) -> Location:
        return self._round(n).join("checkpoint")

    def round_dir(self, n: int) -> Location:
        return self._round(n)

    def embedding_cache(self, checkpoint_fingerprint: str) -> Location:
        """Embeddings of pool images under one checkpoint; valid as long as the weights are the same."""
        return self.loc.join("cache", "embeddings", checkpoint_fingerprint)

    def requery_dir(self, name: str) -> Location:
        return self.loc.join("requeries", name)


def open_project(uri: str) -> Project:
    """The project at `uri` (a folder or URI holding project.yaml)."""
    return Project.open(uri)
