"""From scored candidates to the round's selection: global top-B, optional dedupe, ranks, output columns."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from raydm2.acquisition.mixing import dedupe
from raydm2.acquisition.topk import top_rows

log = logging.getLogger(__name__)

# Every selection starts with these; each strategy appends its own columns (DM2's are the defaults).
BASE_COLUMNS = ["id", "rank", "score"]
DM2_COLUMNS = ["neighbor_id", "mix_lambda", "anchor_conf", "neighbor_dist"]


def finalize(candidates: pa.Table, budget: int, dedupe_radius: float | None,
             columns: list[str] = DM2_COLUMNS) -> tuple[pa.Table, list[str]]:
    """Rank the merged candidates (score descending, id ascending) and cut to B. Returns the selection and any
    warnings for the manifest."""
    warnings = []
    ordered = top_rows(candidates, candidates.num_rows)
    if dedupe_radius:
        nbr_ids = ordered.column("nbr_ids").to_numpy(zero_copy_only=False)
        nbr_d = ordered.column("nbr_dists").to_numpy(zero_copy_only=False)
        keep = dedupe(ordered.column("id").to_numpy(), list(nbr_ids), list(nbr_d), budget, dedupe_radius)
        skipped = min(ordered.num_rows, int(keep[-1]) + 1 if len(keep) else 0) - len(keep)
        ordered = ordered.take(pa.array(keep))
        if skipped:
            warnings.append(f"dedupe skipped {skipped} near-duplicate candidates (radius {dedupe_radius})")
    else:
        ordered = ordered.slice(0, budget)
    return ranked(ordered, budget, columns, warnings)


def ranked(ordered: pa.Table, budget: int, columns: list[str], warnings: list[str] | None = None):
    """The selection table of rows already in selection order: rank 0 first, the strategy's columns after."""
    warnings = list(warnings or [])
    if ordered.num_rows < budget:
        msg = f"budget {budget} exceeds the {ordered.num_rows} selectable images; selecting all of them"
        log.warning(msg)
        warnings.append(msg)
    table = ordered.append_column("rank", pa.array(np.arange(ordered.num_rows, dtype=np.int32)))
    return table.select(BASE_COLUMNS + list(columns)), warnings


def select_top(engine, model_fn, columns: tuple[str, ...] = ("confidence",), stage: str = "score_s", **kwargs):
    """The plan of every strategy that scores each image on its own: `model_fn` over the unlabeled pool, then the
    exact global top-B by score. Returns (selection, warnings)."""
    budget = engine.request.budget
    scored = engine.score(model_fn, stage, **kwargs)
    selection, warnings = finalize(engine.top(scored, budget), budget, None, columns=list(columns))
    engine.lap("select_s")
    return selection, warnings


def select_picked(engine, picked: pa.Table, columns: tuple[str, ...] = ()):
    """The selection of a strategy whose gathered algorithm already returns its picks in selection order."""
    selection, warnings = ranked(picked, engine.request.budget, list(columns))
    engine.lap("select_s")
    return selection, warnings
