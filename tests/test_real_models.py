"""Pretrained and user-supplied models: torchvision and timm bodies with weights files the tests write, a factory
model from a module in a temp folder through a real Ray round, and one-line refusals of what cannot work."""

from __future__ import annotations

import textwrap

import numpy as np
import pyarrow as pa
import pytest
import torch

from helpers import first_images, run_cli
from raydm2.errors import RayDM2Error
from raydm2.ledger.config import ProjectConfig
from raydm2.models import checkpoint
from raydm2.models.registry import ModelSpec, build, check

FACTORY = textwrap.dedent("""
    from torch import nn

    def build(num_classes, channels, image_size):
        net = nn.Sequential(nn.Conv2d(channels, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        net.num_features = 32
        return net

    def no_width(num_classes, channels, image_size):
        return nn.Sequential(nn.Conv2d(channels, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def wrong_width(num_classes, channels, image_size):
        net = build(num_classes, channels, image_size)
        net.num_features = 7
        return net
""")


@pytest.mark.ray
def test_factory_model_from_a_temp_folder_runs_a_ray_round(tmp_path, sample_pools):
    """The module lives only in the user's folder: Ray's workers (Ray Train's and the acquisition actors) get it
    from raydm2, not from an install."""
    (tmp_path / "mymodels.py").write_text(FACTORY)
    steps = [
        ["init", "--project", "p", "--pool", sample_pools["mnist_train"], "--set", "classes=[a,b,c,d,e,f,g,h,i,j]",
         "--set", "model.factory=mymodels:build", "--set", "train.epochs=1", "--set", "strategy.budget=10",
         "--set", "strategy.knn.mode=exact"],
        ["seed", "--project", "p", "--n", "40"],
        ["label", "--project", "p", "--oracle"],
        ["round", "--project", "p"],
    ]
    for args in steps:
        run = run_cli(*args, cwd=tmp_path)
        assert run.returncode == 0, (args, run.stderr[-2500:])
    from raydm2.ledger.project import Project

    project = Project.open(str(tmp_path / "p"))
    assert project.selection(1).num_rows == 10
    meta = checkpoint.read_meta(project.checkpoint_dir(0))
    assert meta["spec"]["factory"] == "mymodels:build" and meta["spec"]["arch"] == "factory"


@pytest.mark.parametrize("function, message", [
    ("missing:build", "model.factory module 'missing' cannot be imported"),
    ("mymodels:nothing", "model.factory: module 'mymodels' has no function 'nothing'"),
    ("mymodels:no_width", "has no positive int attribute 'num_features'"),
    ("mymodels:wrong_width", "returns features of shape (32,) for one image, not (7,)"),
])
def test_factory_that_breaks_the_contract_is_one_line(tmp_path, sample_pools, function, message):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    run = run_cli("init", "--project", "p", "--pool", sample_pools["mnist_train"], "--set", "classes=[a,b]",
                  "--set", f"model.factory={function}", cwd=tmp_path)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "p").exists()


