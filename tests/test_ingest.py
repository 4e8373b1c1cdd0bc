import gzip
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydm2.data import folder, ingest
from raydm2.data import pool
from raydm2.service.cli import main as cli
from raydm2.errors import RayDM2Error
from raydm2.data.images import ImageSpec, decode, encode_png
from tests.conftest import CIFAR_NPZ, MNIST_DIR


def _raw_idx(path, offset):
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def test_mnist_sample_round_trips_exact_pixels(sample_pools):
    info = pool.pool_info(sample_pools["mnist_train"])
    assert info.rows == 3000 and info.max_id == 2999 and info.has_labels
    table = pool.read_columns(sample_pools["mnist_train"], ["id", "image", "label"]).sort_by("id")
    original = _raw_idx(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz"), 16).reshape(-1, 28, 28)
    labels = _raw_idx(os.path.join(MNIST_DIR, "train-labels-idx1-ubyte.gz"), 8)
    assert table.column("label").to_numpy().tolist() == labels.tolist()
    assert set(labels.tolist()) == set(range(10))
    decoded = np.stack([decode(b, ImageSpec(28, 1))[:, :, 0] for b in table.column("image").to_pylist()])
    assert np.array_equal(decoded, original)
    assert pool.pool_info(sample_pools["mnist_test"]).rows == 500


def test_cifar_npz_and_python_batches_agree(sample_pools, tmp_path):
    x, y = ingest.load_npz_split(CIFAR_NPZ, "train")
    # A real CIFAR python batch: the same pickle layout as data_batch_1 (bytes keys, CHW-flattened rows).
    batch = {b"data": x[:50].transpose(0, 3, 1, 2).reshape(50, -1), b"labels": y[:50].tolist(), b"batch_label": b"t"}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    bx, by = ingest.load_cifar_batches([str(path)])
    assert np.array_equal(bx, x[:50]) and np.array_equal(by, y[:50])
    table = pool.read_columns(sample_pools["cifar_train"], ["id", "image"]).sort_by("id")
    assert table.num_rows == 1000
    assert np.array_equal(decode(table.column("image")[7].as_py(), ImageSpec(32, 3)), x[7])


def test_cifar_batch_refuses_code_execution(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil_batch"
    path.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(RayDM2Error, match="refusing to load"):
        ingest.load_cifar_batches([str(path)])


def test_image_folder_labelled_and_flat(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "tree" / cls / f"{i}.png").write_bytes(encode_png(np.full((8, 8), value + i, np.uint8)))
    rows, classes, skipped = folder.ingest_folder(str(tmp_path / "tree"), str(tmp_path / "pool"))
    assert rows == 6 and classes == ["cat", "dog"] and skipped == []
    assert pool.read_columns(str(tmp_path / "pool"), ["label"]).column(0).to_pylist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(encode_png(np.zeros((8, 8), np.uint8)))
    rows, classes, skipped = folder.ingest_folder(str(tmp_path / "flat"), str(tmp_path / "flatpool"))
    assert rows == 1 and classes == [] and skipped == []
    assert pool.read_columns(str(tmp_path / "flatpool"), ["label"]).column(0).null_count == 1


def test_numpy_ingest_and_append_never_reuses_ids(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(5))
    out = str(tmp_path / "pool")
    assert cli(["ingest", "numpy", "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                "--out", out]) == 0
    assert cli(["ingest", "numpy", "--images", str(tmp_path / "x.npy"), "--out", out]) == 0
    ids = pool.read_columns(out, ["id"]).column(0).to_pylist()
    assert sorted(ids) == list(range(10))
    assert pool.pool_info(out).parts == 2


def test_file_uri_pool(tmp_path):
    uri = f"file://{tmp_path}/pool"
    pool.append_arrays(uri, np.zeros((3, 4, 4), np.uint8), np.array([0, 1, 2]), "t")
    assert pool.pool_info(uri).rows == 3
    assert pool.pool_info(str(tmp_path / "pool")).rows == 3


# ---- bad input: one clear error each, nothing stored changes ------------------------------------------------
def _snapshot(path):
    if not os.path.exists(path):
        return {}
    return {p: open(os.path.join(path, p), "rb").read() for p in sorted(os.listdir(path))}


def test_missing_idx_file(tmp_path, capsys):
    assert cli(["ingest", "idx", "--images", str(tmp_path / "nope.gz"), "--out", str(tmp_path / "p")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_truncated_idx_gz(tmp_path, capsys):
    raw = open(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz"), "rb").read()
    (tmp_path / "cut.gz").write_bytes(raw[: len(raw) // 2])
    assert cli(["ingest", "idx", "--images", str(tmp_path / "cut.gz"), "--out", str(tmp_path / "p")]) == 2
    assert "truncated" in capsys.readouterr().err


def test_truncated_idx_payload(tmp_path):
    data = gzip.decompress(open(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz"), "rb").read())
    (tmp_path / "cut").write_bytes(data[:-100])
    with pytest.raises(RayDM2Error, match="truncated or corrupt"):
        ingest.read_idx(str(tmp_path / "cut"))


def test_mismatched_image_and_label_counts(tmp_path, capsys):
    out = tmp_path / "p"
    rc = cli(["ingest", "idx", "--images", os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz"),
              "--labels", os.path.join(MNIST_DIR, "train-labels-idx1-ubyte.gz"), "--out", str(out)])
    assert rc == 2
    assert "500 images" in capsys.readouterr().err and not out.exists()


def test_truncated_npz(tmp_path):
    raw = open(CIFAR_NPZ, "rb").read()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(RayDM2Error, match="npz"):
        ingest.load_npz_split(str(tmp_path / "cut.npz"), "train")


def test_duplicate_ids_on_append_change_nothing(tmp_path):
    out = str(tmp_path / "pool")
    pool.append(out, [encode_png(np.zeros((4, 4), np.uint8))] * 3, ids=np.array([10, 11, 12]))
    before = _snapshot(out)
    with pytest.raises(RayDM2Error, match="already in pool"):
        pool.append(out, [encode_png(np.zeros((4, 4), np.uint8))] * 2, ids=np.array([12, 13]))
    with pytest.raises(RayDM2Error, match="duplicate ids"):
        pool.append(out, [encode_png(np.zeros((4, 4), np.uint8))] * 2, ids=np.array([20, 20]))
    assert _snapshot(out) == before


def test_pool_without_image_column(tmp_path):
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"id": [1, 2], "pixels": [b"a", b"b"]}), tmp_path / "bad" / "part-000000.parquet")
    with pytest.raises(RayDM2Error, match="no 'image' column"):
        pool.pool_info(str(tmp_path / "bad"))


def test_unknown_uri_scheme():
    with pytest.raises(RayDM2Error, match="unknown URI scheme 'ftp'"):
        pool.pool_info("ftp://example.com/pool")


@pytest.mark.ray
def test_a_folder_ingested_by_ray_data_equals_the_one_process_ingest(ray_cluster, tmp_path):
    """Same ids, bytes, labels and sources part by part; appending continues the ids; no staging left behind."""
    from test_real_pools import write_photos

    write_photos(tmp_path / "photos", per_class=5)
    local = folder.ingest_folder(str(tmp_path / "photos"), str(tmp_path / "local"), distributed=False)
    spread = folder.ingest_folder(str(tmp_path / "photos"), str(tmp_path / "ray"), distributed=True, rows_per_part=4)
    assert local == spread and local[0] == 15
    assert len(pool.part_uris(str(tmp_path / "ray"))) == 4

    def table(name):
        return pool.read_columns(str(tmp_path / name), ["id", "image", "label", "source"]).sort_by("id")

    assert table("ray").equals(table("local"))
    folder.ingest_folder(str(tmp_path / "photos"), str(tmp_path / "ray"), distributed=True, rows_per_part=10)
    ids = table("ray").column("id").to_pylist()
    assert ids == list(range(30)) and sorted(os.listdir(tmp_path / "ray"))[0].startswith("part-")
