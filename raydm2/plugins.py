"""Modules of the user's own that extend raydm2 (strategies), named in `RAYDM2_STRATEGY_MODULES`."""

from __future__ import annotations

import importlib
import os

from raydm2.errors import RayDM2Error

ENV = "RAYDM2_STRATEGY_MODULES"


def modules() -> list:
    """The modules named in `RAYDM2_STRATEGY_MODULES` (comma-separated importable names), imported."""
    out = []
    for name in filter(None, (m.strip() for m in os.environ.get(ENV, "").split(","))):
        try:
            out.append(importlib.import_module(name))
        except ImportError as exc:
            raise RayDM2Error(f"{ENV} names {name!r}, which cannot be imported: {exc}") from None
    return out
