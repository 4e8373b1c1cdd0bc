"""Project configuration: validated once, here, at the edge. The library takes these typed values.

`project.yaml` is the serialised `ProjectConfig`. Unknown keys are errors (a typo must not silently fall back
to a default), and every number has its range checked.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raydm2.errors import RayDM2Error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    arch: Literal["small_cnn", "resnet8", "resnet20", "resnet18", "mobilenet_v2", "vgg16_bn"] = "small_cnn"
    # 3x3 stem without max-pool, for 32x32 inputs (SPEC section 4).
    cifar_stem: bool = True
    dropout: float = Field(0.25, ge=0.0, lt=1.0)


class ImageConfig(_Strict):
    size: int = Field(28, gt=0, le=4096)
    channels: Literal[1, 3] = 1


class KnnConfig(_Strict):
    k: int = Field(10, gt=0, le=1000)
    # auto: exact brute force up to `exact_max_anchors`, FAISS IVF above.
    mode: Literal["auto", "exact", "ivf"] = "auto"
    exact_max_anchors: int = Field(20_000, gt=0)
    # Shortlist size as a multiple of k; SPEC requires k' >= 4k.
    shortlist_factor: int = Field(8, ge=4, le=256)
    nlist: int | None = Field(None, gt=0)
    nprobe: int | None = Field(None, gt=0)
    train_sample: int = Field(100_000, gt=0)
    l2_weight: float = Field(0.5, ge=0.0, le=1.0)


class NoiseStabilityConfig(_Strict):
    draws: int = Field(30, gt=0, le=1000)
    # ‖noise‖_F = scale·‖W‖_F per module.
    scale: float = Field(0.001, gt=0.0, le=1.0)
    # Consider only this seeded random fraction of the pool (None: all of it).
    subset_fraction: float | None = Field(None, gt=0.0, le=1.0)


STRATEGY_NAMES = ("dm2", "random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge",
                  "alpha_mix", "noise_stability")


class StrategyConfig(_Strict):
    name: Literal[STRATEGY_NAMES] = "dm2"
    budget: int = Field(100, gt=0, le=10_000_000)
    # DM2
    lam: float = Field(0.8, gt=0.0, lt=1.0)
    mix: Literal["random", "mean", "adaptive"] = "random"
    dedupe_radius: float | None = Field(None, gt=0.0)
    knn: KnnConfig = KnnConfig()
    # BALD: MC-dropout draws
    bald_samples: int = Field(10, gt=1, le=1000)
    # ALFA-Mix: the cap on α
    alpha_cap: float = Field(0.2, gt=0.0, le=1.0)
    noise_stability: NoiseStabilityConfig = NoiseStabilityConfig()


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
    checkpoint_every: int = Field(1, gt=0)


class ComputeConfig(_Strict):
    batch_size: int = Field(256, gt=0, le=65_536)
    # None: sized from the cluster's free CPUs (or one per GPU).
    actors: int | None = Field(None, gt=0, le=4096)


class ProjectConfig(_Strict):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    pool: str = Field(..., min_length=1)
    test_pool: str | None = None
    classes: list[str] = Field(..., min_length=2)
    model: ModelConfig = ModelConfig()
    image: ImageConfig = ImageConfig()
    strategy: StrategyConfig = StrategyConfig()
    train: TrainConfig = TrainConfig()
    compute: ComputeConfig = ComputeConfig()
    seed: int = Field(0, ge=0, lt=2**31)

    @model_validator(mode="after")
    def _classes_unique(self):
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def hash(self) -> str:
        """Stable digest recorded in each manifest so a round can be tied to the exact config it ran with."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_overrides(self, overrides: dict) -> "ProjectConfig":
        """Deep-merge dotted CLI overrides ({"strategy.k": 5}) and validate the result as a whole."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise RayDM2Error(f"unknown setting {dotted!r}")
                node = node[key]
            if leaf not in node:
                raise RayDM2Error(f"unknown setting {dotted!r}")
            node[leaf] = value
        return validate_config(data, source="command-line overrides")


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


def parse_config_yaml(text: str, source: str = "project.yaml") -> ProjectConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RayDM2Error(f"malformed {source}: {exc}") from None
    return validate_config(data, source)
