"""DM2 (SPEC section 3): each unlabeled image is mixed at pixel level with a near neighbour under the combined
L2+L1 distance of penultimate features, and the images whose mixes the model is least sure about are selected.

    embed ─ neighbours (exact or FAISS IVF + exact re-rank) ─ partner pixels ─ MixScorer (mix, score, top-B)

With `dedupe_radius` the walk over candidates may skip any number of them (an image that is a neighbour of many
candidates knocks all of them out), so the candidates are kept whole and the walk widens until it has B or has
seen every candidate: the result is the one a walk over all candidates gives.

With `spread` (ours, beyond the paper; issue #22's diversity among the top-scored mixes, as BADGE and ALFA-Mix
get theirs from k-means): the best `spread`·B candidates by mix score are clustered by k-means on their
L2-normalised embeddings into B clusters, and each cluster's best-scored candidate is selected, so one region of
feature space cannot take the whole budget.

With `balance` (ours, beyond the paper; issue #22's class balance from predicted labels): the best
BALANCE_DEPTH·B candidates are walked best first, and a candidate whose mix the model assigns to a class that
already holds ⌈B/C⌉ of the picks (C classes) is passed over, so images the model stays unsure of whatever it
learns (a pool's low-contrast images, which it tends to put in one or two classes) cannot take the whole budget.
Passed-over candidates fill the budget, best first, if the walk ends short.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from raydm2.acquisition.greedy import kmeans_clusters
from raydm2.acquisition.knn import KnnSettings
from raydm2.acquisition.mixing import (TAU_SAMPLE, DM2Params, mix, mix_lambda, tau_sample_scores, uncertainty,
                                       unit)
from raydm2.acquisition.model_actors import ModelActor
from raydm2.acquisition.ranking import DM2_COLUMNS, finalize, ranked
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register
from raydm2.acquisition.topk import top_rows
from raydm2.data.images import ImageSpec, decode
from raydm2.errors import RayDM2Error


class Settings(StrategySettings):
    name: Literal["dm2"] = "dm2"
    lam: float = Field(0.8, gt=0.0, lt=1.0)
    mix: Literal["random", "mean", "adaptive"] = "random"
    dedupe_radius: float | None = Field(None, gt=0.0)
    # None: the top B. An integer s: the best of each of B k-means clusters of the top s·B (module docstring).
    spread: int | None = Field(None, ge=2, le=100)
    # At most ⌈B/C⌉ picks a class the model gives the mix (module docstring).
    balance: bool = False
    knn: KnnSettings = KnnSettings()

    @model_validator(mode="after")
    def _one_way_to_diversify(self):
        if sum(map(bool, (self.spread, self.dedupe_radius, self.balance))) > 1:
            raise ValueError("give one of dedupe_radius, spread and balance: each picks B from the top candidates "
                             "its own way")
        return self


def candidate_table(ids, score, partner, lam, anchor_conf, partner_dist, nbr_ids, nbr_dists,
                    mix_class) -> pa.Table:
    """The one candidate schema of both engines."""
    k = nbr_ids.shape[1]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "score": pa.array(score, pa.float64()),
            "neighbor_id": pa.array(partner, pa.int64()),
            "mix_lambda": pa.array(lam, pa.float64()),
            "anchor_conf": pa.array(anchor_conf, pa.float64()),
            "neighbor_dist": pa.array(partner_dist, pa.float64()),
            "nbr_ids": pa.FixedSizeListArray.from_arrays(pa.array(nbr_ids.reshape(-1), pa.int64()), k),
            "nbr_dists": pa.FixedSizeListArray.from_arrays(pa.array(nbr_dists.reshape(-1), pa.float64()), k),
            "mix_class": pa.array(mix_class, pa.int64()),
        }
    )


class MixScorer(ModelActor):
    """Mixes each anchor with its partner, scores the mix, and returns the batch's best `keep` candidates (all of
    them with `keep=None`). Because the order (score descending, id ascending) is total, merging these local winners
    gives exactly the global top-B. Anchor and partner come as image bytes (`image`, `nbr_image`, decoded here) or
    as pixels (`pixels`, `partner`; the mean of k neighbours is always pixels)."""

    def __init__(self, checkpoint_uri, spec, threads, use_gpu, image: ImageSpec, params: DM2Params,
                 tau: float | None, keep: int | None):
        super().__init__(checkpoint_uri, spec, threads, use_gpu)
        self.image, self.params, self.tau, self.keep = image, params, tau, keep

    def _pixels(self, batch: dict, pixels: str, encoded: str) -> np.ndarray:
        if pixels in batch:
            return np.asarray(batch[pixels])
        return np.stack([decode(b, self.image) for b in batch[encoded]])

    def __call__(self, batch: dict) -> pa.Table:
        lam = mix_lambda(batch["nbr_dist"], self.params, self.tau)
        mixed = mix(self._pixels(batch, "pixels", "image"), self._pixels(batch, "partner", "nbr_image"), lam)
        logits = self.forward(mixed)[0]
        score, _ = uncertainty(logits)
        table = candidate_table(batch["id"], score, batch["nbr_id"], lam, batch["conf"], batch["nbr_dist"],
                                np.asarray(batch["nbr_ids"]), np.asarray(batch["nbr_dists"]),
                                logits.argmax(dim=1).cpu().numpy())
        return table if self.keep is None else top_rows(table, self.keep)


def tau_sample(batch: dict, params: DM2Params) -> dict:
    """(id, score, d): the TAU_SAMPLE ids with the highest `score` are τ's seeded sample of anchors."""
    return {"id": batch["id"], "score": tau_sample_scores(batch["id"], params), "d": batch["nbr_dist"]}


