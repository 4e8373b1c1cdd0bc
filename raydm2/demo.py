"""`make demo`: a complete round on the embedded local Ray cluster over the shipped real MNIST sample."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from raydm2 import cli


def run(workdir: str) -> None:
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    pools = os.path.join(workdir, "pools")
    project = os.path.join(workdir, "project")
    steps = [
        ["ingest", "sample", "--out", pools],
        [
            "init", "--project", project, "--preset", "mnist", "--name", "demo",
            "--pool", os.path.join(pools, "mnist", "train"), "--test-pool", os.path.join(pools, "mnist", "test"),
            "--set", "strategy.budget=50", "--set", "train.epochs=10",
        ],
        ["seed", "--project", project, "--n", "100"],
        # The sample pool carries ground truth, so the oracle stands in for human annotators.
        ["label", "--project", project, "--oracle"],
        ["round", "--project", project],
        ["status", "--project", project],
    ]
    for argv in steps:
        print("$ raydm2 " + " ".join(argv), flush=True)
        if cli.main(argv) != 0:
            sys.exit(f"demo step failed: raydm2 {' '.join(argv)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo_project")
    workdir = parser.parse_args().workdir
    run(workdir)
    print(f"done: the project is in {workdir}/project (`raydm2 status` and `raydm2 report` work on it)")


if __name__ == "__main__":
    main()
