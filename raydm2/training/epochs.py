"""The epoch loop of DM2-AT (SPEC section 4), shared by the Ray Train worker and `fit_in_process`, so both train
identically: augmentation, near-equal batches, the optimizer, clean and FGSM-robust accuracy."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from raydm2.data.images import to_tensor
from raydm2.errors import RayDM2Error
from raydm2.ledger.config import ProjectConfig, TrainConfig
from raydm2.models.device import select_device
from raydm2.models.fgsm import dm2at_loss, fgsm
from raydm2.models.registry import build


def augment(x: torch.Tensor, gen: torch.Generator, rgb: bool) -> torch.Tensor:
    """Random crop (pad 4 for RGB, 2 for grey) plus horizontal flip for RGB; deterministic given `gen`."""
    pad = 4 if rgb else 2
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if rgb:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def accuracy_counts(model, x: np.ndarray, y: np.ndarray, epsilon: float, device, num_classes: int) -> np.ndarray:
    """Per class: (clean correct, FGSM-robust correct, images), shape (3, num_classes), in eval mode. Counts, not
    rates, so workers' shards (an empty one included) add up; per class, so a long-tailed test set can report
    balanced accuracy. The attack itself needs gradients."""
    module = getattr(model, "module", model)
    module.eval()
    counts = torch.zeros(3, num_classes, dtype=torch.float64, device=device)
    for s in range(0, len(y), 512):
        xb = to_tensor(x[s:s + 512]).to(device)
        yb = torch.from_numpy(y[s:s + 512]).to(device)
        logits = module(xb)
        with torch.enable_grad():
            adv = fgsm(module, xb, yb, epsilon) if epsilon > 0 else xb
        hits = torch.stack([logits.argmax(1) == yb, module(adv).argmax(1) == yb, torch.ones_like(yb, dtype=bool)])
        counts.index_add_(1, yb, hits.to(torch.float64))
    module.train()
    return counts.cpu().numpy()


def accuracy_metrics(counts: np.ndarray, epsilon: float) -> dict:
    """Accuracies from `accuracy_counts` (summed over workers). Balanced accuracy is the mean recall over the
    classes the test set has."""
    clean, robust, n = np.asarray(counts, float)
    present = n > 0
    return {"clean_accuracy": clean.sum() / max(n.sum(), 1), "robust_accuracy": robust.sum() / max(n.sum(), 1),
            "balanced_accuracy": float(np.mean(clean[present] / n[present])) if present.any() else 0.0,
            "test_images": int(n.sum()), "eval_epsilon": epsilon}


def even_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`order` cut into ceil(n / batch_size) batches of near-equal size. A ragged last batch of a few images
    (100 labels at batch 96 leaves 4) still gets a full-size Adam step, and when it is the epoch's last step the
    model ends on it: the MNIST protocol's accuracy fell by 10-30 points at exactly those label counts."""
    steps = -(-len(order) // batch_size)
    return np.array_split(order, steps) if steps else []


def train_epochs(model, optimizer, x_all: np.ndarray, y_all: np.ndarray, cfg: TrainConfig, seed: int, rank: int,
                 device, rgb: bool, start_epoch: int, after_epoch) -> None:
    """Epochs `start_epoch`..`cfg.epochs` of DM2-AT on (x_all, y_all); `after_epoch(epoch, metrics)` follows
    each one. Shared by the Ray Train worker and `fit_in_process`, so both train identically."""
    for epoch in range(start_epoch, cfg.epochs):
        # The epoch's randomness depends only on (seed, epoch, rank), so a resumed run repeats it exactly.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
        perm = torch.randperm(len(y_all), generator=gen).numpy()
        model.train()
        started, seen, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        for idx in even_batches(perm, cfg.batch_size):
            xb = to_tensor(x_all[idx])
            if cfg.augment:
                xb = augment(xb, gen, rgb)
            xb, yb = xb.to(device), torch.from_numpy(y_all[idx]).to(device)
            eps = cfg.epsilon if cfg.adversarial == "online" else 0.0
            loss, _ = dm2at_loss(model, xb, yb, eps, cfg.adv_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            steps += 1
        elapsed = time.perf_counter() - started
        after_epoch(epoch, {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "images_per_s": seen / max(elapsed, 1e-9),
            "steps": steps,
            "train_rows": int(len(y_all)),
        })


def fit_in_process(config: ProjectConfig, x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None = None,
                   y_test: np.ndarray | None = None) -> tuple[dict, dict]:
    """What `fit` computes with one worker, without Ray Train: (state dict, final metrics). Rows must be sorted
    by id, as a worker's shard is. No checkpoints between epochs: this is for simulations of many small rounds
    (`raydm2 simulate --engine local`), where Ray Train's start-up would cost more than the training."""
    cfg = config.train
    if cfg.adversarial == "selection":
        raise RayDM2Error("train.adversarial 'selection' needs stored counterparts: use the ray engine")
    torch.manual_seed(config.seed)
    device = select_device(cfg.use_gpu)
    model = build(config.model_spec(), initial=True).to(device)
    optimizer = make_optimizer(model, cfg)
    metrics: dict = {}
    train_epochs(model, optimizer, x, y.astype(np.int64), cfg, config.seed, 0, device, config.image.channels == 3, 0,
                 lambda _, m: metrics.update(m))
    if x_test is not None:
        counts = accuracy_counts(model, x_test, y_test.astype(np.int64), cfg.epsilon, device,
                                 config.num_classes)
        metrics.update(accuracy_metrics(counts, cfg.epsilon))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics
