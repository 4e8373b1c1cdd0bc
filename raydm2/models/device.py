"""Where a model runs. On a GPU, acquisition computes in float32 without TF32, so a GPU selects what a CPU selects
(up to float32 rounding): no autocast, and cuDNN/cuBLAS told not to round products to TF32."""

from __future__ import annotations

import torch


def select_device(prefer_gpu: bool = True) -> torch.device:
    device = torch.device("cuda") if prefer_gpu and torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device
