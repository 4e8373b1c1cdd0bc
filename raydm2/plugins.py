"""Modules of the user's own that extend raydm2: strategies named in `RAYDM2_STRATEGY_MODULES`, and the module of a
project's `model.factory`. Ray's workers import them from copies uploaded with the job (`runtime_env` py_modules)."""

from __future__ import annotations

import importlib
import os

from raydm2.errors import RayDM2Error

ENV = "RAYDM2_STRATEGY_MODULES"
_shipped: list = []


def ship(module) -> None:
    """Upload `module` to the workers of the cluster this process connects to next."""
    if module not in _shipped and not module.__name__.startswith(("raydm2", "torch", "timm")):
        _shipped.append(module)


def modules() -> list:
    """The modules named in `RAYDM2_STRATEGY_MODULES` (comma-separated importable names), imported, and those
    shipped by `ship`."""
    out = list(_shipped)
    for name in filter(None, (m.strip() for m in os.environ.get(ENV, "").split(","))):
        try:
            module = importlib.import_module(name)
            if module not in out:
                out.append(module)
        except ImportError as exc:
            raise RayDM2Error(f"{ENV} names {name!r}, which cannot be imported: {exc}") from None
    return out