def test_library_refusals_name_the_problem(tmp_path):
    with pytest.raises(RayDM2Error, match="torchvision has no classification model 'resnet19'"):
        check(ModelSpec("torchvision/resnet19", 3, 3, 32))
    with pytest.raises(RayDM2Error, match="no weights 'IMAGENET9K'; known: IMAGENET1K_V1"):
        build(ModelSpec("torchvision/resnet18", 3, 3, 32, weights="IMAGENET9K"))
    with pytest.raises(RayDM2Error, match="cannot take 3x64x64 images: Wrong image height"):
        check(ModelSpec("torchvision/vit_b_16", 3, 3, 64))
    torch.save(build(ModelSpec("small_cnn", 3, 1, 28)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(RayDM2Error, match="lacks 120 of the backbone's 120 tensors"):
        check(ModelSpec("torchvision/resnet18", 3, 3, 32, weights=str(tmp_path / "other.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    with pytest.raises(RayDM2Error, match="junk.pt is not a loadable state dict"):
        check(ModelSpec("torchvision/resnet18", 3, 3, 32, weights=str(tmp_path / "junk.pt")))
    with pytest.raises(ValueError, match="'IMAGENET1K_V1' is a library's weights name"):
        ProjectConfig(name="p", pool="x", classes=["a", "b"], model={"arch": "small_cnn", "weights": "IMAGENET1K_V1"})


def test_a_built_in_body_starts_from_another_projects_checkpoint(tmp_path):
    """Transfer: model.weights of a built-in arch takes a raydm2 checkpoint's body (its head has other classes)."""
    source = ModelSpec("small_cnn", 5, 1, 28)
    torch.manual_seed(3)
    trained = build(source)
    checkpoint.save(trained, source, str(tmp_path / "ck"))
    target = ModelSpec("small_cnn", 3, 1, 28, weights=str(tmp_path / "ck" / checkpoint.WEIGHTS))
    model = build(target, initial=True)
    assert all(torch.equal(a, b) for a, b in zip(model.body.state_dict().values(), trained.body.state_dict().values()))
    assert model.head.out_features == 3 and not torch.equal(build(target).body[0].weight, trained.body[0].weight)
    with pytest.raises(ValueError, match="unknown model 'resnet1000'"):
        ProjectConfig(name="p", pool="x", classes=["a", "b"], model={"arch": "resnet1000"})


def test_checkpoint_of_another_factory_is_refused(tmp_path):
    spec = ModelSpec("resnet8", 3, 3, 32)
    checkpoint.save(build(spec), spec, str(tmp_path / "ck"))
    other = ModelSpec("factory", 3, 3, 32, factory="mymodels:build")
    with pytest.raises(RayDM2Error, match="factory is None, project has 'mymodels:build'"):
        checkpoint.check_compatible(str(tmp_path / "ck"), other)


def test_timm_model_with_a_weights_file_trains_and_acquires(tmp_path, sample_pools):
    """A timm body from a state-dict file, trained one epoch in process and used by DM2 and BADGE through the
    local engine: the features are timm's pre-logits, the stem uses timm's pretrained statistics."""
    timm = pytest.importorskip("timm")
    from raydm2 import acquisition
    from raydm2.acquisition.local_engine import LocalEngine
    from raydm2.training.epochs import fit_in_process

    torch.manual_seed(0)
    source = timm.create_model("resnet10t", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet10t.pt")
    x, y = first_images(sample_pools["cifar_train"], 160, 32, 3)
    for strategy in ({"name": "dm2", "budget": 8, "knn": {"mode": "exact"}}, {"name": "badge", "budget": 8}):
        config = ProjectConfig(
            name="t", pool=sample_pools["cifar_train"], classes=[str(i) for i in range(10)],
            image={"size": 32, "channels": 3}, strategy=strategy, train={"epochs": 1, "batch_size": 32},
            model={"arch": "timm/resnet10t", "weights": str(tmp_path / "resnet10t.pt")})
        spec = config.model_spec()
        initial = build(spec, initial=True)
        assert torch.equal(initial.body.net.conv1[0].weight, source.conv1[0].weight)
        assert torch.allclose(initial.stem[0].mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
        state, metrics = fit_in_process(config, x[:60], y[:60])
        model = build(spec)
        model.load_state_dict(state)
        checkpoint.save(model, spec, str(tmp_path / strategy["name"]))
        ids = np.arange(60, 160, dtype=np.int64)
        request = config.acquire_request(str(tmp_path / strategy["name"]), 1, np.arange(60, dtype=np.int64),
                                         pa.table({"id": np.arange(60), "label": y[:60]}))
        picked = acquisition.acquire(request, engine=LocalEngine(request, ids, x[60:])).selection
        assert picked.num_rows == 8 and set(picked.column("id").to_pylist()) <= set(ids.tolist())


def test_a_frozen_backbone_shares_one_cache_key_and_confidence_follows_the_head(tmp_path):
    """Two rounds' checkpoints of a frozen backbone differ only in the head: one embedding-cache key, and the
    confidence recomputed from cached features equals the model's own."""
    from raydm2.acquisition.ray_engine import _head_confidence

    spec = ModelSpec("resnet8", 3, 3, 32, freeze_backbone=True)
    torch.manual_seed(0)
    first = build(spec)
    second = build(spec)
    second.load_state_dict({k: v for k, v in first.state_dict().items() if not k.startswith("head.")}, strict=False)
    for n, model in enumerate((first, second)):
        checkpoint.save(model, spec, str(tmp_path / f"r{n}"))
    assert checkpoint.fingerprint(str(tmp_path / "r0"), True) == checkpoint.fingerprint(str(tmp_path / "r1"), True)
    assert checkpoint.fingerprint(str(tmp_path / "r0")) != checkpoint.fingerprint(str(tmp_path / "r1"))
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        logits, z = second.eval().forward_with_features(x)
    weight, bias = checkpoint.head(str(tmp_path / "r1"))
    out = _head_confidence({"id": np.arange(5), "z": z.numpy(), "conf": np.zeros(5)}, weight, bias)
    assert np.allclose(out["conf"], torch.softmax(logits, 1).max(1).values.numpy(), atol=1e-6)