def select(engine, scored, budget: int, k: int, radius: float | None) -> tuple[pa.Table, list[str]]:
    """The top B of the scored candidates; with `radius`, the best-first walk that skips near-duplicates. The walk
    starts with the best B·(k+1) candidates (enough unless one image is a near neighbour of more than k of them)
    and widens until it has B or has seen every candidate."""
    keep = budget * (k + 1) if radius else budget
    while True:
        best = engine.top(scored, keep)
        selection, warnings = finalize(best, budget, radius)
        if selection.num_rows == budget or best.num_rows < keep:
            return selection, warnings
        keep *= 2


# How deep into the ranking `balance` looks for picks of under-filled classes: the same depth as spread 4, the
# spread the fashion_mnist preset uses.
BALANCE_DEPTH = 4


def balanced_picks(candidates: pa.Table, budget: int, classes: int) -> tuple[pa.Table, list[str]]:
    """Of the `candidates`, walked best first, at most ⌈budget/classes⌉ of each `mix_class`, then the passed-over
    ones, best first, until `budget`."""
    best = top_rows(candidates, candidates.num_rows)
    quota = -(-budget // classes)
    taken = np.zeros(classes, np.int64)
    keep = np.zeros(best.num_rows, bool)
    picked = 0
    for i, c in enumerate(best.column("mix_class").to_numpy()):
        if picked == budget:
            break
        if taken[c] < quota:
            keep[i], taken[c], picked = True, taken[c] + 1, picked + 1
    fill = np.flatnonzero(~keep)[:budget - picked]
    keep[fill] = True
    selection, warnings = finalize(best.filter(pa.array(keep)), budget, None)
    if len(fill):
        warnings.append(f"balance took {len(fill)} picks past its per-class quota of {quota}")
    return selection, warnings


def rows_of(batch: dict, ids: np.ndarray) -> dict:
    keep = np.isin(batch["id"], ids)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def spread_picks(top: dict, candidates: pa.Table, budget: int, seed: int) -> pa.Table:
    """Of the `candidates` (best first; `top` holds their `id` and `z`, sorted by id), the best-scored of each of
    `budget` k-means clusters of their L2-normalised embeddings, best first."""
    best = top_rows(candidates, candidates.num_rows)
    position = np.searchsorted(top["id"], best.column("id").to_numpy())
    clusters, _ = kmeans_clusters(unit(top["z"][position]), budget, seed)
    # Rows are best first, so a cluster's first row is its best-scored candidate. A cluster k-means left empty
    # leaves its place to the best candidate not yet taken.
    _, first = np.unique(clusters, return_index=True)
    rest = np.setdiff1d(np.arange(best.num_rows), first)[:budget - len(first)]
    return best.take(pa.array(np.sort(np.concatenate([first, rest]))))


def select_spread(engine, embedded, scored, budget: int, spread: int, seed: int) -> tuple[pa.Table, list[str]]:
    """The selection under `spread`: only the top spread·B candidates' embeddings are brought together."""
    best = engine.top(scored, spread * budget)
    if best.num_rows <= budget:
        return ranked(best, budget, DM2_COLUMNS)
    near = engine.map(embedded, rows_of, ids=best.column("id").to_numpy())
    picked = engine.gather(spread_picks, {"top": (near, ["id", "z"])}, candidates=best, budget=budget, seed=seed)
    return ranked(picked, budget, DM2_COLUMNS)


@register(Settings)
def plan(engine, request):
    settings = request.settings
    params = DM2Params.from_settings(settings, request.seed, request.round)
    embedded = engine.embed()
    if engine.counts["candidates"] < 2:
        raise RayDM2Error("DM2 needs at least 2 unlabeled images to mix")
    searched = engine.neighbours(embedded, settings.knn, params)
    tau = None
    if params.mix == "adaptive":
        # Our choice: τ is the median chosen-partner distance over a seeded sample, so memory stays bounded.
        tau = float(np.median(engine.top(engine.map(searched, tau_sample, params=params), TAU_SAMPLE)
                              .column("d").to_numpy()))
    pairs = engine.with_partners(searched, mean=params.mix == "mean")
    budget, radius = request.budget, params.dedupe_radius
    spread = settings.spread
    depth = spread or (BALANCE_DEPTH if settings.balance else 1)
    scored = engine.score(MixScorer, "mix_score_s", on=pairs, image=request.image, params=params, tau=tau,
                          keep=None if radius else budget * depth)
    if settings.balance:
        selection, warnings = balanced_picks(engine.top(scored, depth * budget), budget, request.model.num_classes)
    elif spread:
        selection, warnings = select_spread(engine, embedded, scored, budget, spread,
                                            seed=request.seed * 1009 + request.round)
    else:
        selection, warnings = select(engine, scored, budget, params.k, radius)
    engine.lap("mix_score_s")
    engine.index.update(k=params.k, tau=tau)
    return selection, warnings
