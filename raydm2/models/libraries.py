"""Backbones from torchvision (`torchvision/<name>`) and timm (`timm/<name>`), and the user's own
(`model.factory: "package.module:function"`), as bodies that map pixels to penultimate features.

Initial weights (`model.weights`) are read only when a round's training starts: a checkpoint holds everything after
that, so acquisition never downloads. A weights name goes through the library's own cache (torch hub for
torchvision, the Hugging Face hub for timm: a user's machine downloads once); a path or URI is a state-dict file
for clusters without internet, read with `weights_only=True`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from torch import nn

from raydm2 import plugins
from raydm2.errors import RayDM2Error
from raydm2.models import state

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PREFIXES = ("torchvision/", "timm/")


def is_library(arch: str) -> bool:
    return arch.startswith(PREFIXES)


def is_file(weights: str) -> bool:
    """A path or URI of a state-dict file, rather than a weights name of the library's."""
    return "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RayDM2Error(f"{type(net).__name__} has no linear classifier to replace")
    return linears[-1]


def _replace(net: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, new)


def _torchvision(name: str) -> tuple[nn.Module, int]:
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise RayDM2Error(f"torchvision has no classification model {name!r} (see torchvision.models.list_models())")
    net = tvm.get_model(name, weights=None)
    # The classifier's last linear layer becomes the project's head: what feeds it is DM2's feature space.
    where, linear = _last_linear(net)
    _replace(net, where, nn.Identity())
    return net, linear.in_features


class _TimmFeatures(nn.Module):
    """timm model -> pooled pre-logits features, the input of its classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def _timm_module():
    try:
        import timm
    except ImportError:
        raise RayDM2Error("model.arch 'timm/...' needs timm: pip install 'raydm2[timm]'") from None
    return timm


def _timm(name: str, tag: str | None) -> tuple[nn.Module, int]:
    timm = _timm_module()
    full = f"{name}.{tag}" if tag else name
    try:
        net = timm.create_model(full, pretrained=bool(tag), num_classes=0)
    except RuntimeError as exc:  # timm's "Unknown model" and "no pretrained weights" are RuntimeErrors
        raise RayDM2Error(f"timm cannot build {full!r}: {exc}") from None
    dim = getattr(net, "head_hidden_size", None) or net.num_features
    return _TimmFeatures(net), int(dim)


def body(arch: str, weights: str | None, initial: bool) -> tuple[nn.Module, int, int]:
    """(body, feature dimension, input channels) of a `torchvision/` or `timm/` arch. With `initial`, the body
    starts from `weights`."""
    library, _, name = arch.partition("/")
    if library == "torchvision":
        net, dim = _torchvision(name)
        if initial and weights:
            _load_into(net, _torchvision_state(name, weights) if not is_file(weights) else _read_file(weights),
                       weights)
        return net, dim, 3
    named_tag = weights if weights and not is_file(weights) else None
    net, dim = _timm(name, named_tag if initial else None)
    if initial and weights and is_file(weights):
        _load_into(net.net, _read_file(weights), weights)
    return net, dim, 3


def stats(arch: str, weights: str | None) -> tuple[tuple, tuple] | None:
    """Normalisation of pretrained weights (their own mean/std), or None when the model trains from scratch."""
    if not weights:
        return None
    library, _, name = arch.partition("/")
    if library == "torchvision" and not is_file(weights):
        preset = _torchvision_weights(name, weights).transforms()
        return tuple(preset.mean), tuple(preset.std)
    if library == "timm":
        cfg = _timm_module().models.get_pretrained_cfg(name if is_file(weights) else f"{name}.{weights}")
        if cfg is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_STATS


def _torchvision_weights(name: str, weights: str):
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(name)[weights]
    except (KeyError, ValueError):
        known = ", ".join(w.name for w in tvm.get_model_weights(name))
        raise RayDM2Error(f"torchvision/{name} has no weights {weights!r}; known: {known}, or a state-dict "
                          "file path") from None


def _torchvision_state(name: str, weights: str) -> dict:
    return _torchvision_weights(name, weights).get_state_dict(progress=False, check_hash=True)


def _read_file(uri: str) -> dict:
    from raydm2.data.storage import resolve

    try:
        blob = resolve(uri).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise RayDM2Error(f"model.weights file {uri} does not exist") from None
    return state.from_bytes(blob, f"model.weights file {uri}")


def load_body_file(net: nn.Module, uri: str) -> None:
    """A built-in body from a state-dict file: the body's own keys, or a raydm2 checkpoint's `body.*` (a model
    trained by another project, transferred)."""
    state = _read_file(uri)
    if any(k.startswith("body.") for k in state):
        state = {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
    _load_into(net, state, uri)


def _load_into(net: nn.Module, state: dict, source: str) -> None:
    """Every parameter and buffer of the body must come from `state`; the weights' own classifier is dropped."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise RayDM2Error(f"model.weights {source} lacks {len(missing)} of the backbone's {len(own)} tensors "
                          f"(first: {', '.join(missing[:3])}): weights of another architecture?")
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise RayDM2Error(f"model.weights {source} has other shapes than the backbone for {len(wrong)} tensors "
                          f"(first: {wrong[0]} {tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})")
    net.load_state_dict({k: state[k] for k in own}, strict=True)


def factory(reference: str) -> Callable[..., nn.Module]:
    """The user's function from "package.module:function"."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise RayDM2Error(f"model.factory {reference!r} must be 'package.module:function'")
    if os.getcwd() not in sys.path:
        # Found as `python -m` finds modules: installed, on PYTHONPATH, or in the current directory.
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RayDM2Error(f"model.factory module {module_name!r} cannot be imported: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RayDM2Error(f"model.factory: module {module_name!r} has no function {attr!r}")
    plugins.ship(sys.modules[module_name.partition(".")[0]])
    return fn


def factory_body(reference: str, num_classes: int, channels: int, image_size: int) -> tuple[nn.Module, int, int]:
    """Contract: `function(num_classes=, channels=, image_size=)` returns an `nn.Module` with an int attribute
    `num_features`, whose forward maps [0,1] pixels (N, channels, size, size) to features (N, num_features)."""
    net = factory(reference)(num_classes=num_classes, channels=channels, image_size=image_size)
    if not isinstance(net, nn.Module):
        raise RayDM2Error(f"model.factory {reference} returned {type(net).__name__}, not a torch.nn.Module")
    dim = getattr(net, "num_features", None)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise RayDM2Error(f"model.factory {reference}: the module has no positive int attribute 'num_features' "
                          "(the size of the features its forward returns)")
    return net, dim, channels
