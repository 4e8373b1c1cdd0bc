"""FGSM and the DM2-AT loss (SPEC section 4). Inputs are [0,1] pixels; the model normalises internally.

The input-gradient pass runs on the bare module, never through the DDP wrapper: DDP's all-reduce hooks fire
only for the parameter gradients of the training backward pass, once per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """x_adv = clip(x + ε·sign(∇ₓ CE(f(x), y)), 0, 1), computed without touching parameter gradients."""
    module = getattr(model, "module", model)  # unwrap DDP so no reducer hook is armed by this pass
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(module(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + epsilon * grad.sign()).clamp_(0.0, 1.0).detach()


def dm2at_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
               adv_weight: float) -> tuple[torch.Tensor, dict]:
    """(1−w)·CE(f(x), y) + w·CE(f(x_adv), y). With ε = 0 or w = 0 it is exactly the plain CE loss."""
    if epsilon == 0 or adv_weight == 0:
        loss = F.cross_entropy(model(x), y)
        return loss, {"clean_loss": loss.item()}
    x_adv = fgsm(model, x, y, epsilon)
    # One forward over the concatenated batch: a single DDP forward/backward per step.
    logits = model(torch.cat([x, x_adv]))
    clean = F.cross_entropy(logits[: len(x)], y)
    adv = F.cross_entropy(logits[len(x):], y)
    return (1 - adv_weight) * clean + adv_weight * adv, {"clean_loss": clean.item(), "adv_loss": adv.item()}
