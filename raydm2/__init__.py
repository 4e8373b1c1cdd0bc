"""raydm2: large-pool active learning with DM2 on Ray.

The public Python API (docs/api.md); everything else in the package is internal and may change:

    import raydm2

    raydm2.connect()                                   # RAY_ADDRESS's cluster, or an embedded local one
    project = raydm2.create_project("proj", raydm2.ProjectConfig(name="proj", pool="pools/mnist/train",
                                    test_pool="pools/mnist/test", classes=[str(i) for i in range(10)]))
    raydm2.seed(project, 100)                          # round 0: random picks
    raydm2.label(project, oracle=True)                 # or ids=..., labels=..., or file="export.json"
    raydm2.train(project)                              # Ray Train, DM2-AT
    selection = raydm2.acquire(project)                # the next round's picks (a pyarrow Table)
"""

from __future__ import annotations

import os
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

# MKL's conditional numerical reproducibility: a matrix product's bits then do not depend on the thread count or the
# batch size, so the same images embed to the same features in any actor layout and in the in-memory engine, and
# near-ties in k-means or k-center resolve the same way everywhere. It must be set before torch loads MKL; Ray's
# workers get it from `runtime.connect`.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

try:
    __version__ = version("raydm2")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# name -> (module, attribute): imported on first use, so `import raydm2` stays light.
_API = {
    "AcquireOptions": ("raydm2.acquisition.request", "AcquireOptions"),
    "Project": ("raydm2.ledger.project", "Project"),
    "ProjectConfig": ("raydm2.ledger.config", "ProjectConfig"),
    "RayDM2Error": ("raydm2.errors", "RayDM2Error"),
    "SimulationPlan": ("raydm2.service.simulate", "SimulationPlan"),
    "acquire": ("raydm2.service.loop", "acquire"),
    "connect": ("raydm2.runtime", "connect"),
    "create_project": ("raydm2.service.loop", "create_project"),
    "label": ("raydm2.service.loop", "label"),
    "merge_settings": ("raydm2.ledger.config", "merge_settings"),
    "open_project": ("raydm2.ledger.project", "open_project"),
    "requery": ("raydm2.service.loop", "requery"),
    "seed": ("raydm2.service.loop", "seed"),
    "simulate": ("raydm2.service.simulate", "simulate"),
    "train": ("raydm2.service.loop", "train"),
    "validate_config": ("raydm2.ledger.config", "validate_config"),
}
__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'raydm2' has no attribute {name!r}")
    module, attribute = _API[name]
    return getattr(import_module(module), attribute)


def __dir__() -> list[str]:
    return __all__
