"""Core-set (Sener & Savarese): greedy k-center on the penultimate embeddings, with the labeled set as the
initial centres, in one gather."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from raydm2.acquisition.greedy import kcenter_greedy, min_distances
from raydm2.acquisition.ranking import select_picked
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register


class Settings(StrategySettings):
    name: Literal["coreset"] = "coreset"


def picks_table(ids: np.ndarray, picks: np.ndarray, score: np.ndarray) -> pa.Table:
    return pa.table({"id": pa.array(ids[picks], pa.int64()), "score": pa.array(score, pa.float64())})


def coreset(ids: np.ndarray, z: np.ndarray, centres: np.ndarray, budget: int) -> pa.Table:
    """The `budget` picks of greedy k-center started from `centres`; score = distance to the nearest centre
    or earlier pick at the moment of picking."""
    picks, dist = kcenter_greedy(z, budget, min_distances(z, centres))
    return picks_table(ids, picks, dist)


def _gathered(pool: dict, labeled: dict, budget: int) -> pa.Table:
    return coreset(pool["id"], pool["z"], labeled["z"], budget)


@register(Settings)
def plan(engine, request):
    unlabeled, labeled = engine.embed(with_labeled=True)
    picked = engine.gather(_gathered, {"pool": (unlabeled, ["id", "z"]), "labeled": (labeled, ["id", "z"])},
                           budget=request.budget)
    return select_picked(engine, picked)
