"""Strategy registry (SPEC section 6). Each strategy module registers one function
`select(request: AcquireRequest) -> AcquireResult`; every one of them runs on the shared Ray Data stages of
`raydm2.pipeline` and writes the same selection format (`id`, `rank`, `score`, then its own columns).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from raydm2.errors import RayDM2Error

_REGISTRY: dict[str, Callable] = {}
# Modules whose import registers strategies; imported on first lookup so `import raydm2.strategies` stays light.
_MODULES = ("uncertainty", "coreset", "badge", "alpha_mix", "noise_stability", "dm2")


def register(name: str):
    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def _load() -> None:
    for module in _MODULES:  # already-imported modules are not re-run, so nothing registers twice
        import_module(f"raydm2.strategies.{module}")


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Callable:
    _load()
    if name not in _REGISTRY:
        raise RayDM2Error(f"unknown strategy {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
