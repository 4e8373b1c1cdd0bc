"""Model registry and factory. Every model is a `Classifier`: pixel normalisation as its first layer, a body
that maps [0,1] pixels to penultimate features z, then dropout and one linear head.

DM2 measures distances on z (the input of the final linear layer), FGSM perturbs raw [0,1] pixels (so
normalisation must live inside the model), and BALD needs the dropout before the head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from raydm2.errors import RayDM2Error
from raydm2.models import libraries

GREY_STATS = ((0.1307,), (0.3081,))
RGB_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    num_classes: int
    channels: int  # channels of the pool's images
    image_size: int
    cifar_stem: bool = True
    dropout: float = 0.25
    weights: str | None = None  # initial weights: a library's weights name, or a state-dict file (any arch)
    factory: str | None = None  # "package.module:function": the user's own body (then `arch` is "factory")
    freeze_backbone: bool = False


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class RepeatChannels(nn.Module):
    """Grey images into a 3-channel body: repeat the one channel (after normalising with grey statistics)."""

    def forward(self, x):
        return x.expand(-1, 3, -1, -1)


class Classifier(nn.Module):
    def __init__(self, stem: nn.Module, body: nn.Module, feature_dim: int, num_classes: int, dropout: float,
                 freeze_backbone: bool = False):
        super().__init__()
        self.stem = stem
        self.body = body
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.frozen = freeze_backbone
        if freeze_backbone:
            self.body.requires_grad_(False)

    def train(self, mode: bool = True):
        # A frozen backbone stays exactly as loaded: no gradient steps and no BatchNorm statistics updates.
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of [0,1] pixels (N, C, H, W)."""
        return self.body(self.stem(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.features(x)
        return self.head(self.dropout(z)), z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


def _small_cnn(spec: ModelSpec) -> tuple[nn.Module, int, int]:
    # 3 conv layers, then FC 1024 -> 128; the head maps 128 -> C. 28x28 input gives exactly 64x4x4 = 1024;
    # other sizes are pooled to 4x4 so the FC shape is fixed.
    body = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(1024, 128), nn.ReLU(),
    )
    return body, 128, 1


def _resnet18(spec: ModelSpec) -> tuple[nn.Module, int, int]:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if spec.cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512, 3


def _cifar_resnet(depth: int) -> Callable[[ModelSpec], tuple[nn.Module, int, int]]:
    """He et al.'s CIFAR ResNet (depth 6n+2: three stages of n basic blocks at 16, 32, 64 channels). At 32x32
    ResNet-20 costs about 1/14 of ResNet-18's multiply-adds and ResNet-8 about 1/45, so CIFAR rounds fit a CPU."""
    blocks_per_stage = (depth - 2) // 6

    def build_body(spec: ModelSpec) -> tuple[nn.Module, int, int]:
        from torchvision.models.resnet import BasicBlock

        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                   nn.ReLU(inplace=True)]
        width = 16
        for stage, planes in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                shortcut = None
                if stride != 1 or width != planes:
                    shortcut = nn.Sequential(nn.Conv2d(width, planes, 1, stride=stride, bias=False),
                                             nn.BatchNorm2d(planes))
                layers.append(BasicBlock(width, planes, stride, shortcut))
                width = planes
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*layers), width, 3

    return build_body


def _mobilenet_v2(spec: ModelSpec) -> tuple[nn.Module, int, int]:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)
    net.classifier = nn.Identity()
    return net, 1280, 3


def _vgg16_bn(spec: ModelSpec) -> tuple[nn.Module, int, int]:
    from torchvision.models import vgg16_bn

    net = vgg16_bn(weights=None)
    net.classifier = net.classifier[:-1]  # keep FC-ReLU-Dropout-FC-ReLU-Dropout; our head replaces the last FC
    return net, 4096, 3


# arch -> builder returning (body, penultimate dim, input channels the body expects)
REGISTRY: dict[str, Callable[[ModelSpec], tuple[nn.Module, int, int]]] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet18,
    "resnet20": _cifar_resnet(20),
    "resnet8": _cifar_resnet(8),
    "mobilenet_v2": _mobilenet_v2,
    "vgg16_bn": _vgg16_bn,
}


def build(spec: ModelSpec, initial: bool = False) -> Classifier:
    """The model of `spec`. With `initial` (a round's training starts), a pretrained body loads `spec.weights`;
    otherwise every weight is about to come from a checkpoint."""
    if spec.factory:
        # The user's module normalises its own input, if it wants to: it receives [0,1] pixels.
        body, feature_dim, _ = libraries.factory_body(spec.factory, spec.num_classes, spec.channels, spec.image_size)
        return Classifier(nn.Sequential(), body, feature_dim, spec.num_classes, spec.dropout, spec.freeze_backbone)
    if libraries.is_library(spec.arch):
        body, feature_dim, body_channels = libraries.body(spec.arch, spec.weights, initial)
    elif spec.arch in REGISTRY:
        body, feature_dim, body_channels = REGISTRY[spec.arch](spec)
        if initial and spec.weights:
            libraries.load_body_file(body, spec.weights)
    else:
        raise RayDM2Error(f"unknown model {spec.arch!r}; available: {', '.join(sorted(REGISTRY))}, "
                          "torchvision/<name>, timm/<name>")
    if spec.channels == 3 and body_channels == 1:
        raise RayDM2Error(f"model {spec.arch!r} takes 1-channel images but the pool has 3 channels")
    pretrained = libraries.stats(spec.arch, spec.weights) if libraries.is_library(spec.arch) else None
    stem_layers: list[nn.Module] = []
    if pretrained:
        # Pretrained weights expect their own RGB statistics: grey pixels are repeated first, then normalised.
        if spec.channels == 1:
            stem_layers.append(RepeatChannels())
        stem_layers.append(Normalize(*pretrained))
    else:
        stem_layers.append(Normalize(*(GREY_STATS if spec.channels == 1 else RGB_STATS)))
        if spec.channels == 1 and body_channels == 3:
            stem_layers.append(RepeatChannels())
    return Classifier(nn.Sequential(*stem_layers), body, feature_dim, spec.num_classes, spec.dropout,
                      spec.freeze_backbone)


def check(spec: ModelSpec) -> None:
    """Build the model and run two blank images through it, so a model that cannot take the project's images
    (a factory that breaks its contract, a ViT at another size, a weights file of another network) is refused at
    `init`, in one line. A weights file is loaded too; a weights name is not (it may need a download)."""
    model = build(spec, initial=bool(spec.weights) and libraries.is_file(spec.weights)).eval()
    try:
        with torch.no_grad():
            z = model.features(torch.zeros(2, spec.channels, spec.image_size, spec.image_size))
    except Exception as exc:  # whatever the network raises for an input it cannot take
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayDM2Error(f"model {spec.factory or spec.arch} cannot take {spec.channels}x{spec.image_size}x"
                          f"{spec.image_size} images: {first}") from None
    if tuple(z.shape) != (2, model.feature_dim):
        raise RayDM2Error(f"model {spec.factory or spec.arch} returns features of shape {tuple(z.shape[1:])} for "
                          f"one image, not ({model.feature_dim},) as its num_features says")
