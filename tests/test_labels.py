"""Export to annotators and import their labels: formats, partial imports, and every refusal leaves the
project unchanged."""

import csv
import json
import os

import pytest

from raydm2.ledger import labels
from raydm2.service.cli import main as cli
from tests.helpers import seeded_project, snapshot

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture
def seeded(tmp_path, sample_pools):
    return seeded_project(str(tmp_path / "p"), sample_pools["mnist_train"], CLASSES)


def truth(project):
    ids, values = labels.oracle(project, 0)
    return [int(i) for i in ids], [int(v) for v in values]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "labelstudio"])
def test_export_writes_items_with_ids_and_images(seeded, tmp_path, fmt):
    out = tmp_path / f"sel.{ {'csv': 'csv', 'jsonl': 'jsonl', 'labelstudio': 'json'}[fmt] }"
    assert cli(["export", "--project", seeded.uri, "--format", fmt, "--out", str(out)]) == 0
    ids = set(seeded.selection(0).column("id").to_pylist())
    text = out.read_text()
    if fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        got, images = {int(r["id"]) for r in rows}, [r["image"] for r in rows]
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        got, images = {r["id"] for r in rows}, [r["image"] for r in rows]
    else:
        tasks = json.loads(text)
        got, images = {t["data"]["raydm2_id"] for t in tasks}, [t["data"]["image"] for t in tasks]
    assert got == ids and all(os.path.exists(p) for p in images)
    assert seeded.manifest(0)["state"] == "exported"


def test_partial_imports_by_name_then_complete(seeded, tmp_path):
    ids, values = truth(seeded)
    first = tmp_path / "a.csv"
    first.write_text("\ufeffid,label\n" + "".join(f"{i},{CLASSES[v]}\n" for i, v in zip(ids[:4], values[:4])))
    assert cli(["label", "--project", seeded.uri, "--file", str(first)]) == 0
    assert seeded.manifest(0)["state"] == "selected" and seeded.labels(0).num_rows == 4
    rest = tmp_path / "b.jsonl"
    rest.write_text("".join(json.dumps({"id": i, "label": v}) + "\n" for i, v in zip(ids[4:], values[4:])))
    assert cli(["label", "--project", seeded.uri, "--file", str(rest)]) == 0
    assert seeded.manifest(0)["state"] == "labeled"
    stored = dict(zip(seeded.labels(0).column("id").to_pylist(), seeded.labels(0).column("label").to_pylist()))
    assert stored == dict(zip(ids, values))
    assert seeded.all_labels().num_rows == 10


def test_label_studio_export_round_trip(seeded, tmp_path):
    out = tmp_path / "tasks.json"
    cli(["export", "--project", seeded.uri, "--format", "labelstudio", "--out", str(out)])
    tasks = json.loads(out.read_text())
    answer = dict(zip(*truth(seeded)))
    for task in tasks:
        task["annotations"] = [{"result": [{"type": "choices", "value": {"choices": [
            CLASSES[answer[task["data"]["raydm2_id"]]]]}}]}]
    out.write_text(json.dumps(tasks))
    assert cli(["label", "--project", seeded.uri, "--file", str(out)]) == 0
    assert seeded.manifest(0)["state"] == "labeled"


@pytest.mark.parametrize(
    "content, message",
    [
        ("id,label\n999999,1\n", "not in the pool"),
        ("id,label\n{other},1\n", "not selected in round 0"),
        ("id,label\n{id0},1\n{id0},2\n", "conflicting labels"),
        ("id,label\n{id0},10\n", "outside the 10 classes"),
        ("id,label\n{id0},-1\n", "outside the 10 classes"),
        ("", "empty"),
        ("id,class\n{id0},1\n", "missing \\['label'\\]"),
        ("id,label\n{id0},1,extra\n", "more values than columns"),
        ("id,label\n{id0},1.5\n", "neither a class name"),
        ("id,label\n{id0},unicorn\n", "neither a class name"),
        ("id,label\nabc,1\n", "not an integer"),
    ],
)
def test_bad_label_files_are_refused_and_change_nothing(seeded, tmp_path, capsys, content, message):
    ids, values = truth(seeded)
    selected = set(ids)
    other = next(i for i in range(3000) if i not in selected)
    labels.import_labels(seeded, 0, ids[:2], values[:2])
    before = snapshot(seeded.uri)
    path = tmp_path / "bad.csv"
    path.write_text(content.format(id0=ids[5], other=other))
    assert cli(["label", "--project", seeded.uri, "--file", str(path)]) == 2
    assert re_search(message, capsys.readouterr().err)
    assert snapshot(seeded.uri) == before


def re_search(pattern, text):
    import re

    return re.search(pattern, text) is not None


def test_relabeling_differently_is_refused_but_unselected_can_be_allowed(seeded, tmp_path, capsys):
    ids, values = truth(seeded)
    labels.import_labels(seeded, 0, ids[:1], values[:1])
    path = tmp_path / "c.csv"
    path.write_text(f"id,label\n{ids[0]},{(values[0] + 1) % 10}\n")
    assert cli(["label", "--project", seeded.uri, "--file", str(path)]) == 2
    assert "labeled differently" in capsys.readouterr().err
    other = next(i for i in range(3000) if i not in set(ids))
    path.write_text(f"id,label\n{other},3\n")
    assert cli(["label", "--project", seeded.uri, "--file", str(path), "--allow-unselected"]) == 0
    assert other in seeded.labels(0).column("id").to_pylist()
