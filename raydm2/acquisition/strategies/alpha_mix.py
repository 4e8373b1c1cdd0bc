"""ALFA-Mix (Parvaneh et al., CVPR 2022) with the closed-form α, run as the authors' code runs it.

For an unlabeled embedding z with predicted class y* and each class anchor z*_c (the mean labeled embedding of
class c), α = (ε‖z*_c − z‖ / ‖∇_z ℓ‖) · ∇_z ℓ / (z*_c − z), element-wise, with ε = cap / √d and
ℓ = CE(head(z), y*); the image is a candidate when head((1 − α)z + α z*_c) no longer predicts y* for some c.
The cap grows as in the official loop (`alpha_cap`, 2·`alpha_cap`, ... up to 1) until more than B images are
candidates. Candidates are clustered with k-means on their L2-normalised embeddings into B clusters and the
member nearest each centre is selected; when even the last cap gives fewer than B candidates, the rest is filled
at random (hash of seed, round, id), as the authors do.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from raydm2.acquisition.greedy import kmeans_representatives
from raydm2.acquisition.hashing import PURPOSE_FILL, uniform
from raydm2.acquisition.ranking import select_picked
from raydm2.acquisition.request import StrategySettings
from raydm2.acquisition.strategies import register
from raydm2.acquisition.topk import order
from raydm2.errors import RayDM2Error
from raydm2.models import checkpoint


class Settings(StrategySettings):
    name: Literal["alpha_mix"] = "alpha_mix"
    # the first cap on α and its step as the cap grows (the official code's `alpha_cap`)
    alpha_cap: float = Field(0.2, gt=0.0, le=1.0)


def caps(step: float) -> list[float]:
    """The caps the official loop tries: step, 2·step, ... until 1 (the last one may be shorter)."""
    count = int(np.ceil(1.0 / step - 1e-9))
    return [min(1.0, step * (k + 1)) for k in range(count)]


def closed_form_alpha(z: np.ndarray, anchor: np.ndarray, grad: np.ndarray, eps: float) -> np.ndarray:
    diff = anchor - z
    scale = eps * np.linalg.norm(diff, axis=1, keepdims=True) / (np.linalg.norm(grad, axis=1, keepdims=True) + 1e-8)
    return scale * grad / (diff + 1e-8)


def prediction_flips(z: np.ndarray, weight: np.ndarray, bias: np.ndarray, anchors: np.ndarray,
                     alpha_cap: float) -> tuple[np.ndarray, np.ndarray]:
    """(number of anchors whose mix changes the prediction, the prediction y*) for embeddings `z`, given the
    head's `weight` (C, d) and `bias` (C,)."""
    logits = z @ weight.T + bias
    pred = logits.argmax(1)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    probs[np.arange(len(z)), pred] -= 1.0
    grad = probs @ weight  # ∇_z CE(head(z), y*)
    eps = alpha_cap / np.sqrt(z.shape[1])
    flips = np.zeros(len(z), np.int64)
    for anchor in anchors:
        alpha = closed_form_alpha(z, anchor[None, :], grad, eps)
        mixed = (1.0 - alpha) * z + alpha * anchor[None, :]
        flips += (mixed @ weight.T + bias).argmax(1) != pred
    return flips, pred


def class_means(z: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean labeled embedding per class; a class without labels gets the mean of all labeled embeddings
    (as in the authors' code)."""
    z = z.astype(np.float64)
    sums = np.zeros((num_classes, z.shape[1]))
    np.add.at(sums, y, z)
    counts = np.bincount(y, minlength=num_classes)
    anchors = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], z.mean(0))
    return anchors.astype(np.float32)


def _class_anchors(labeled: dict, labels: pa.Table, num_classes: int) -> np.ndarray:
    """`class_means` of the labeled rows; a labeled set is budget-sized, so it is held whole."""
    label_of = dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist()))
    y = np.array([label_of[int(i)] for i in labeled["id"]], np.int64)
    return class_means(labeled["z"], y, num_classes)


def flips_batch(batch: dict, anchors: np.ndarray, weight: np.ndarray, bias: np.ndarray, cap_step: float) -> dict:
    """CPU work over embedded rows: for each image, the first cap (index into `caps`) at which some anchor's mix
    flips its prediction (inf: none does) and how many anchors flip it there. The head alone decides the flips,
    so no second model pass is needed."""
    z = batch["z"].astype(np.float64)
    first = np.full(len(z), np.inf)
    flips = np.zeros(len(z), np.int64)
    for level, cap in enumerate(caps(cap_step)):
        count, _ = prediction_flips(z, weight, bias, anchors, cap)
        new = (count > 0) & np.isinf(first)
        first[new], flips[new] = level, count[new]
        if not np.isinf(first).any():
            break
    return {"id": batch["id"], "z": batch["z"], "first_cap": first, "flips": flips, "confidence": batch["conf"]}


def alpha_mix(ids, z, first_cap, flips, confidence, budget: int, seed: int, round_: int) -> pa.Table:
    """The official selection: the smallest cap with more than `budget` candidates (else all of them), k-means
    representatives of their L2-normalised embeddings, then a random fill."""
    levels = np.unique(first_cap[np.isfinite(first_cap)])
    reached = next((level for level in levels if (first_cap <= level).sum() > budget), levels[-1] if len(levels)
                   else -1)
    candidates = np.flatnonzero(first_cap <= reached)
    unit = z[candidates] / np.maximum(np.linalg.norm(z[candidates], axis=1, keepdims=True), 1e-12)
    picks = candidates[kmeans_representatives(unit, budget, seed=seed * 1009 + round_)]
    if len(picks) < budget:
        rest = np.setdiff1d(np.arange(len(ids)), picks)
        fill = rest[order(uniform(ids[rest], seed, round_, PURPOSE_FILL), ids[rest])][:budget - len(picks)]
        picks = np.concatenate([picks, fill])
    return pa.table({"id": pa.array(ids[picks], pa.int64()), "score": pa.array(flips[picks], pa.float64()),
                     "confidence": pa.array(confidence[picks], pa.float64())})


def _gathered(pool: dict, budget: int, seed: int, round_: int) -> pa.Table:
    return alpha_mix(pool["id"], pool["z"], pool["first_cap"], pool["flips"], pool["confidence"], budget, seed,
                     round_)


@register(Settings)
def plan(engine, request):
    if request.labeled.num_rows == 0:
        raise RayDM2Error("alpha_mix needs labeled images: its anchors are the labeled class means")
    unlabeled, labeled = engine.embed(with_labeled=True)
    anchors = engine.gather(_class_anchors, {"labeled": (labeled, ["id", "z"])},
                            labels=request.labeled.select(["id", "label"]), num_classes=request.model.num_classes)
    head = checkpoint.load(request.checkpoint, request.model).head
    scored = engine.map(unlabeled, flips_batch, anchors=anchors.astype(np.float64),
                        weight=head.weight.detach().double().numpy(), bias=head.bias.detach().double().numpy(),
                        cap_step=request.settings.alpha_cap)
    picked = engine.gather(_gathered, {"pool": (scored, ["id", "z", "first_cap", "flips", "confidence"])},
                           budget=request.budget, seed=request.seed, round_=request.round)
    return select_picked(engine, picked, columns=("confidence",))
