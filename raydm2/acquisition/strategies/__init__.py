"""Strategy registry (SPEC section 6; timm's registry + factory, on strategies).

A strategy is one module: its own pydantic settings model (a subclass of `StrategySettings` whose `name` is a
`Literal` of the strategy's name) and a plan written against the engine interface, registered with
`@register(Settings)`:

    class Settings(StrategySettings):
        name: Literal["my_strategy"] = "my_strategy"
        temperature: float = 1.0

    @register(Settings)
    def plan(engine: Engine, request: AcquireRequest) -> tuple[pa.Table, list[str]]:
        ...  # returns the selection (rows in selection order, from `ranking`) and warnings

Every module of this package is imported on the first lookup, so a new file here is a new strategy, and so is a
module named in `RAYDM2_STRATEGY_MODULES` (comma-separated importable names: strategies of your own, outside
raydm2; `raydm2.runtime.connect` ships them to Ray's workers as `runtime_env` `py_modules`). The config's
`strategy:` section, the CLI's choices and the benchmarks' lists all come from here.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from raydm2.acquisition.request import StrategySettings
from raydm2.errors import RayDM2Error
from raydm2 import plugins


@dataclass(frozen=True)
class Strategy:
    name: str
    settings: type[StrategySettings]
    plan: Callable


_REGISTRY: dict[str, Strategy] = {}


def register(settings: type[StrategySettings]):
    """Register `plan` under the default of `settings.name`."""
    name = settings.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise TypeError(f"{settings.__name__}.name needs a default: the strategy's registered name")

    def wrap(plan: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].plan.__module__ != plan.__module__:
            raise ValueError(f"strategy {name!r} registered twice ({_REGISTRY[name].plan.__module__}, "
                             f"{plan.__module__})")
        _REGISTRY[name] = Strategy(name, settings, plan)
        return plan

    return wrap


def _load() -> None:
    # Already-imported modules are not run again, so nothing registers twice.
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            import_module(f"{__name__}.{module.name}")
    plugins.modules()


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Strategy:
    _load()
    if name not in _REGISTRY:
        raise RayDM2Error(f"unknown strategy {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
