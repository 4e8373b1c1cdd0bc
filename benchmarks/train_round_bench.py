"""One small training round as a user runs it: `raydm2 train` of 100 labels × 10 epochs, small CNN, Ray Train on a
new embedded cluster (issue #21, target 4).

    python benchmarks/train_round_bench.py [--repeats 3] [--record before]

The shipped MNIST sample (3,000 train, 500 test images) is ingested once; each repeat is a fresh project (init,
seed 100, oracle labels) whose `raydm2 train` is timed from command start to the round's checkpoint written
(`train_round_s`) and to exit (`command_s`), with its clean and robust accuracy. Writes
benchmarks/results/train_round.json; `--record before` stores the figures under `before` instead, kept by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common as C  # noqa: E402


def raydm2(*args: str, cwd: str) -> None:
    subprocess.run([sys.executable, "-m", "raydm2", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def one_round(work: str, n: int, labels: int, epochs: int) -> dict:
    project = os.path.join(work, f"project-{n}")
    raydm2("init", "--project", project, "--preset", "mnist", "--name", "bench", "--pool", "pools/mnist/train",
           "--test-pool", "pools/mnist/test", "--set", f"train.epochs={epochs}", cwd=work)
    raydm2("seed", "--project", project, "--n", str(labels), cwd=work)
    raydm2("label", "--project", project, "--oracle", cwd=work)
    started = time.time()
    raydm2("train", "--project", project, cwd=work)
    ended = time.time()
    round_dir = os.path.join(project, "rounds", "0000")
    manifest = json.load(open(os.path.join(round_dir, "manifest.json")))
    checkpoint = os.path.join(round_dir, "checkpoint")
    written = max(os.path.getmtime(os.path.join(checkpoint, f)) for f in os.listdir(checkpoint))
    return {"train_round_s": round(written - started, 2), "command_s": round(ended - started, 2),
            "manifest_train_s": manifest["timings"]["train_s"],
            "clean_accuracy": manifest["metrics"]["clean_accuracy"],
            "robust_accuracy": manifest["metrics"]["robust_accuracy"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--record", choices=["main", "before"], default="main")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="train-round-")
    raydm2("ingest", "sample", "--out", "pools", cwd=work)
    runs = []
    for n in range(args.repeats):
        runs.append(one_round(work, n, args.labels, args.epochs))
        print(runs[-1], flush=True)
    figures = {"labels": args.labels, "epochs": args.epochs, "runs": runs,
               "train_round_s": float(np.median([r["train_round_s"] for r in runs])),
               "command_s": float(np.median([r["command_s"] for r in runs])),
               "clean_accuracy": float(np.mean([r["clean_accuracy"] for r in runs]))}
    previous = C.previous("train_round")
    if args.record == "before":
        C.save("train_round", {**previous, "before": {**figures, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}})
    else:
        C.save("train_round", {**figures, **({"before": previous["before"]} if "before" in previous else {})})


if __name__ == "__main__":
    main()
