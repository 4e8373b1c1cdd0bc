"""Model functions that run inside an engine's model actors: the base that loads a checkpoint once per actor,
and the embedder every embedding-based strategy shares (`id`, penultimate features `z`, own confidence `conf`)."""

from __future__ import annotations

import numpy as np
import torch

from raydm2.data.images import to_tensor
from raydm2.models import checkpoint
from raydm2.models.device import select_device
from raydm2.models.registry import ModelSpec


class ModelActor:
    """Loads the checkpoint once, picks the device and thread count. Subclasses are called with batches holding
    decoded `pixels` and `ok`."""

    def __init__(self, checkpoint_uri: str, spec: ModelSpec, threads: int, use_gpu: bool):
        torch.set_num_threads(max(1, threads))
        self.device = select_device(use_gpu)
        self.model = checkpoint.load(checkpoint_uri, spec).to(self.device).eval()

    @torch.inference_mode()
    def forward(self, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        logits, z = self.model.forward_with_features(to_tensor(pixels).to(self.device, non_blocking=True))
        return logits.float(), z.float()


class Embedder(ModelActor):
    def __call__(self, batch: dict) -> dict:
        ok = batch["ok"].astype(bool)
        n = len(ok)
        z = np.zeros((n, self.model.feature_dim), np.float32)
        conf = np.zeros(n, np.float64)
        if ok.any():
            logits, feats = self.forward(batch["pixels"][ok])
            z[ok] = feats.cpu().numpy()
            conf[ok] = torch.softmax(logits, 1).max(1).values.cpu().numpy()
        finite = np.isfinite(z).all(axis=1) & np.isfinite(conf)
        return {"id": batch["id"], "z": z, "conf": conf, "ok": ok.astype(np.uint8), "finite": finite.astype(np.uint8)}


def scored(batch: dict, score: np.ndarray, confidence: np.ndarray | None = None) -> dict:
    """Full-length (`id`, `score`[, `confidence`], `ok`, `finite`) for a batch of which only the decodable (`ok`)
    rows were scored: what per-image scoring functions return."""
    ok = batch["ok"].astype(bool)
    out = {"id": batch["id"], "score": np.zeros(len(ok))}
    out["score"][ok] = score
    finite = np.isfinite(out["score"])
    if confidence is not None:
        out["confidence"] = np.zeros(len(ok))
        out["confidence"][ok] = confidence
        finite &= np.isfinite(out["confidence"])
    return {**out, "ok": ok.astype(np.uint8), "finite": finite.astype(np.uint8)}
