"""Importing labels into a round: validated as a whole, merged with earlier parts, written atomically.

A file is refused entirely (nothing written) when it has unknown ids, ids not selected in the round (unless
allowed), conflicting duplicates, labels outside the classes, no rows, or the wrong columns.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from raydm2.data import pool
from raydm2.errors import RayDM2Error
from raydm2.ledger.project import LABELS_SCHEMA, Project


def _merge(project: Project, n: int, ids: np.ndarray, labels: np.ndarray) -> pa.Table:
    existing = project.labels(n)
    old = dict(zip(existing.column("id").to_pylist(), existing.column("label").to_pylist()))
    conflicts = [int(i) for i, lab in zip(ids, labels) if int(i) in old and old[int(i)] != int(lab)]
    if conflicts:
        raise RayDM2Error(f"ids already labeled differently in round {n}: {conflicts[:10]}")
    fresh = np.array([int(i) not in old for i in ids], bool)
    now = pa.array([int(time.time())] * int(fresh.sum()), pa.timestamp("s", tz="UTC"))
    added = pa.table(
        {"id": pa.array(ids[fresh], pa.int64()), "label": pa.array(labels[fresh], pa.int64()),
         "round": pa.array([n] * int(fresh.sum()), pa.int64()), "imported_at": now},
        schema=LABELS_SCHEMA,
    )
    return pa.concat_tables([existing.cast(LABELS_SCHEMA), added]).sort_by("id")


def validate(project: Project, n: int, ids: np.ndarray, labels: np.ndarray, allow_unselected: bool) -> None:
    if len(ids) == 0:
        raise RayDM2Error("the label file has no rows")
    num_classes = project.config.num_classes
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise RayDM2Error(f"labels outside the {num_classes} classes: {sorted(set(bad.tolist()))[:10]}")
    order = np.lexsort((labels, ids))
    same_id = ids[order][1:] == ids[order][:-1]
    conflict = same_id & (labels[order][1:] != labels[order][:-1])
    if conflict.any():
        dup = ids[order][1:][conflict][0]
        raise RayDM2Error(f"id {int(dup)} has conflicting labels in the file: {sorted(set(labels[ids == dup].tolist()))}")
    uniq = np.unique(ids)
    known = pool.read_columns(project.config.pool, ["id"], uniq).column("id").to_numpy()
    unknown = np.setdiff1d(uniq, known)
    if len(unknown):
        raise RayDM2Error(f"ids not in the pool: {unknown[:10].tolist()}")
    if not allow_unselected:
        selected = project.selection(n).column("id").to_numpy()
        outside = np.setdiff1d(uniq, selected)
        if len(outside):
            raise RayDM2Error(
                f"ids not selected in round {n}: {outside[:10].tolist()} (use --allow-unselected to accept them)"
            )


def import_labels(project: Project, n: int, ids, labels, allow_unselected: bool = False) -> dict:
    """Validate and merge one batch of labels into round n; returns counts. The round becomes `labeled` once
    every selected id has a label (partial imports leave it `exported`/`selected`)."""
    ids = np.asarray(ids, np.int64)
    labels = np.asarray(labels, np.int64)
    with project.writing():
        state = project.manifest(n)["state"]
        if state not in ("selected", "exported", "labeled"):
            raise RayDM2Error(f"round {n} is {state!r}; labels can be imported once it has a selection")
        validate(project, n, ids, labels, allow_unselected)
        # One row per id: a task exported twice, or a file concatenated with itself, repeats rows (with the same
        # label: conflicting repeats were refused above).
        ids, first = np.unique(ids, return_index=True)
        merged = _merge(project, n, ids, labels[first])
        project.write_labels(n, merged)
        selected = project.selection(n).column("id").to_numpy()
        complete = bool(np.isin(selected, merged.column("id").to_numpy()).all())
        project.update(n, state="labeled" if complete else None,
                       counts={"labeled": merged.num_rows, "labels_missing": int((~np.isin(
                           selected, merged.column("id").to_numpy())).sum())})
    return {"labels": merged.num_rows, "complete": complete}


def oracle(project: Project, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth labels of round n's selection from the pool's `label` column (simulations and the demo)."""
    ids = project.selection(n).column("id").to_numpy()
    table = pool.read_columns(project.config.pool, ["id", "label"], ids)
    if table.column("label").null_count:
        raise RayDM2Error("the pool has no ground-truth labels for some selected ids; the oracle needs them")
    return table.column("id").to_numpy(), table.column("label").to_numpy()
