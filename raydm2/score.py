"""Mix-and-score actor: decodes anchor and partner pixels, mixes them, scores the mix, keeps the batch's best.

Each call returns only its batch's top `keep` candidates (score descending, id ascending). Because that order is
total, the driver's merge of these local winners is exactly the global top-B.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raydm2.dm2 import DM2Params, mix, mix_lambda, uncertainty
from raydm2.embed import ModelActor
from raydm2.images import decode
from raydm2.models import ModelSpec
from raydm2.topk import top_rows


def candidate_table(ids, score, partner, lam, anchor_conf, partner_dist, nbr_ids, nbr_dists) -> pa.Table:
    """The one candidate schema shared by the distributed path and the reference."""
    k = nbr_ids.shape[1]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "score": pa.array(score, pa.float64()),
            "neighbor_id": pa.array(partner, pa.int64()),
            "mix_lambda": pa.array(lam, pa.float64()),
            "anchor_conf": pa.array(anchor_conf, pa.float64()),
            "neighbor_dist": pa.array(partner_dist, pa.float64()),
            "nbr_ids": pa.FixedSizeListArray.from_arrays(pa.array(nbr_ids.reshape(-1), pa.int64()), k),
            "nbr_dists": pa.FixedSizeListArray.from_arrays(pa.array(nbr_dists.reshape(-1), pa.float64()), k),
        }
    )


class MixScorer(ModelActor):
    def __init__(self, checkpoint_uri: str, spec: ModelSpec, threads: int, use_gpu: bool, params: DM2Params,
                 tau: float | None, keep: int):
        super().__init__(checkpoint_uri, spec, threads, use_gpu)
        self.spec = spec
        self.params = params
        self.tau = tau
        self.keep = keep

    def _decode(self, blobs) -> np.ndarray:
        return np.stack([decode(b, self.spec.image_size, self.spec.channels) for b in blobs])

    def __call__(self, batch: dict) -> pa.Table:
        anchors = self._decode(batch["image"])
        partner = batch["partner"] if "partner" in batch else self._decode(batch["nbr_image"])
        lam = mix_lambda(batch["nbr_dist"], self.params, self.tau)
        logits, _ = self.forward(mix(anchors, partner, lam))
        score, _ = uncertainty(logits)
        table = candidate_table(batch["id"], score, batch["nbr_id"], lam, batch["conf"], batch["nbr_dist"],
                                np.asarray(batch["nbr_ids"]), np.asarray(batch["nbr_dists"]))
        return top_rows(table, self.keep)


def mean_partner(group: dict, size: int, channels: int) -> dict:
    """`mix=mean`: the partner is the pixel mean of all k neighbours of one anchor (one group per anchor)."""
    pixels = np.stack([decode(b, size, channels) for b in group["nbr_image"]]).astype(np.float32) / 255.0
    return {"id": group["id"][:1], "partner": pixels.mean(axis=0, keepdims=True)}
