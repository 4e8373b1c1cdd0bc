"""Checkpoint format: `<dir>/model.pt` (a plain state dict) and `<dir>/meta.json` (what it was trained as).

Loading never unpickles arbitrary objects (`torch.load(weights_only=True)`), and the metadata is checked against
the project before any work starts, so a checkpoint of another architecture or class count fails fast.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict

import torch

from raydm2.errors import RayDM2Error
from raydm2.models import state
from raydm2.models.registry import Classifier, ModelSpec, build
from raydm2.data.storage import Location, resolve

WEIGHTS = "model.pt"
META = "meta.json"


def save(model: torch.nn.Module, spec: ModelSpec, directory: Location | str, extra: dict | None = None) -> None:
    loc = resolve(directory) if isinstance(directory, str) else directory
    module = getattr(model, "module", model)  # unwrap DDP
    tensors = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    buf = io.BytesIO()
    torch.save(tensors, buf)
    loc.join(WEIGHTS).write_bytes(buf.getvalue())
    # meta.json last: its presence marks a complete checkpoint.
    loc.join(META).write_text(json.dumps({"spec": asdict(spec), **(extra or {})}, indent=2, sort_keys=True))


def fingerprint(directory: Location | str, backbone_only: bool = False) -> str:
    """Digest of the weights: embeddings computed with equal fingerprints are interchangeable. With
    `backbone_only` (a frozen backbone), the head is left out: every round's checkpoint then shares one digest,
    so one embedding cache serves them all."""
    loc = resolve(directory) if isinstance(directory, str) else directory
    if not backbone_only:
        return hashlib.sha256(loc.join(WEIGHTS).read_bytes()).hexdigest()[:16]
    weights = _weights(loc)
    digest = hashlib.sha256(b"backbone")
    for key in sorted(k for k in weights if not k.startswith(("head.", "dropout."))):
        digest.update(key.encode())
        digest.update(weights[key].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def head(directory: Location | str) -> tuple:
    """(weight, bias) of the linear head, as float64 numpy arrays."""
    loc = resolve(directory) if isinstance(directory, str) else directory
    weights = _weights(loc)
    return weights["head.weight"].double().numpy(), weights["head.bias"].double().numpy()


def _weights(loc: Location) -> dict:
    return state.from_bytes(loc.join(WEIGHTS).read_bytes(), f"checkpoint {loc.uri}/{WEIGHTS}")


def read_meta(directory: Location | str) -> dict:
    loc = resolve(directory) if isinstance(directory, str) else directory
    meta = loc.join(META)
    if not meta.exists():
        raise RayDM2Error(f"no checkpoint at {loc.uri} ({META} missing)")
    try:
        data = json.loads(meta.read_text())
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise RayDM2Error(f"checkpoint metadata {meta.uri} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("spec", {}), dict):
        raise RayDM2Error(f"checkpoint metadata {meta.uri} is not an object with a 'spec' mapping; the checkpoint was "
                          "not written by raydm2")
    return data


def check_compatible(directory: Location | str, expected: ModelSpec) -> None:
    """Refuse a checkpoint trained for another architecture, class count, or image shape."""
    spec = read_meta(directory).get("spec", {})
    problems = [
        f"{field} is {spec.get(field)!r}, project has {getattr(expected, field)!r}"
        for field in ("arch", "num_classes", "channels", "image_size", "cifar_stem", "factory")
        if spec.get(field) != getattr(expected, field)
    ]
    if problems:
        where = directory.uri if isinstance(directory, Location) else directory
        raise RayDM2Error(f"checkpoint {where} does not match the project: " + "; ".join(problems))


def load(directory: Location | str, expected: ModelSpec, map_location="cpu") -> Classifier:
    loc = resolve(directory) if isinstance(directory, str) else directory
    check_compatible(loc, expected)
    try:
        blob = loc.join(WEIGHTS).read_bytes()
    except FileNotFoundError:
        raise RayDM2Error(f"checkpoint {loc.uri} has no {WEIGHTS}") from None
    if not blob:
        raise RayDM2Error(f"checkpoint {loc.uri}/{WEIGHTS} is empty (0 bytes): retrain the round")
    weights = state.from_bytes(blob, f"checkpoint {loc.uri}/{WEIGHTS}", map_location)
    model = build(expected)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise RayDM2Error(f"checkpoint {loc.uri} does not fit the model {expected.arch}: {exc}") from None
    return model
