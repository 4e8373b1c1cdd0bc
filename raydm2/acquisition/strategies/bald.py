"""BALD (Houlsby et al.; Gal et al.'s MC-dropout form): mutual information between the prediction and the weights
over T MC-dropout draws. The masks are hashes of (seed, round, id, draw, feature), so batching cannot change them."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from raydm2.acquisition.hashing import PURPOSE_MC_DROPOUT, uniform_matrix
from raydm2.acquisition.model_actors import ModelActor, scored
from raydm2.acquisition.ranking import select_top
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register
from raydm2.acquisition.strategies.uncertainty import entropy
from raydm2.errors import RayDM2Error


class Settings(StrategySettings):
    name: Literal["bald"] = "bald"
    # MC-dropout draws
    bald_samples: int = Field(10, gt=1, le=1000)


def bald(mc_probs: np.ndarray) -> np.ndarray:
    """H(mean_t p_t) − mean_t H(p_t) from T draws (T, N, C)."""
    return entropy(mc_probs.mean(axis=0)) - entropy(mc_probs).mean(axis=0)


class BaldScorer(ModelActor):
    """MC dropout on the dropout layer in front of the head (every registered model has it): the body runs
    once, the head `samples` times on hash-masked features."""

    def __init__(self, checkpoint_uri, spec, threads, use_gpu, samples: int, seed: int, round_: int):
        super().__init__(checkpoint_uri, spec, threads, use_gpu)
        self.samples, self.seed, self.round = samples, seed, round_
        self.p = self.model.dropout.p

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        ok = batch["ok"].astype(bool)
        if not ok.any():
            return scored(batch, np.empty(0), np.empty(0))
        logits, z = self.forward(batch["pixels"][ok])
        ids = batch["id"][ok]
        n, d = z.shape
        u = uniform_matrix(ids, self.samples * d, self.seed, self.round, PURPOSE_MC_DROPOUT)
        keep = torch.from_numpy(u.reshape(n, self.samples, d).transpose(1, 0, 2) >= self.p).to(z.device)
        masked = z.unsqueeze(0) * keep / (1.0 - self.p)
        mc = torch.softmax(self.model.head(masked).float(), -1).double().cpu().numpy()
        conf = torch.softmax(logits, 1).max(1).values.double().cpu().numpy()
        return scored(batch, bald(mc), conf)


@register(Settings)
def plan(engine, request):
    if request.model.dropout <= 0:
        raise RayDM2Error("bald needs MC dropout: set model.dropout > 0 (and train with it)")
    return select_top(engine, BaldScorer, samples=request.settings.bald_samples, seed=request.seed,
                      round_=request.round)
