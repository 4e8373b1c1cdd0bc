"""The model registry: in step with the config's choices; CIFAR ResNets of the depth their name promises, which fit
real CIFAR images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import first_images
from raydm2.ledger.config import ModelConfig
from raydm2.data.images import to_tensor
from raydm2.models.registry import REGISTRY, ModelSpec, build


def weighted_layers(model: nn.Module) -> int:
    """Convolutions and linear layers on the main path; 1x1 projection shortcuts are not counted in a ResNet's depth."""
    return sum(1 for m in model.modules()
               if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)))


def test_a_config_accepts_the_registered_architectures_and_library_names_only():
    for arch in [*REGISTRY, "torchvision/resnet50", "timm/convnext_tiny"]:
        assert ModelConfig(arch=arch).arch == arch
    for arch in ("resnet1000", "torchvision/", "keras/resnet50"):
        with pytest.raises(ValueError, match="unknown model"):
            ModelConfig(arch=arch)


@pytest.mark.parametrize("depth", [8, 20])
def test_cifar_resnet_has_the_depth_of_its_name(depth):
    model = build(ModelSpec(f"resnet{depth}", 10, 3, 32))
    assert weighted_layers(model) == depth
    assert model.feature_dim == 64
    assert model.features(torch.rand(2, 3, 32, 32)).shape == (2, 64)


def test_cifar_resnet_takes_grey_images_too():
    model = build(ModelSpec("resnet8", 10, 1, 28))
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_resnet8_fits_a_batch_of_real_cifar_images(sample_pools):
    pixels, labels = first_images(sample_pools["cifar_train"], 32, 32, 3)
    x, y = to_tensor(pixels), torch.from_numpy(labels)
    torch.manual_seed(0)
    model = build(ModelSpec("resnet8", 10, 3, 32, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.9


def test_device_choice(monkeypatch):
    from raydm2.models.device import select_device

    assert select_device(prefer_gpu=False).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(prefer_gpu=True).type == "cpu"  # a GPU was asked for, none is there: CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(prefer_gpu=True).type == "cuda"
    assert select_device(prefer_gpu=False).type == "cpu"
