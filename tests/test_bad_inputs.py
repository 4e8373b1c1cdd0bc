"""Every file of the bad-input corpus (tests/corpus/) through the CLI: a clear message, exit 2 where the
command cannot proceed, and the project unchanged byte for byte. Images the pipeline cannot use are skipped
and counted instead, so one bad upload never blocks a round."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raydm2.models import checkpoint
from raydm2.data import pool
from raydm2.service.cli import main as cli
from raydm2.ledger.config import ProjectConfig
from raydm2.models.registry import ModelSpec
from raydm2.ledger.project import Project
from tests.helpers import CLASSES, seeded_project, snapshot, trained_project

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")

# label file -> a fragment the error must contain
BAD_LABEL_FILES = {
    "missing_column.csv": "needs columns 'id' and 'label'",
    "non_integer_label.csv": "'3.5' is neither a class name",
    "unknown_class.csv": "neither a class name",
    "label_out_of_range.csv": "12",
    "negative_label.csv": "-1",
    "non_integer_id.csv": "is not an integer",
    "path_escape.csv": "'../../../etc/passwd' is not an integer",
    "path_escape.jsonl": "'../../outside.png' is not an integer",
    "path_escape_labelstudio.json": "'../../etc/passwd' is not an integer",
    "not_selected.csv": "999999",
    "empty.csv": "empty",
    "not_utf8.csv": "not UTF-8",
    "malformed.jsonl": "not JSON",
    "annotations_not_a_list.json": "'annotations' is not a list",
    "id_too_large.csv": "out of range (ids are 64-bit integers)",
    "id_true.jsonl": "id True is not an integer",
}
BAD_CONFIGS = {
    "malformed.yaml": "malformed",
    "unknown_key.yaml": "budjet",
    "negative_budget.yaml": "strategy.budget",
    "huge_budget.yaml": "strategy.budget",
    "unknown_strategy.yaml": "strategy.name",
    "not_a_mapping.yaml": "expected a mapping",
    "budget_true.yaml": "strategy.budget: Input should be a valid integer",
    "lr_inf.yaml": "train.lr: Input should be a finite number",
}


@pytest.fixture
def seeded(tmp_path, sample_pools):
    return seeded_project(str(tmp_path / "p"), sample_pools["mnist_train"])


def _corpus_label_file(name: str, tmp_path, project) -> str:
    """The corpus file with {ID0} replaced by an id the round really selected."""
    first = str(project.selection(0).column("id")[0].as_py())
    data = open(os.path.join(CORPUS, "labels", name), "rb").read().replace(b"{ID0}", first.encode())
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name", sorted(BAD_LABEL_FILES))
def test_bad_label_file_is_refused_and_nothing_changes(seeded, tmp_path, capsys, name):
    before = snapshot(seeded.uri)
    assert cli(["label", "--project", seeded.uri, "--file", _corpus_label_file(name, tmp_path, seeded)]) == 2
    assert BAD_LABEL_FILES[name] in capsys.readouterr().err
    assert snapshot(seeded.uri) == before


@pytest.mark.parametrize("name", ["bom.csv", "extra_columns.csv", "cr_only.csv", "duplicated_rows.csv"])
def test_label_file_with_bom_extra_columns_cr_line_ends_or_repeated_rows_is_read(seeded, tmp_path, name):
    assert cli(["label", "--project", seeded.uri, "--file", _corpus_label_file(name, tmp_path, seeded)]) == 0
    assert seeded.labels(0).column("label").to_pylist() == [3]  # one row per id, whatever the file repeats


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_project_settings_are_refused_before_anything_is_created(tmp_path, sample_pools, capsys, name):
    target = tmp_path / "new"
    argv = ["init", "--project", str(target), "--pool", sample_pools["mnist_train"], "--preset", "mnist",
            "--config", os.path.join(CORPUS, "config", name)]
    assert cli(argv) == 2
    assert BAD_CONFIGS[name] in capsys.readouterr().err
    assert not target.exists()


@pytest.mark.parametrize("setting,fragment", [
    ("strategy.budget=-3", "strategy.budget"), ("strategy.budget=100000000000", "strategy.budget"),
    ("strategy.name=magic", "strategy.name"), ("strategy.nonsense=1", "unknown setting"),
])
def test_bad_overrides_on_acquire_are_refused_and_nothing_changes(seeded, capsys, setting, fragment):
    before = snapshot(seeded.uri)
    assert cli(["acquire", "--project", seeded.uri, "--set", setting]) == 2
    assert fragment in capsys.readouterr().err
    assert snapshot(seeded.uri) == before


@pytest.mark.parametrize("n", ["-5", "0", "10000000"])
def test_bad_seed_sizes_are_refused(tmp_path, sample_pools, capsys, n):
    project = Project.create(str(tmp_path / "p"), ProjectConfig(name="t", pool=sample_pools["mnist_train"],
                                                                classes=CLASSES))
    before = snapshot(project.uri)
    assert cli(["seed", "--project", project.uri, "--n", n]) == 2
    assert "seed size" in capsys.readouterr().err
    assert snapshot(project.uri) == before


def test_pool_with_duplicate_ids_is_refused_at_init(tmp_path, sample_pools, capsys):
    dup = tmp_path / "dup"
    dup.mkdir()
    part = sorted(p for p in os.listdir(sample_pools["mnist_test"]) if p.endswith(".parquet"))[0]
    table = pq.read_table(os.path.join(sample_pools["mnist_test"], part))
    pq.write_table(table, dup / "part-000000.parquet")
    pq.write_table(table.slice(0, 5), dup / "part-000001.parquet")  # a hand-made pool repeating 5 ids
    assert cli(["init", "--project", str(tmp_path / "p"), "--pool", str(dup), "--preset", "mnist"]) == 2
    assert "duplicate ids" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _replace_weights(project, obj) -> None:
    weights = [n for n in os.listdir(project.checkpoint_dir(0).path) if n.endswith(".pt")][0]
    with open(os.path.join(project.checkpoint_dir(0).path, weights), "wb") as f:
        if isinstance(obj, dict):
            torch.save(obj, f)
        else:
            pickle.dump(obj, f)


def test_checkpoint_with_pickled_code_is_refused_without_running_it(ray_cluster, tmp_path, sample_pools,
                                                                   trained_checkpoint, capsys):
    project = trained_project(str(tmp_path / "p"), sample_pools["mnist_train"], trained_checkpoint)
    marker = tmp_path / "pwned"
    _replace_weights(project, {"weights": _Payload(str(marker))})
    before = snapshot(project.uri)
    assert cli(["acquire", "--project", project.uri]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert not marker.exists()
    assert snapshot(project.uri) == before


def test_diverged_model_is_refused_and_the_round_is_not_left_behind(ray_cluster, tmp_path, sample_pools,
                                                                    trained_checkpoint, capsys):
    project = trained_project(str(tmp_path / "p"), sample_pools["mnist_train"], trained_checkpoint)
    state = checkpoint.load(trained_checkpoint, ModelSpec("small_cnn", 10, 1, 28)).state_dict()
    state["head.weight"] = torch.full_like(state["head.weight"], float("nan"))
    _replace_weights(project, state)
    before = snapshot(project.uri)
    assert cli(["acquire", "--project", project.uri, "--actors", "1"]) == 2
    assert "NaN/inf" in capsys.readouterr().err
    assert snapshot(project.uri) == before
    assert project.round_ids() == [0]


def test_unusable_images_are_skipped_and_a_pool_smaller_than_k_and_budget_is_all_selected(
        ray_cluster, tmp_path, sample_pools, trained_checkpoint):
    """Real unusable files (a decompression bomb's header, a colour palette image in a grey project, a wrong size
    with `image.resize: none`, ...) ingested with the folder reader, in a pool of 12 good images where k = 50 and
    B = 100 both exceed what is selectable: every good image not labeled is picked, with a warning."""
    pool_uri = str(tmp_path / "pool")
    good = pool.read_columns(sample_pools["mnist_train"], ["image"]).column("image").to_pylist()[1000:1012]
    pool.append(pool_uri, good)
    bad_dir = tmp_path / "bad"
    shutil.copytree(os.path.join(CORPUS, "images"), bad_dir)
    assert cli(["ingest", "folder", "--root", str(bad_dir), "--out", pool_uri]) == 0
    bad = len(os.listdir(bad_dir))
    project = trained_project(str(tmp_path / "p"), pool_uri, trained_checkpoint, seed_n=4, budget=100,
                              knn={"k": 50, "mode": "exact"}, image={"resize": "none"})
    assert cli(["acquire", "--project", project.uri, "--actors", "1"]) == 0
    good_ids, bad_ids = np.arange(len(good)), np.arange(len(good), len(good) + bad)
    seeded = project.selected_ids(before=1)
    manifest = project.manifest(1)
    assert manifest["counts"]["skipped_undecodable"] == bad - np.isin(bad_ids, seeded).sum() > 0
    assert manifest["counts"]["candidates"] == len(good) - np.isin(good_ids, seeded).sum()
    sel = project.selection(1).to_pandas()
    assert set(sel.id) == set(good_ids) - set(seeded.tolist())
    assert not sel.neighbor_id.isin(seeded).any() and (sel.id != sel.neighbor_id).all()
    assert any("exceeds" in w for w in manifest["warnings"])


def test_no_code_path_unpickles_project_files():
    """Static check of the package: torch.load only with weights_only=True, np.load only with
    allow_pickle=False, and no bare pickle.load(s) (the CIFAR reader uses a restricted Unpickler)."""
    import ast

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for folder in ("raydm2", "jobs"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                for node in ast.walk(ast.parse(open(path).read())):
                    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                        continue
                    owner = getattr(node.func.value, "id", None)
                    kwargs = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                    call = f"{owner}.{node.func.attr}"
                    if (call == "torch.load" and kwargs.get("weights_only") is not True) or \
                            (call == "np.load" and kwargs.get("allow_pickle") is not False) or \
                            call in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads"):
                        offenders.append(f"{os.path.relpath(path, root)}:{node.lineno} {call}")
    assert not offenders, offenders
