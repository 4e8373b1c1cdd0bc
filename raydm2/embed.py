"""The CPU decode stage and the embedding actor of the acquisition pipeline.

Decode runs as plain Ray Data tasks; undecodable images are kept as rows with `ok = 0` so they can be counted
in the manifest, and are never embedded. The embedder loads the checkpoint once per actor and emits
(`id`, penultimate features `z`, the model's own confidence `conf`, `ok`, `finite`).
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from raydm2 import checkpoint
from raydm2.dm2 import to_tensor
from raydm2.images import UndecodableImage, decode
from raydm2.models import ModelSpec, autocast, select_device


def decode_batch(batch: dict, size: int, channels: int) -> dict:
    images = batch["image"]
    n = len(images)
    pixels = np.zeros((n, size, size, channels), np.uint8)
    ok = np.ones(n, np.uint8)
    for i, data in enumerate(images):
        try:
            pixels[i] = decode(data, size, channels)
        except UndecodableImage:
            ok[i] = 0
    return {"id": batch["id"], "pixels": pixels, "ok": ok}


def drop_ids(batch: dict, excluded: list) -> dict:
    """`excluded` is a one-element list holding the ObjectRef of the id array: Ray Data does not resolve refs
    inside fn_kwargs, and passing the array itself would copy it into every task's arguments."""
    keep = ~np.isin(batch["id"], ray.get(excluded[0]))
    return {name: col[keep] for name, col in batch.items()}


def keep_ids(batch: dict, wanted: list) -> dict:
    """The opposite of `drop_ids`: keep only the ids in the array behind `wanted[0]`."""
    keep = np.isin(batch["id"], ray.get(wanted[0]))
    return {name: col[keep] for name, col in batch.items()}


class ModelActor:
    """Base of the actors that run the model: loads the checkpoint once, picks the device and thread count."""

    def __init__(self, checkpoint_uri: str, spec: ModelSpec, threads: int, use_gpu: bool):
        torch.set_num_threads(max(1, threads))
        self.device = select_device(use_gpu)
        self.model = checkpoint.load(checkpoint_uri, spec).to(self.device).eval()

    @torch.inference_mode()
    def forward(self, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_tensor(pixels).to(self.device, non_blocking=True)
        with autocast(self.device):
            logits, z = self.model.forward_with_features(x)
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
