"""Single-process selection: every strategy's computation on in-memory arrays in one process, with exact
brute-force neighbours for DM2. It is the oracle the distributed pipeline is tested against, and the engine of
`raydm2 simulate --engine local`, where hundreds of small rounds would otherwise pay Ray's fixed costs each time.

It calls the same formulas, actor classes and finalisation as the distributed path, but holds everything in one
process's memory: use it for small pools (tens of thousands of images) only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from raydm2 import checkpoint, pool
from raydm2.dm2 import DM2Params, choose_neighbour, mix, mix_lambda, tau_from, to_tensor, uncertainty, unit
from raydm2.images import UndecodableImage, decode
from raydm2.knn import ExactIndex
from raydm2.config import ProjectConfig
from raydm2.models import Classifier, spec_from_config
from raydm2.score import candidate_table
from raydm2.select import finalize
from raydm2.topk import order


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


def select(config: ProjectConfig, checkpoint_uri: str, round_: int, ids: np.ndarray, pixels: np.ndarray,
           labeled_ids: np.ndarray, labeled_pixels: np.ndarray, labeled_labels: np.ndarray) -> np.ndarray:
    """The ids `config.strategy` picks from the candidates (ids, NHWC pixels), best first: what the distributed
    `acquire` selects for the same checkpoint and round, computed with each actor called on one whole batch."""
    from raydm2.embed import Embedder
    from raydm2.strategies import alpha_mix, badge, coreset, noise_stability
    from raydm2.strategies import uncertainty as heuristics

    s, name, b, spec = config.strategy, config.strategy.name, config.strategy.budget, spec_from_config(config)
    threads = torch.get_num_threads()  # the actors set it process-wide: keep the caller's
    batch = {"id": ids, "pixels": pixels, "ok": np.ones(len(ids), np.uint8)}

    def picked(table: pa.Table) -> np.ndarray:
        return table.column("id").to_numpy()

    if name == "dm2":
        model = checkpoint.load(checkpoint_uri, spec)
        return picked(dm2_select(model, ids, pixels, DM2Params.from_config(config, round_), b))
    if name == "badge":
        g = badge.GradientEmbedder(checkpoint_uri, spec, threads, False)(batch)["g"]
        return picked(badge.badge(ids, g, b, config.seed, round_))
    if name == "noise_stability":
        ns = s.noise_stability
        out = noise_stability.NoiseScorer(checkpoint_uri, spec, threads, False, ns.draws, ns.scale, config.seed, round_,
                                          ns.subset_fraction)(batch)
        return picked(noise_stability.noise_stability(ids, out["diff"], out["considered"], b))
    if name in ("coreset", "alpha_mix"):
        embedder = Embedder(checkpoint_uri, spec, threads, False)
        z = embedder(batch)
        lab_z = embedder({"id": labeled_ids, "pixels": labeled_pixels,
                          "ok": np.ones(len(labeled_ids), np.uint8)})["z"]
        if name == "coreset":
            return picked(coreset.coreset(ids, z["z"], lab_z, b))
        head = embedder.model.head
        anchors = alpha_mix.class_means(lab_z, labeled_labels.astype(np.int64), config.num_classes)
        out = alpha_mix.flips_batch(z, anchors.astype(np.float64), head.weight.detach().double().numpy(),
                                    head.bias.detach().double().numpy(), s.alpha_cap)
        return picked(alpha_mix.alpha_mix(ids, out["z"], out["flips"], out["confidence"], b, config.seed, round_))
    if name == "random":
        out = heuristics.random_scores(batch, config.seed, round_)
    elif name == "bald":
        out = heuristics.BaldScorer(checkpoint_uri, spec, threads, False, samples=s.bald_samples, seed=config.seed,
                                    round_=round_)(batch)
    else:
        out = heuristics.ProbabilityScorer(checkpoint_uri, spec, threads, False, heuristic=name)(batch)
    return out["id"][order(out["score"], out["id"])[:b]]
