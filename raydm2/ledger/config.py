"""Project configuration: validated once, here, at the edge. The library takes these typed values.

`project.yaml` is the serialised `ProjectConfig`. Unknown keys are errors (a typo must not silently fall back
to a default), and every number has its range checked. The `strategy:` section is the chosen strategy's own
settings model, found in the strategy registry by its `name`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from raydm2.acquisition import strategies
from raydm2.acquisition.request import AcquireRequest, StrategySettings
from raydm2.data.images import DEFAULT_MAX_PIXELS, RESIZE_MODES, ImageSpec
from raydm2.data.storage import Location
from raydm2.errors import RayDM2Error
from raydm2.models import libraries
from raydm2.models.registry import REGISTRY, ModelSpec

DEFAULT_STRATEGY = "dm2"
# project.yaml files written before strategies had their own settings carried every strategy's keys.
_SHARED_STRATEGY_KEYS_V1 = {"lam", "mix", "dedupe_radius", "knn", "bald_samples", "alpha_cap", "noise_stability"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """`arch`: a built-in, `torchvision/<name>` or `timm/<name>`; or `factory`, the user's own (docs/models.md)."""

    arch: str = "small_cnn"
    # 3x3 stem without max-pool, for 32x32 inputs (SPEC section 4).
    cifar_stem: bool = True
    dropout: float = Field(0.25, ge=0.0, lt=1.0)
    weights: str | None = Field(None, min_length=1)
    factory: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    freeze_backbone: bool = False

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch in REGISTRY or (libraries.is_library(arch) and arch.partition("/")[2]):
            return arch
        raise ValueError(f"unknown model {arch!r}; available: {', '.join(REGISTRY)}, torchvision/<name>, timm/<name>")

    @model_validator(mode="after")
    def _weights_need_a_library(self):
        if self.weights and not libraries.is_library(self.arch) and not libraries.is_file(self.weights):
            raise ValueError(f"{self.weights!r} is a library's weights name, which needs a torchvision/ or timm/ arch;"
                             f" {self.arch!r} starts from a state-dict file (a path) or from scratch")
        if self.factory and self.weights:
            raise ValueError("a factory model loads its own weights; drop model.weights")
        return self


class ImageConfig(_Strict):
    """What the model sees; see `raydm2.data.images.ImageSpec` for the resize modes and conversion rules."""

    size: int = Field(28, gt=0, le=4096)
    channels: Literal[1, 3] = 1
    resize: Literal[RESIZE_MODES] = "crop"
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)


