"""Shared helpers for benchmarks: dataset pools from --data-root, result files, timing."""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}


def previous(name: str) -> dict:
    """benchmarks/results/NAME.json as committed, or {} (for a run that keeps another run's figures in the file)."""
    path = os.path.join(RESULTS, f"{name}.json")
    return json.load(open(path)) if os.path.exists(path) else {}


def save(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    payload = {**payload, "machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=float)
    print(json.dumps(payload, indent=2, sort_keys=True, default=float))
    print(f"saved {path}")
    return path


def mnist_pool(data_root: str, workdir: str, limit: int | None = None) -> str:
    """MNIST train as a pool (ingested once into workdir), optionally only the first `limit` images."""
    from raydm2.data import ingest
    from raydm2.data import pool

    out = os.path.join(workdir, f"mnist_train_{limit or 'all'}")
    if not os.path.exists(out):
        x, y = ingest.load_idx_pair(os.path.join(data_root, "mnist", "train-images-idx3-ubyte.gz"),
                                    os.path.join(data_root, "mnist", "train-labels-idx1-ubyte.gz"))
        pool.append_arrays(out, x[:limit], y[:limit], "mnist:train")
    return out


def random_checkpoint(arch: str, channels: int, size: int, path: str, seed: int = 0) -> str:
    """Timing does not depend on the weights, so floor/scale runs use a seeded untrained model."""
    import torch

    from raydm2.models import checkpoint
    from raydm2.models.registry import ModelSpec, build

    torch.manual_seed(seed)
    spec = ModelSpec(arch, 10, channels, size)
    checkpoint.save(build(spec), spec, path)
    return path


class PeakRSS:
    """The process's own peak resident set (ru_maxrss), in MiB."""

    @staticmethod
    def mib() -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def per_stage(result) -> dict:
    return {"timings": result.timings, "counts": result.counts, "index": result.index}


def recall_at_k(found, exact) -> float:
    """Mean share of each row's exact neighbours that the approximate search found (rows of ids, k wide)."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


def seconds(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    return np.roll(np.roll(images, dx, axis=2), dy, axis=1)
