"""`make demo`: a complete round on the embedded local Ray cluster over the shipped real MNIST sample."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable

from raydm2.service.console import say


def run(workdir: str, raydm2: Callable[[list[str]], int]) -> None:
    """Run the demo's steps through `raydm2` (the CLI's `main`), printing each command as a user would type it."""
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
        say("$ raydm2 " + " ".join(argv))
        if raydm2(argv) != 0:
            sys.exit(f"demo step failed: raydm2 {' '.join(argv)}")
    say(f"""
Done: the project is in {project}. Next, try:
  raydm2 report --project {project} --out {workdir}/report      # plots of accuracy, labels and time
  raydm2 export --project {project} --format labelstudio --out {workdir}/round1.json   # round 1 for annotators
  raydm2 simulate --out {workdir}/sim --pool {pools}/mnist/train --test-pool {pools}/mnist/test --preset mnist \\
      --strategies random margin dm2 --seeds 0 --rounds 3 --engine local    # does DM2 beat random here?""")