class TrainConfig(_Strict):
    epochs: int = Field(5, gt=0, le=10_000)
    batch_size: int = Field(64, gt=0, le=65_536)
    lr: float = Field(1e-3, gt=0.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    adversarial: Literal["online", "selection", "off"] = "online"
    epsilon: float = Field(8 / 255, ge=0.0, le=1.0)
    adv_weight: float = Field(0.5, ge=0.0, le=1.0)
    augment: bool = True
    num_workers: int = Field(1, gt=0, le=1024)
    use_gpu: bool = False
    # None: every epoch once 100,000 images are trained between two checkpoints, else fewer (at least the last).
    checkpoint_every: int | None = Field(None, gt=0)


class PretrainSettings(_Strict):
    """`raydm2 pretrain`'s SimCLR run: not a project setting (a project only names the file it wrote, in
    `model.weights`). `lr` is for a batch of 256 and scales with `batch_size`, as in SimCLR."""

    epochs: int = Field(20, gt=0, le=10_000)
    batch_size: int = Field(256, ge=4, le=65_536)
    lr: float = Field(0.06, gt=0.0)
    temperature: float = Field(0.5, gt=0.0)


class ComputeConfig(_Strict):
    """Acquisition's actor pool."""

    batch_size: int = Field(256, gt=0, le=65_536)
    # None: sized from the cluster's free CPUs (or one per GPU).
    actors: int | None = Field(None, gt=0, le=4096)
    # None: GPU actors when the cluster has GPUs. true: GPU actors even when none is up yet (an autoscaling cluster
    # starts GPU nodes for them); false: CPU actors.
    use_gpu: bool | None = None


def strategy_settings(value: Any) -> StrategySettings:
    """The `strategy:` mapping validated by the settings model of the strategy it names (default dm2)."""
    if isinstance(value, StrategySettings):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of strategy settings, got {type(value).__name__}")
    name = value.get("name", DEFAULT_STRATEGY)
    available = strategies.names()
    if name not in available:
        raise ValidationError.from_exception_data("strategy", [InitErrorDetails(
            type=PydanticCustomError("unknown_strategy", "unknown strategy '{name}'; available: {available}",
                                     {"name": name, "available": ", ".join(available)}),
            loc=("name",), input=name)])
    settings = strategies.get(name).settings
    if _SHARED_STRATEGY_KEYS_V1 <= value.keys():
        value = {k: v for k, v in value.items() if k not in _SHARED_STRATEGY_KEYS_V1 or k in settings.model_fields}
    return settings.model_validate(value)


class ProjectConfig(_Strict):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    pool: str = Field(..., min_length=1)
    test_pool: str | None = None
    classes: list[str] = Field(..., min_length=2)
    model: ModelConfig = ModelConfig()
    image: ImageConfig = ImageConfig()
    strategy: SerializeAsAny[StrategySettings] = Field(default_factory=lambda: strategy_settings({}))
    train: TrainConfig = TrainConfig()
    compute: ComputeConfig = ComputeConfig()
    seed: int = Field(0, ge=0, lt=2**31)

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_settings(cls, value):
        return strategy_settings(value)

    @model_validator(mode="after")
    def _classes_unique(self):
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def model_spec(self) -> ModelSpec:
        m = self.model
        return ModelSpec(arch="factory" if m.factory else m.arch, num_classes=self.num_classes,
                         channels=self.image.channels, image_size=self.image.size, cifar_stem=m.cifar_stem,
                         dropout=m.dropout, weights=m.weights, factory=m.factory, freeze_backbone=m.freeze_backbone)

    def image_spec(self) -> ImageSpec:
        return ImageSpec(self.image.size, self.image.channels, self.image.resize, self.image.max_pixels)

    def acquire_request(self, checkpoint: str, round_: int, excluded: np.ndarray,
                        labeled: pa.Table | None = None, cache: Location | None = None) -> AcquireRequest:
        """What `raydm2.acquisition.acquire` needs to select round `round_` of this project."""
        extra = {} if labeled is None else {"labeled": labeled}
        return AcquireRequest(pool=self.pool, model=self.model_spec(), checkpoint=checkpoint, round=round_,
                              seed=self.seed, settings=self.strategy, excluded=excluded, cache=cache,
                              image=self.image_spec(), **extra)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def hash(self) -> str:
        """Stable digest recorded in each manifest so a round can be tied to the exact config it ran with."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_overrides(self, overrides: dict) -> "ProjectConfig":
        """Dotted overrides ({"strategy.knn.k": 5}) merged over this config and validated as a whole. Every key
        must name an existing setting, except for the settings of a strategy that `strategy.name` switches to."""
        data = self.model_dump(mode="json")
        switching = overrides.get("strategy.name", data["strategy"]["name"]) != data["strategy"]["name"]
        for dotted in overrides:
            node, *parents = data, *dotted.split(".")[:-1]
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            known = isinstance(node, dict) and dotted.split(".")[-1] in node
            if not known and not (switching and dotted.startswith("strategy.")):
                raise RayDM2Error(f"unknown setting {dotted!r}")
        return validate_config(merge_settings(data, nested(overrides)), source="command-line overrides")


def nested(flat: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def merge_settings(*layers: dict) -> dict:
    """Deep-merge layers of settings, later layers winning: presets, a settings file, command-line values. A layer
    whose `strategy.name` differs from the strategy so far starts that section afresh (keeping the settings every
    strategy has: `budget`, `candidates`), since one strategy's settings mean nothing to another."""
    merged: dict = {}
    for layer in layers:
        strategy = layer.get("strategy")
        current = merged.get("strategy")
        if isinstance(strategy, dict) and isinstance(current, dict) and \
                strategy.get("name", current.get("name", DEFAULT_STRATEGY)) != current.get("name", DEFAULT_STRATEGY):
            merged["strategy"] = {k: v for k, v in current.items() if k in StrategySettings.model_fields
                                  and k != "name"}
        merged = _deep_merge(merged, layer)
    return merged


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if both else value
    return merged


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def validate_config(data, source: str = "project.yaml") -> ProjectConfig:
    if not isinstance(data, dict):
        raise RayDM2Error(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise RayDM2Error(f"invalid {source}: {_describe(exc)}") from None


def validate_pretrain(data: dict) -> PretrainSettings:
    try:
        return PretrainSettings.model_validate(data)
    except ValidationError as exc:
        raise RayDM2Error(f"invalid pretrain settings: {_describe(exc)}") from None


def parse_config_yaml(text: str, source: str = "project.yaml") -> ProjectConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RayDM2Error(f"malformed {source}: {exc}") from None
    return validate_config(data, source)
