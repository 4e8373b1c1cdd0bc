"""DM2-AT vs plain training at the same labels, on MNIST from --data-root (SPEC section 4, issue #4).

    python benchmarks/train_bench.py --data-root ../shared/data

Trains the small CNN on the same seeded labeled subset of MNIST train three times on Ray Train: DM2-AT with
1 worker, plain with 1 worker, DM2-AT with 2 workers; evaluates clean and FGSM-robust accuracy on the MNIST
test pool at the MNIST preset's epsilon. Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common as C  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--labels", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--test", type=int, default=10_000)
    args = p.parse_args()

    from raydm2.data import ingest
    from raydm2.data import pool
    from raydm2 import runtime
    from raydm2.ledger.config import ProjectConfig
    from raydm2.training.ray_trainer import fit

    work = tempfile.mkdtemp(prefix="train-bench-")
    train_uri = C.mnist_pool(args.data_root, work)
    x, y = ingest.load_idx_pair(os.path.join(args.data_root, "mnist", "t10k-images-idx3-ubyte.gz"),
                                os.path.join(args.data_root, "mnist", "t10k-labels-idx1-ubyte.gz"))
    test_uri = os.path.join(work, "mnist_test")
    pool.append_arrays(test_uri, x[: args.test], y[: args.test], "mnist:test")
    ids = np.sort(np.random.default_rng(0).choice(60_000, args.labels, replace=False))
    table = pool.read_columns(train_uri, ["id", "label"], ids)
    labels = pa.table({"id": table.column("id"), "label": table.column("label"),
                       "round": pa.array([0] * table.num_rows),
                       "imported_at": pa.array([0] * table.num_rows, pa.timestamp("s", tz="UTC"))})
    runtime.connect(include_dashboard=False)

    def run(name, adversarial, workers):
        cfg = ProjectConfig(name="bench", pool=train_uri, test_pool=test_uri, classes=[str(i) for i in range(10)],
                            train={"epochs": args.epochs, "num_workers": workers, "adversarial": adversarial,
                                   "epsilon": 2 / 255, "batch_size": 96})
        seconds, (_, metrics) = C.seconds(fit, cfg, labels, os.path.join(work, "runs"), pafs.LocalFileSystem(),
                                          name)
        print(name, metrics, flush=True)
        return {**metrics, "wall_s": seconds, "workers": workers, "adversarial": adversarial}

    at1 = run("at-1w", "online", 1)
    plain1 = run("plain-1w", "off", 1)
    at2 = run("at-2w", "online", 2)
    C.save("train", {
        "robust_accuracy_at": at1["robust_accuracy"], "robust_accuracy_plain": plain1["robust_accuracy"],
        "clean_accuracy_at": at1["clean_accuracy"], "clean_accuracy_plain": plain1["clean_accuracy"],
        "images_per_s_per_worker_1w": at1["images_per_s"], "images_per_s_per_worker_2w": at2["images_per_s"],
        "labels": args.labels, "epochs": args.epochs, "eval_epsilon": 2 / 255, "test_images": at1["test_images"],
        "runs": {"at_1w": at1, "plain_1w": plain1, "at_2w": at2},
    })


if __name__ == "__main__":
    main()
