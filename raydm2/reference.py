"""Single-process DM2 with exact brute-force neighbours: the oracle the distributed pipeline is tested against.

It calls the same formulas (`raydm2.dm2`) and the same finalisation (`raydm2.select`), but holds everything in
one process's memory: use it for small pools and tests only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from raydm2 import pool
from raydm2.dm2 import DM2Params, choose_neighbour, mix, mix_lambda, tau_from, to_tensor, uncertainty, unit
from raydm2.images import UndecodableImage, decode
from raydm2.knn import ExactIndex
from raydm2.models import Classifier
from raydm2.score import candidate_table
from raydm2.select import finalize


def load_unlabeled(pool_uri: str, size: int, channels: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, NHWC uint8 pixels) of every decodable pool image not in `excluded`, sorted by id."""
    table = pool.read_columns(pool_uri, ["id", "image"]).sort_by("id")
    ids, pixels = [], []
    for i, blob in zip(table.column("id").to_numpy(), table.column("image").to_pylist()):
        if i in excluded:
            continue
        try:
            pixels.append(decode(blob, size, channels))
            ids.append(i)
        except UndecodableImage:
            continue
    return np.asarray(ids, np.int64), np.stack(pixels)


@torch.inference_mode()
def _forward(model: Classifier, pixels: np.ndarray, batch_size: int = 512):
    logits, feats = [], []
    for s in range(0, len(pixels), batch_size):
        lg, z = model.forward_with_features(to_tensor(pixels[s:s + batch_size]))
        logits.append(lg.float())
        feats.append(z.float())
    return torch.cat(logits), torch.cat(feats).numpy()


def dm2_select(model: Classifier, ids: np.ndarray, pixels: np.ndarray, params: DM2Params, budget: int) -> pa.Table:
    model.eval()
    logits, z = _forward(model, pixels)
    _, conf = uncertainty(logits)
    zu = unit(z)
    nbr_ids, nbr_d = ExactIndex(ids, zu, params.l2_weight).search(ids, zu, params.k)
    chosen, chosen_d = choose_neighbour(ids, nbr_ids, nbr_d, params)
    tau = tau_from(ids, chosen_d, params) if params.mix == "adaptive" else None
    position = {int(i): p for p, i in enumerate(ids)}
    if params.mix == "mean":
        partner = np.stack([pixels[[position[int(j)] for j in row]].astype(np.float32).mean(0) / 255.0
                            for row in nbr_ids])
    else:
        partner = pixels[[position[int(j)] for j in chosen]]
    lam = mix_lambda(chosen_d, params, tau)
    mixed_logits, _ = _forward(model, mix(pixels, partner, lam))
    score, _ = uncertainty(mixed_logits)
    candidates = candidate_table(ids, score, chosen, lam, conf, chosen_d, nbr_ids, nbr_d)
    selection, _ = finalize(candidates, budget, params.dedupe_radius)
    return selection
