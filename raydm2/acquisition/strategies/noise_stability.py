"""NoiseStability (Li et al., AAAI 2024), as in the authors' code.

K noisy copies of the model: Gaussian noise on the weight of every module that has one (conv, linear,
batch-norm; not biases), rescaled per module so ‖noise‖_F = scale·‖W‖_F, model in eval mode. For each image and
draw, diff = (softmax_noisy − softmax_clean) / ‖softmax_clean‖₂; the K diffs are concatenated, and greedy
k-center with distances starting from the origin selects (the first pick is the largest-norm vector).
Optionally only a seeded random fraction of the pool is considered. The noise of draw k comes from a
generator seeded with (seed, round, k), so every actor perturbs its copy identically.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field

from raydm2.acquisition.greedy import kcenter_greedy
from raydm2.acquisition.hashing import PURPOSE_SUBSET, uniform
from raydm2.acquisition.model_actors import ModelActor
from raydm2.acquisition.ranking import select_picked
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register
from raydm2.acquisition.strategies.coreset import picks_table
from raydm2.data.images import to_tensor


class NoiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    draws: int = Field(30, gt=0, le=1000)
    # ‖noise‖_F = scale·‖W‖_F per module.
    scale: float = Field(0.001, gt=0.0, le=1.0)
    # Consider only this seeded random fraction of the pool (None: all of it).
    subset_fraction: float | None = Field(None, gt=0.0, le=1.0)


class Settings(StrategySettings):
    name: Literal["noise_stability"] = "noise_stability"
    noise_stability: NoiseSettings = NoiseSettings()


@torch.no_grad()
def add_weight_noise(model: torch.nn.Module, scale: float, generator: torch.Generator) -> torch.nn.Module:
    """In place: W += n·scale·‖W‖/‖n‖ with n ~ N(0, I), for every module's `weight` (biases untouched)."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter):
            noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)
            weight.add_(noise * (scale * weight.norm() / noise.norm().clamp_min(1e-12)))
    return model


def noise_diffs(clean: torch.Tensor, noisy: list[torch.Tensor]) -> np.ndarray:
    """Concatenated (softmax_noisy − softmax_clean)/‖softmax_clean‖₂ over the draws: (N, K·C)."""
    norm = clean.norm(dim=1, keepdim=True)
    return torch.cat([(p - clean) / norm for p in noisy], dim=1).cpu().numpy()


def draw_seed(seed: int, round_: int, draw: int) -> int:
    return (seed * 1_000_003 + round_ * 1009 + draw) % (2**63)


class NoiseScorer(ModelActor):
    def __init__(self, checkpoint_uri, spec, threads, use_gpu, draws: int, scale: float, seed: int, round_: int,
                 subset_fraction: float | None):
        super().__init__(checkpoint_uri, spec, threads, use_gpu)
        self.noisy = [add_weight_noise(copy.deepcopy(self.model), scale,
                                       torch.Generator().manual_seed(draw_seed(seed, round_, k))).eval()
                      for k in range(draws)]
        self.seed, self.round, self.fraction = seed, round_, subset_fraction

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        ok = batch["ok"].astype(bool)
        dim = len(self.noisy) * self.model.head.out_features
        diffs = np.zeros((len(ok), dim), np.float32)
        considered = ok.copy()
        if self.fraction is not None:
            considered &= uniform(batch["id"], self.seed, self.round, PURPOSE_SUBSET) < self.fraction
        if considered.any():
            x = to_tensor(batch["pixels"][considered]).to(self.device)
            clean = torch.softmax(self.model(x).float(), 1)
            diffs[considered] = noise_diffs(clean, [torch.softmax(m(x).float(), 1) for m in self.noisy])
        return {"id": batch["id"], "diff": diffs, "considered": considered.astype(np.uint8),
                "ok": ok.astype(np.uint8), "finite": np.isfinite(diffs).all(1).astype(np.uint8)}


def noise_stability(ids: np.ndarray, diff: np.ndarray, considered: np.ndarray, budget: int) -> pa.Table:
    keep = np.flatnonzero(considered.astype(bool))
    vectors = diff[keep]
    picks, dist = kcenter_greedy(vectors, budget, np.linalg.norm(vectors.astype(np.float64), axis=1))
    return picks_table(ids[keep], picks, dist)


def _gathered(pool: dict, budget: int) -> pa.Table:
    return noise_stability(pool["id"], pool["diff"], pool["considered"], budget)


@register(Settings)
def plan(engine, request):
    ns = request.settings.noise_stability
    scored = engine.score(NoiseScorer, "score_s", draws=ns.draws, scale=ns.scale, seed=request.seed,
                          round_=request.round, subset_fraction=ns.subset_fraction)
    picked = engine.gather(_gathered, {"pool": (scored, ["id", "diff", "considered"])}, budget=request.budget)
    return select_picked(engine, picked)
