"""The classic uncertainty heuristics on the model's softmax: least_confidence, margin and entropy. Each block
keeps its own top-B and the driver merges them exactly, as for DM2."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from raydm2.acquisition.model_actors import ModelActor, scored
from raydm2.acquisition.ranking import select_top
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register


# ---- heuristics: probabilities in, one score per image out (higher = more worth labeling) --------------------
def least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs.max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """1 − (p₁ − p₂): the smaller the gap between the two most likely classes, the higher."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Over the last axis, so it also takes BALD's (T, N, C) draws."""
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=-1)


HEURISTICS = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}


class ProbabilityScorer(ModelActor):
    def __init__(self, checkpoint_uri, spec, threads, use_gpu, heuristic: str):
        super().__init__(checkpoint_uri, spec, threads, use_gpu)
        self.heuristic = HEURISTICS[heuristic]

    def __call__(self, batch: dict) -> dict:
        ok = batch["ok"].astype(bool)
        if not ok.any():
            return scored(batch, np.empty(0), np.empty(0))
        logits, _ = self.forward(batch["pixels"][ok])
        probs = torch.softmax(logits, 1).double().cpu().numpy()
        return scored(batch, self.heuristic(probs), probs.max(axis=1))


class LeastConfidence(StrategySettings):
    name: Literal["least_confidence"] = "least_confidence"


class Margin(StrategySettings):
    name: Literal["margin"] = "margin"


class Entropy(StrategySettings):
    name: Literal["entropy"] = "entropy"


for _settings in (LeastConfidence, Margin, Entropy):
    _name = _settings.model_fields["name"].default
    register(_settings)(lambda engine, request, heuristic=_name: select_top(engine, ProbabilityScorer,
                                                                            heuristic=heuristic))
