"""BADGE (Ash et al.): k-means++ seeding on gradient embeddings. The gradient of the cross-entropy at the
model's own prediction ŷ with respect to the head's weights is (p − onehot(ŷ)) ⊗ z: computed by the model actors,
seeded in one gather."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from raydm2.acquisition.greedy import kmeanspp_seeds
from raydm2.acquisition.model_actors import ModelActor
from raydm2.acquisition.ranking import select_picked
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register
from raydm2.acquisition.strategies.coreset import picks_table


class Settings(StrategySettings):
    name: Literal["badge"] = "badge"


def gradient_embedding(probs: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, C·d): row i is the flattened outer product (p_i − onehot(argmax p_i)) ⊗ z_i."""
    g = probs.copy()
    g[np.arange(len(g)), probs.argmax(1)] -= 1.0
    return (g[:, :, None] * z[:, None, :]).reshape(len(g), -1)


class GradientEmbedder(ModelActor):
    def __call__(self, batch: dict) -> dict:
        ok = batch["ok"].astype(bool)
        dim = self.model.feature_dim * self.model.head.out_features
        g = np.zeros((len(ok), dim), np.float32)
        if ok.any():
            logits, z = self.forward(batch["pixels"][ok])
            g[ok] = gradient_embedding(torch.softmax(logits, 1).cpu().numpy(), z.cpu().numpy())
        return {"id": batch["id"], "g": g, "ok": ok.astype(np.uint8),
                "finite": np.isfinite(g).all(1).astype(np.uint8)}


def badge(ids: np.ndarray, g: np.ndarray, budget: int, seed: int, round_: int) -> pa.Table:
    picks, d2 = kmeanspp_seeds(g, budget, np.random.default_rng([seed, round_]))
    return picks_table(ids, picks, d2)


def _gathered(pool: dict, budget: int, seed: int, round_: int) -> pa.Table:
    return badge(pool["id"], pool["g"], budget, seed, round_)


@register(Settings)
def plan(engine, request):
    scored = engine.score(GradientEmbedder, "embed_s")
    picked = engine.gather(_gathered, {"pool": (scored, ["id", "g"])}, budget=request.budget, seed=request.seed,
                           round_=request.round)
    return select_picked(engine, picked)
