"""Label Studio's own export files (tests/corpus/labelstudio: written by a Label Studio 1.23.2 server for a
project with raydm2's labeling config) read back by the stated rule, and raydm2's export for Label Studio.

The corpus project: tasks 1-4 hold raydm2 ids 101-104. Task 1: one annotation "cat". Task 2: "dog", and "bird"
marked ground truth. Task 3: "dog", "dog", "cat". Task 4: one skipped (cancelled) annotation."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from helpers import trained_project
from raydm2.errors import RayDM2Error
from raydm2.ledger import exchange
from raydm2.ledger import labelstudio

CORPUS = os.path.join(os.path.dirname(__file__), "corpus", "labelstudio")
CLASSES = ["cat", "dog", "bird"]


def parse(name, **kwargs):
    return exchange.parse(os.path.join(CORPUS, name), CLASSES, **kwargs)


def test_json_export_ground_truth_then_majority_and_skips_counted():
    got = parse("export.json")
    assert dict(zip(got.ids.tolist(), got.labels.tolist())) == {101: 0, 102: 2, 103: 1}
    assert (got.cancelled, got.unannotated) == (1, 0)  # task 4 was skipped, not left waiting


@pytest.mark.parametrize("name", ["export_min.json", "export.csv", "export.tsv"])
def test_flat_exports_refuse_a_tie_naming_the_task(name, tmp_path):
    """JSON-MIN, CSV and TSV carry no ground-truth flag: task 2's dog/bird is a tie, refused by its task id."""
    with pytest.raises(RayDM2Error, match=r"no majority and no ground truth on 1 task \(Label Studio ids 2\)"):
        parse(name)
    # Without task 2, the rest resolves: the majority of task 3, task 1 as annotated.
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps([r for r in json.load(open(os.path.join(CORPUS, name))) if r["id"] != 2]))
    else:
        lines = open(os.path.join(CORPUS, name), newline="").read().split("\r\n")
        path.write_text("\r\n".join(line for line in lines if "imgs/2.png" not in line), newline="")
    got = exchange.parse(str(path), CLASSES)
    assert dict(zip(got.ids.tolist(), got.labels.tolist())) == {101: 0, 103: 1}


def test_csv_from_label_studio_is_never_read_as_raydm2_csv(tmp_path):
    """Its `id` column is Label Studio's task id, not the image's: read as raydm2's own CSV it would label
    the wrong images. The `raydm2_id` column tells them apart, even with --format csv."""
    lines = open(os.path.join(CORPUS, "with_unannotated_task.csv"), newline="").read().split("\r\n")
    (tmp_path / "x.csv").write_text("\r\n".join(line for line in lines if "imgs/2.png" not in line), newline="")
    got = exchange.parse(str(tmp_path / "x.csv"), CLASSES, fmt="csv")
    assert dict(zip(got.ids.tolist(), got.labels.tolist())) == {101: 0, 103: 1} and got.unannotated == 1


def test_unannotated_rows_are_counted_and_from_name_is_respected(tmp_path):
    with pytest.raises(RayDM2Error, match="Label Studio ids 2"):
        parse("with_unannotated_task.csv")
    with pytest.raises(RayDM2Error, match=r"no column 'klass' .* columns that could be it: label \(pass --from-name\)"):
        parse("export.csv", from_name="klass")
    tasks = json.load(open(os.path.join(CORPUS, "export.json")))
    for t in tasks:  # a second control in the config: its results are not this question's answer
        for a in t["annotations"]:
            a["result"].append({"from_name": "quality", "to_name": "image", "type": "choices",
                                "value": {"choices": ["dog"]}})
    (tmp_path / "two.json").write_text(json.dumps(tasks))
    got = exchange.parse(str(tmp_path / "two.json"), CLASSES)
    assert dict(zip(got.ids.tolist(), got.labels.tolist())) == {101: 0, 102: 2, 103: 1}
    renamed = json.loads(json.dumps(tasks).replace('"from_name": "label"', '"from_name": "klass"'))
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    got = exchange.parse(str(tmp_path / "renamed.json"), CLASSES, from_name="klass")
    assert dict(zip(got.ids.tolist(), got.labels.tolist())) == {101: 0, 102: 2, 103: 1}


def test_labeling_config_is_valid_xml_with_the_classes():
    root = ET.fromstring(labelstudio.labeling_config(["a & b", 'say "hi"', "c"]))
    choices = root.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == "image" and choices.get("choice") == "single"
    assert [c.get("value") for c in choices] == ["a & b", 'say "hi"', "c"]
    assert root.find("Image").get("value") == "$image"


@pytest.mark.ray
def test_export_carries_predictions_config_and_urls(ray_cluster, tmp_path, sample_pools, trained_checkpoint):
    from raydm2.models import checkpoint
    from raydm2.service import loop

    project = trained_project(str(tmp_path / "p"), sample_pools["mnist_train"], trained_checkpoint)
    loop.acquire(project)
    out = tmp_path / "ls" / "round1.json"
    exchange.export(project, 1, "labelstudio", str(out), url_prefix="/data/local-files/?d=ls/round1_images")
    tasks = json.loads(out.read_text())
    assert len(tasks) == 15
    model = checkpoint.load(project.checkpoint_dir(0), project.config.model_spec()).eval()
    for t in tasks:
        (prediction,) = t["predictions"]
        assert prediction["model_version"] == "raydm2-p-round-0" and 0.1 <= prediction["score"] <= 1
        (result,) = prediction["result"]
        assert result["from_name"] == "label" and result["to_name"] == "image" and result["type"] == "choices"
        assert t["data"]["image"] == f"/data/local-files/?d=ls/round1_images/{t['data']['raydm2_id']}.png"
    # The pre-annotation is the model's own prediction.
    import torch

    from raydm2.data import pool
    from raydm2.data.images import decode, to_tensor

    first = tasks[0]
    blob = pool.read_columns(project.config.pool, ["image"], np.array([first["data"]["raydm2_id"]])).column(0)[0]
    with torch.no_grad():
        p = torch.softmax(model(to_tensor(decode(blob.as_py(), project.config.image_spec())[None])), 1)
    assert first["predictions"][0]["result"][0]["value"]["choices"] == [str(int(p.argmax()))]
    config = ET.parse(tmp_path / "ls" / "round1_config.xml").getroot()
    assert [c.get("value") for c in config.find("Choices")] == [str(i) for i in range(10)]
    shutil.rmtree(tmp_path / "ls")
