"""What the ledger refuses or repairs, tried as a user would through the CLI: pools read from wherever the command
runs, labels one row per id, exports that cannot touch the ledger, label files that are only ever regular files,
images that cannot stop a round, and machine failures (a read-only or full disk, Ctrl-C) said in one line."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raydm2.data import folder, pool
from raydm2.data.images import ImageSpec, UndecodableImage, decode, encode_png
from raydm2.ledger.project import Project
from raydm2.service.cli import main as cli
from tests.helpers import CLASSES, REPO, cli as cli_process, seeded_project, snapshot, trained_project


@pytest.fixture
def seeded(tmp_path, sample_pools):
    return seeded_project(str(tmp_path / "p"), sample_pools["mnist_train"])


# ---- pools are found from anywhere ---------------------------------------------------------------------------
def test_a_relative_pool_path_reads_the_same_pool_from_any_directory(tmp_path, sample_pools, monkeypatch):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    shutil.copytree(sample_pools["mnist_train"], here / "pools" / "train")
    (elsewhere / "pools" / "train").mkdir(parents=True)  # a different pool at the same relative path
    pool.append_arrays(str(elsewhere / "pools" / "train"), np.zeros((3000, 28, 28), np.uint8), np.full(3000, 9), "x")
    monkeypatch.chdir(here)
    assert cli(["init", "--project", "proj", "--preset", "mnist", "--pool", "pools/train"]) == 0
    assert Project.open(str(here / "proj")).config.pool == str(here / "pools" / "train")
    assert cli(["seed", "--project", "proj", "--n", "30"]) == 0
    monkeypatch.chdir(elsewhere)
    assert cli(["label", "--project", str(here / "proj"), "--oracle"]) == 0
    project = Project.open(str(here / "proj"))
    got = project.labels(0).sort_by("id")
    truth = pool.read_columns(sample_pools["mnist_train"], ["id", "label"], got.column("id").to_numpy()).sort_by("id")
    assert got.column("label").to_pylist() == truth.column("label").to_pylist()
    # A hand-edited project.yaml with a relative path means relative to the project folder.
    yaml_path = here / "proj" / "project.yaml"
    yaml_path.write_text(yaml_path.read_text().replace(str(here / "pools" / "train"), "../pools/train"))
    assert Project.open(str(here / "proj")).config.pool == str(here / "proj" / ".." / "pools" / "train")


# ---- labels: one row per id ----------------------------------------------------------------------------------
def test_repeated_rows_give_one_label_per_id(tmp_path, sample_pools):
    project = seeded_project(str(tmp_path / "p"), sample_pools["mnist_train"], n=3000)
    ids = project.selection(0).column("id").to_numpy()
    truth = dict(zip(*[c.to_pylist() for c in pool.read_columns(project.config.pool, ["id", "label"]).columns]))
    rows = np.resize(ids, 200_000)  # a CSV concatenated with itself, many times over
    path = tmp_path / "big.csv"
    path.write_text("id,label\n" + "".join(f"{i},{truth[int(i)]}\n" for i in rows))
    assert cli(["label", "--project", project.uri, "--file", str(path)]) == 0
    assert project.labels(0).num_rows == 3000 and project.manifest(0)["state"] == "labeled"


def test_a_label_studio_task_exported_twice_is_one_label(seeded, tmp_path):
    tasks = tmp_path / "tasks.json"
    assert cli(["export", "--project", seeded.uri, "--format", "labelstudio", "--out", str(tasks)]) == 0
    exported = json.loads(tasks.read_text())
    for task in exported:
        task["annotations"] = [{"result": [{"value": {"choices": ["4"]}}]}]
    tasks.write_text(json.dumps(exported + exported))
    assert cli(["label", "--project", seeded.uri, "--file", str(tasks)]) == 0
    assert seeded.labels(0).num_rows == len(exported) == 10


# ---- exports never write into the ledger ---------------------------------------------------------------------
@pytest.mark.parametrize("target", ["project.yaml", "rounds/0000/selection.parquet", "rounds/0000/manifest.json",
                                    "notes.csv", "rounds"])
def test_export_refuses_paths_inside_the_project(seeded, capsys, target):
    before = snapshot(seeded.uri)
    assert cli(["export", "--project", seeded.uri, "--out", os.path.join(seeded.uri, target)]) == 2
    assert "would write into the project's ledger" in capsys.readouterr().err
    assert snapshot(seeded.uri) == before


def test_export_refuses_an_existing_directory(seeded, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    before = snapshot(seeded.uri)
    assert cli(["export", "--project", seeded.uri, "--out", str(tmp_path / "out")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert snapshot(seeded.uri) == before and os.listdir(tmp_path / "out") == []


# ---- label files are regular files, and never echoed ---------------------------------------------------------
def test_label_file_must_be_a_regular_file_of_bounded_size(seeded, tmp_path, capsys):
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:
        f.truncate(600 * 2**20)  # sparse: 600 MiB on paper
    before = snapshot(seeded.uri)
    for path, message in ((tmp_path, "is not a regular file"), ("/dev/zero", "is not a regular file"),
                          (fifo, "is not a regular file"), (big, "MiB are refused")):
        assert cli(["label", "--project", seeded.uri, "--file", str(path), "--format", "csv"]) == 2
        assert message in capsys.readouterr().err
    assert snapshot(seeded.uri) == before


def test_a_refused_label_file_is_not_echoed(seeded, tmp_path, capsys):
    link = tmp_path / "labels.csv"
    link.symlink_to("/etc/passwd")
    assert cli(["label", "--project", seeded.uri, "--file", str(link)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "needs columns 'id' and 'label'" in err
    first_line = open("/etc/passwd").readline().strip()
    assert first_line and first_line not in err and ":x:0:0:" not in err


# ---- one line and exit 2, the project unchanged ----------------------------------------------------------------
def test_init_into_an_existing_file_is_refused(tmp_path, sample_pools, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    assert cli(["init", "--project", str(target), "--pool", sample_pools["mnist_train"], "--preset", "mnist"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_a_binary_project_yaml_is_one_line(seeded, capsys):
    with open(os.path.join(seeded.uri, "project.yaml"), "wb") as f:
        f.write(bytes(range(256)))
    assert cli(["status", "--project", seeded.uri]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and len(err.splitlines()) == 1


def test_a_pool_part_that_is_not_parquet_is_one_line(tmp_path, sample_pools, capsys):
    stray = tmp_path / "pool"
    shutil.copytree(sample_pools["mnist_test"], stray)
    (stray / "part-000001.parquet").write_text("id,image\n1,abc\n")
    assert cli(["init", "--project", str(tmp_path / "p"), "--pool", str(stray), "--preset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "part-000001.parquet is not a readable Parquet file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("damage, message", [
    ("meta_list", "is not an object with a 'spec' mapping"),
    ("empty_weights", "is empty (0 bytes)"),
])
def test_a_damaged_checkpoint_is_one_line(ray_cluster, tmp_path, sample_pools, trained_checkpoint, capsys, damage,
                                          message):
    project = trained_project(str(tmp_path / "p"), sample_pools["mnist_train"], trained_checkpoint)
    ckpt = project.checkpoint_dir(0).path
    if damage == "meta_list":
        (open(os.path.join(ckpt, "meta.json"), "w")).write("[1, 2]")
    else:
        open(os.path.join(ckpt, "model.pt"), "wb").close()
    before = snapshot(project.uri)
    assert cli(["acquire", "--project", project.uri]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert snapshot(project.uri) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs of our own: a disk that fills up, and can be made read-only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not let the suite mount a tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_read_only_or_full_disk_is_one_line_and_loses_nothing(small_disk, sample_pools, capsys):
    project = seeded_project(str(small_disk / "p"), sample_pools["mnist_train"])
    before = snapshot(project.uri)
    with open(small_disk / "filler", "wb") as f:  # the disk is now full
        try:
            f.write(b"\0" * 4 * 2**20)
        except OSError:
            pass
    assert cli(["label", "--project", project.uri, "--oracle"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.splitlines()) == 1
    assert snapshot(project.uri) == before
    os.unlink(small_disk / "filler")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert cli(["label", "--project", project.uri, "--oracle"]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and len(err.splitlines()) == 1
    assert snapshot(project.uri) == before


def test_ctrl_c_says_interrupted_and_releases_the_lock(ray_cluster, tmp_path, sample_pools, trained_checkpoint):
    import ray

    project = trained_project(str(tmp_path / "p"), sample_pools["mnist_train"], trained_checkpoint)
    run = cli_process("acquire", "--project", project.uri, "--batch-size", "32",
                      env={"RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    deadline = time.monotonic() + 180
    while not (project.has_round(1) and project.manifest(1)["state"] == "acquiring"):
        assert time.monotonic() < deadline and run.poll() is None, run.communicate()
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and err.strip().splitlines()[-1] == "raydm2: interrupted", err[-2000:]
    assert "Traceback" not in err
    assert not os.path.exists(os.path.join(project.uri, ".lock"))
    assert Project.open(project.uri).manifest(1)["state"] == "acquiring"  # the next acquire resumes it


# ---- images that must not stop a round -----------------------------------------------------------------------
def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_an_oversized_image_is_refused_from_its_header_before_decoding():
    big = _png(np.zeros((10_000, 10_000), np.uint8))
    assert len(big) < 1_000_000  # a few hundred kB that would decode to 100 MB
    with pytest.raises(UndecodableImage, match="image header says 10000x10000, over the limit"):
        decode(big, ImageSpec(28, 1))
    bomb = open(os.path.join(REPO, "tests", "corpus", "images", "bomb_65535x65535.png"), "rb").read()
    with pytest.raises(UndecodableImage):
        decode(bomb, ImageSpec(28, 1))


def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped():
    wide = np.array([[0, 257, 32768, 65535]], np.uint16).repeat(4, 0)
    png = _png(wide)
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    got = decode(png, ImageSpec(4, 1))[:, :, 0]
    assert got[0].tolist() == [0, 1, 128, 255]


def test_a_colour_palette_image_is_colour():
    palette = open(os.path.join(REPO, "tests", "corpus", "images", "palette_colour.png"), "rb").read()
    with pytest.raises(UndecodableImage, match="is colour and the project is grey"):
        decode(palette, ImageSpec(28, 1))
    rgb = decode(palette, ImageSpec(28, 3))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[15, 0].tolist() == [0, 255, 0]


def test_ingest_folder_refuses_links_out_of_the_folder_and_lists_what_it_left_out(tmp_path, capsys):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.png").write_bytes(encode_png(np.full((8, 8), 7, np.uint8)))
    (root / "b.png").write_bytes(encode_png(np.full((8, 8), 9, np.uint8)))
    (root / "escape.png").symlink_to("/etc/hostname")
    (root / "alias.png").symlink_to(root / "a.png")  # a link that stays inside is followed
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "notes.txt").write_text("not an image")
    assert cli(["ingest", "folder", "--root", str(root), "--out", str(tmp_path / "pool")]) == 0
    out = capsys.readouterr().out
    assert "3 images appended" in out.replace("rows: ", "")
    assert "left out 3 files:" in out
    assert "escape.png: symbolic link to a file outside the image folder" in out
    assert "dangling.png: not a regular file" in out and "notes.txt: not an image file name (.txt)" in out
    stored = pool.read_columns(str(tmp_path / "pool"), ["image"]).column("image").to_pylist()
    assert open("/etc/hostname", "rb").read() not in stored and len(stored) == 3
    assert folder.scan(str(root)).skipped == [("dangling.png", "not a regular file"),
                                              ("escape.png", "symbolic link to a file outside the image folder"),
                                              ("notes.txt", "not an image file name (.txt)")]


def test_a_bomb_in_the_pool_is_skipped_and_counted_not_a_stuck_round(ray_cluster, tmp_path, sample_pools,
                                                                     trained_checkpoint):
    pool_uri = str(tmp_path / "pool")
    good = pool.read_columns(sample_pools["mnist_train"], ["image"]).column("image").to_pylist()[:200]
    bomb = open(os.path.join(REPO, "tests", "corpus", "images", "bomb_65535x65535.png"), "rb").read()
    pool.append(pool_uri, good + [bomb])
    project = trained_project(str(tmp_path / "p"), pool_uri, trained_checkpoint, seed_n=20)
    assert cli(["acquire", "--project", project.uri, "--actors", "1"]) == 0
    manifest = project.manifest(1)
    assert manifest["state"] == "selected" and manifest["counts"]["skipped_undecodable"] == 1
    assert 200 not in project.selection(1).column("id").to_pylist()
