"""Real pools and real models from a user's folder: photos of mixed sizes and formats (grey, CMYK, EXIF-rotated)
and a pretrained torchvision backbone from a state-dict file, through the README's commands as written."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers import REPO
from raydm2.data.images import ImageSpec, decode
from raydm2.ledger.project import Project
from raydm2.models import checkpoint

CLASSES = ["airplane", "automobile", "bird"]
FORMATS = ("JPEG", "PNG", "WEBP")


def write_photos(root, per_class: int = 12) -> dict[str, Image.Image]:
    """CIFAR sample images blown up to 40-120 px in JPEG, PNG and WebP, one grey, one CMYK and one stored
    sideways with an EXIF orientation tag; returns the special ones by kind, upright, for checking."""
    data = np.load(os.path.join(REPO, "raydm2", "data", "sample_data", "cifar10", "cifar10_sample.npz"))
    special = {}
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for k, index in enumerate(np.flatnonzero(data["y_train"] == label)[:per_class]):
            side = 40 + (7 * k + 11 * label) % 81
            img = Image.fromarray(data["x_train"][index]).resize((side, side + k % 3 * 9), Image.BICUBIC)
            fmt = FORMATS[(k + label) % 3]
            path = folder / f"{k:02d}.{fmt.lower().replace('jpeg', 'jpg')}"
            if (label, k) == (0, 0):
                img = img.convert("L")
                special["grey"] = img
            elif (label, k) == (1, 0):
                special["cmyk"] = img
                img, fmt, path = img.convert("CMYK"), "JPEG", folder / "cmyk.jpg"
            elif (label, k) == (2, 0):
                special["exif"] = img
                exif = Image.Exif()
                exif[0x0112] = 6  # stored rotated 90° anticlockwise: viewers (and raydm2) turn it upright
                img.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.jpg", exif=exif, quality=95)
                continue
            img.save(path, format=fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return special


def readme_block(marker: str) -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    block = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", text, re.S)
    assert block, f"README has no block after {marker!r}"
    return block.group(1)


@pytest.mark.ray
def test_readme_photos_and_pretrained_backbone_as_written(tmp_path):
    special = write_photos(tmp_path / "photos")
    torch.manual_seed(1)
    import torchvision

    pretrained = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(pretrained, tmp_path / "resnet18.pt")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    script = "set -euo pipefail\n" + readme_block("<!-- tested: tests/test_real_pools.py runs this block as written -->")
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "classes (label index = position): airplane, automobile, bird" in run.stdout

    # Every photo went in as its original bytes, and decodes at the project's size with the documented rules.
    table = pq.read_table(tmp_path / "pools" / "photos")
    assert table.num_rows == 36
    spec = ImageSpec(224, 3, "crop")
    by_source = dict(zip(table.column("source").to_pylist(), table.column("image").to_pylist()))
    sideways = next(v for k, v in by_source.items() if k.endswith("sideways.jpg"))
    upright = decode(sideways, spec).astype(int)
    expected = np.asarray(special["exif"].resize((224, 224), Image.BICUBIC)).astype(int)
    assert np.abs(upright - expected).mean() < 12  # JPEG'd and resampled, but upright, not sideways
    assert np.abs(np.rot90(upright, 1) - expected).mean() > np.abs(upright - expected).mean() + 5
    cmyk = next(v for k, v in by_source.items() if k.endswith("cmyk.jpg"))
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK" and decode(cmyk, spec).shape == (224, 224, 3)
    grey = next(v for k, v in by_source.items() if k.endswith("airplane/00.jpg"))
    g = decode(grey, spec)
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])

    project = Project.open(str(tmp_path / "shop"))
    assert project.manifest(1)["state"] == "selected" and project.selection(1).num_rows == 8
    # A frozen backbone trains the head only: the checkpoint's body is the weights file, exactly, BatchNorm
    # statistics included.
    state = torch.load(os.path.join(project.checkpoint_dir(0).path, checkpoint.WEIGHTS), weights_only=True)
    for key, value in pretrained.items():
        if not key.startswith("fc."):
            assert torch.equal(state[f"body.{key}"], value), key
    assert not torch.equal(state["head.weight"], torch.zeros_like(state["head.weight"]))
    # The re-query embedded nothing: round 1's acquisition filled the cache (keyed by the backbone alone, so later
    # rounds share it too: test_real_models checks the key).
    requery = os.listdir(project.loc.join("requeries").path)[0]
    counts = project.loc.join("requeries", requery, "manifest.json").read_json()["counts"]
    assert counts["embeddings_computed"] == 0 and counts["embeddings_from_cache"] == 36 - 20
