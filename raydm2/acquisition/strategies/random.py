"""Random: a hash of (seed, round, id) per decodable image, no model; the B highest hashes are selected."""

from __future__ import annotations

from typing import Literal

import numpy as np

from raydm2.acquisition.hashing import PURPOSE_RANDOM, uniform
from raydm2.acquisition.model_actors import scored
from raydm2.acquisition.ranking import select_top
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register


class Settings(StrategySettings):
    name: Literal["random"] = "random"


def random_scores(batch: dict, seed: int, round_: int) -> dict:
    ok = batch["ok"].astype(bool)
    return scored(batch, uniform(np.asarray(batch["id"])[ok], seed, round_, PURPOSE_RANDOM))


@register(Settings)
def plan(engine, request):
    return select_top(engine, random_scores, columns=(), seed=request.seed, round_=request.round)
