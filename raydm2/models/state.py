"""State dicts from bytes, the one way raydm2 reads weights: `torch.load(weights_only=True)` (never unpickling
arbitrary objects) or safetensors, with anything else refused in one line naming the file."""

from __future__ import annotations

import io

import torch

from raydm2.errors import RayDM2Error


def from_bytes(blob: bytes, where: str, map_location="cpu") -> dict:
    """The tensors of a state-dict file's bytes (a `{"state_dict": ...}` wrapper is opened)."""
    try:
        if where.endswith(".safetensors"):
            from safetensors.torch import load

            state = load(blob)
        else:
            state = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch and safetensors raise many variants for unsafe or corrupt files
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayDM2Error(f"{where} is not a loadable state dict: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RayDM2Error(f"{where} is not a state dict of tensors")
    return state
