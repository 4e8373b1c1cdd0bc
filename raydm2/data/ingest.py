"""Readers of the real dataset formats, each turning a source into pool rows (see `raydm2.pool`).

Formats: MNIST/Fashion-MNIST idx (optionally gzip), CIFAR-10 `.npz` arrays and python batch files, and numpy
arrays (image folders: `raydm2.data.folder`). Every reader checks sizes against the file's own header and refuses
truncated or inconsistent input before anything is written.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile
import zlib

import numpy as np

from raydm2.data import pool
from raydm2.errors import RayDM2Error

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: str) -> bytes:
    if not os.path.isfile(path):
        raise RayDM2Error(f"file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise RayDM2Error(f"{path}: truncated or corrupt gzip data ({exc})") from None
    return raw


def read_idx(path: str) -> np.ndarray:
    """Parse an idx file (the MNIST format): magic 0x0000TTDD, D big-endian uint32 dims, then the data."""
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise RayDM2Error(f"{path}: not an idx file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise RayDM2Error(f"{path}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise RayDM2Error(
            f"{path}: idx header promises {dims} ({expected} bytes) but the file holds {len(data) - header} bytes"
            " (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def load_idx_pair(images_path: str, labels_path: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    images = read_idx(images_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise RayDM2Error(f"{images_path}: expected uint8 images N x H x W, got {images.dtype} {images.shape}")
    labels = None
    if labels_path is not None:
        labels = read_idx(labels_path).astype(np.int64)
        if labels.ndim != 1:
            raise RayDM2Error(f"{labels_path}: expected a 1-D label file, got shape {labels.shape}")
        if len(labels) != len(images):
            raise RayDM2Error(f"{len(images)} images in {images_path} but {len(labels)} labels in {labels_path}")
    return images, labels


def load_npz_split(path: str, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """CIFAR-style `.npz` with keys x_<split> (N x H x W x C uint8) and y_<split>."""
    if not os.path.isfile(path):
        raise RayDM2Error(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            xk, yk = f"x_{split}", f"y_{split}"
            if xk not in keys:
                raise RayDM2Error(f"{path}: no array {xk!r} (arrays: {', '.join(sorted(keys))})")
            images = npz[xk]
            labels = npz[yk].astype(np.int64).reshape(-1) if yk in keys else None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise RayDM2Error(f"{path}: truncated or corrupt npz ({exc})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise RayDM2Error(f"{path}: {xk} must be uint8 N x H x W [x C], got {images.dtype} {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise RayDM2Error(f"{path}: {len(images)} images in {xk} but {len(labels)} labels in {yk}")
    return images, labels


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR python batches are pickles; only the numpy array reconstruction they need is allowed to load,
    so a crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def load_cifar_batches(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python batch files (data_batch_1..5, test_batch) -> N x 32 x 32 x 3 uint8 and labels."""
    xs, ys = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise RayDM2Error(f"file not found: {path}")
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise RayDM2Error(f"{path}: not a readable CIFAR batch ({exc})") from None
        if not isinstance(batch, dict):
            raise RayDM2Error(f"{path}: not a CIFAR batch (expected a dict)")
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
        if "data" not in batch or "labels" not in batch:
            raise RayDM2Error(f"{path}: CIFAR batch lacks 'data' or 'labels'")
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise RayDM2Error(f"{path}: CIFAR data must be N x 3072, got {data.shape}")
        if len(labels) != len(data):
            raise RayDM2Error(f"{path}: {len(data)} images but {len(labels)} labels")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def load_numpy(images_path: str, labels_path: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    def _load(p):
        if not os.path.isfile(p):
            raise RayDM2Error(f"file not found: {p}")
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise RayDM2Error(f"{p}: not a readable .npy array ({exc})") from None

    images = _load(images_path)
    labels = None if labels_path is None else _load(labels_path).astype(np.int64).reshape(-1)
    if labels is not None and len(labels) != len(images):
        raise RayDM2Error(f"{len(images)} images in {images_path} but {len(labels)} labels in {labels_path}")
    return images, labels


# Dataset folders as shipped in ../shared/data and in raydm2/sample_data: split name -> source files.
IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def ingest_idx_dataset(root: str, out: str, source: str) -> dict[str, int]:
    """An MNIST-family folder -> `<out>/train` and `<out>/test` pools. Both splits are read and checked before
    either is written, so a bad test file does not leave a train pool behind."""
    loaded = {}
    for split, (img, lab) in IDX_SPLITS.items():
        loaded[split] = load_idx_pair(os.path.join(root, img), os.path.join(root, lab))
    return {
        split: len(pool.append_arrays(f"{out.rstrip('/')}/{split}", x, y, f"{source}:{split}"))
        for split, (x, y) in loaded.items()
    }


def ingest_npz_dataset(path: str, out: str, source: str) -> dict[str, int]:
    loaded = {split: load_npz_split(path, split) for split in ("train", "test")}
    return {
        split: len(pool.append_arrays(f"{out.rstrip('/')}/{split}", x, y, f"{source}:{split}"))
        for split, (x, y) in loaded.items()
    }


def sample_data_dir() -> str:
    """The small real sample shipped inside the package (cut from MNIST and CIFAR-10)."""
    return os.path.join(os.path.dirname(__file__), "sample_data")
