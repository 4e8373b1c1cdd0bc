"""`raydm2 pretrain`: SimCLR on Ray Train (two DDP workers, negatives gathered across them) writes the backbone's
weights, which `model.weights` loads; a re-run resumes instead of training again; bad input is refused."""

from __future__ import annotations

import math
import os

import pytest
import torch

from raydm2.ledger.config import PretrainSettings, validate_config
from raydm2.ledger.presets import PRESETS
from raydm2.models.registry import build
from raydm2.service.cli import main as cli
from raydm2.training.pretrain import pretrain


def test_pretrain_learns_on_two_workers_writes_weights_projects_load_and_resumes(ray_cluster, sample_pools,
                                                                                 tmp_path):
    config = validate_config({**PRESETS["mnist"], "name": "p", "pool": sample_pools["mnist_train"],
                              "train": {"num_workers": 2}})
    settings = PretrainSettings(epochs=2, batch_size=64)
    out, runs = str(tmp_path / "w" / "simclr.pt"), str(tmp_path / "runs")
    metrics = pretrain(config, settings, out, runs)
    assert metrics["epoch"] == 2 and metrics["images"] == 3000
    # NT-Xent over the 64-image global batch (both workers' views gathered) scores chance at ln(2·64 − 1): below
    # it, the views of one image have learnt to find each other among the other 126.
    assert metrics["ssl_loss"] < math.log(2 * 64 - 1) - 0.2

    weights = torch.load(out, weights_only=True)
    spec = config.model_spec()
    started = build(spec.__class__(**{**spec.__dict__, "weights": out}), initial=True)
    scratch = build(spec, initial=True)
    assert set(weights) == set(started.body.state_dict())
    assert all(torch.equal(v, weights[k]) for k, v in started.body.state_dict().items())
    assert not all(torch.equal(v, scratch.body.state_dict()[k]) for k, v in started.body.state_dict().items())

    # The same run again resumes from its final checkpoint: no epoch is trained, no checkpoint is added.
    def checkpoints():
        return sorted(p for _, dirs, _ in os.walk(runs) for p in dirs if p.startswith("checkpoint_"))

    before, stamp = checkpoints(), os.path.getmtime(out)
    again = pretrain(config, settings, out, runs)
    assert checkpoints() == before and again["ssl_loss"] == metrics["ssl_loss"]
    assert torch.load(out, weights_only=True).keys() == weights.keys() and os.path.getmtime(out) >= stamp


@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "0"], "epochs: Input should be greater than 0"),
    (["--batch-size", "2"], "batch_size: Input should be greater than or equal to 4"),
    (["--pool", "nowhere"], "pool 'nowhere' does not exist"),
    (["--set", "model.arch=torchvision/resnet18"], "trains the built-in models"),
])
def test_bad_pretrain_input_is_one_line_and_exit_2(sample_pools, tmp_path, capsys, args, fragment):
    base = {"--pool": sample_pools["mnist_train"], "--out": str(tmp_path / "w.pt")}
    given = dict(zip(args[::2], args[1::2]))
    argv = ["pretrain", *[x for k, v in {**base, **given}.items() for x in (k, v)]]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "w.pt")
