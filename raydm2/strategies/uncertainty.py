"""Strategies that score each image on its own: random, least_confidence, margin, entropy, bald.

Each block keeps its own top-B and the driver merges them exactly, as for DM2. BALD's MC-dropout masks are
drawn from hashes of (seed, round, id, draw, feature), so the selection does not depend on batching either.
"""

from __future__ import annotations

import numpy as np
import torch

from raydm2 import pipeline
from raydm2.embed import ModelActor
from raydm2.errors import RayDM2Error
from raydm2.hashing import PURPOSE_MC_DROPOUT, PURPOSE_RANDOM, uniform, uniform_matrix
from raydm2.select import finalize
from raydm2.strategies import register
from raydm2.strategies.base import AcquireRequest, AcquireResult


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


def bald(mc_probs: np.ndarray) -> np.ndarray:
    """Mutual information between prediction and weights from T MC-dropout draws (T, N, C):
    H(mean_t p_t) − mean_t H(p_t)."""
    return entropy(mc_probs.mean(axis=0)) - entropy(mc_probs).mean(axis=0)


HEURISTICS = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}


# ---- the actors ---------------------------------------------------------------------------------------------
def _scored(batch: dict, score: np.ndarray, confidence: np.ndarray | None = None) -> dict:
    """Full-length columns for a batch of which only the decodable (`ok`) rows were scored."""
    ok = batch["ok"].astype(bool)
    out = {"id": batch["id"], "score": np.zeros(len(ok))}
    out["score"][ok] = score
    finite = np.isfinite(out["score"])
    if confidence is not None:
        out["confidence"] = np.zeros(len(ok))
        out["confidence"][ok] = confidence
        finite &= np.isfinite(out["confidence"])
    return {**out, "ok": ok.astype(np.uint8), "finite": finite.astype(np.uint8)}


class ProbabilityScorer(ModelActor):
    """least_confidence / margin / entropy from the model's softmax on each decoded image."""

    def __init__(self, checkpoint_uri, spec, threads, use_gpu, heuristic: str):
        super().__init__(checkpoint_uri, spec, threads, use_gpu)
        self.heuristic = HEURISTICS[heuristic]

    def __call__(self, batch: dict) -> dict:
        ok = batch["ok"].astype(bool)
        if not ok.any():
            return _scored(batch, np.empty(0), np.empty(0))
        logits, _ = self.forward(batch["pixels"][ok])
        probs = torch.softmax(logits, 1).double().cpu().numpy()
        return _scored(batch, self.heuristic(probs), probs.max(axis=1))


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
            return _scored(batch, np.empty(0), np.empty(0))
        logits, z = self.forward(batch["pixels"][ok])
        ids = batch["id"][ok]
        n, d = z.shape
        u = uniform_matrix(ids, self.samples * d, self.seed, self.round, PURPOSE_MC_DROPOUT)
        keep = torch.from_numpy(u.reshape(n, self.samples, d).transpose(1, 0, 2) >= self.p).to(z.device)
        masked = z.unsqueeze(0) * keep / (1.0 - self.p)
        mc = torch.softmax(self.model.head(masked).float(), -1).double().cpu().numpy()
        conf = torch.softmax(logits, 1).max(1).values.double().cpu().numpy()
        return _scored(batch, bald(mc), conf)


def random_scores(batch: dict, seed: int, round_: int) -> dict:
    """Random: a hash of (seed, round, id) per decodable image; no model involved."""
    ok = batch["ok"].astype(bool)
    return _scored(batch, uniform(batch["id"][ok], seed, round_, PURPOSE_RANDOM))


# ---- the strategies -----------------------------------------------------------------------------------------
def _top_b(req: AcquireRequest, scorer, columns: tuple[str, ...] = ("confidence",), **kwargs) -> AcquireResult:
    watch = pipeline.Stopwatch()
    scored, counts = pipeline.score_unlabeled(req, watch, "score_s", scorer, **kwargs)
    best = pipeline.merge_top(scored.select_columns(["id", "score", *columns]), req.budget)
    selection, warnings = finalize(best, req.budget, None, columns=list(columns))
    watch.lap("select_s")
    return AcquireResult(selection=selection, counts={**counts, "selected": selection.num_rows},
                         timings=watch.timings, warnings=warnings)


@register("random")
def select_random(req: AcquireRequest) -> AcquireResult:
    return _top_b(req, random_scores, columns=(), seed=req.config.seed, round_=req.round_)


def _register_heuristic(name: str) -> None:
    register(name)(lambda req: _top_b(req, ProbabilityScorer, heuristic=name))


for _name in HEURISTICS:
    _register_heuristic(_name)


@register("bald")
def select_bald(req: AcquireRequest) -> AcquireResult:
    if req.config.model.dropout <= 0:
        raise RayDM2Error("bald needs MC dropout: set model.dropout > 0 (and train with it)")
    return _top_b(req, BaldScorer, samples=req.config.strategy.bald_samples, seed=req.config.seed,
                  round_=req.round_)
