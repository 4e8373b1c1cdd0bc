"""Shared body of the job entrypoints: make the submitted working_dir importable and run one raydm2 job command
(`raydm2.service.jobs`, which an installed raydm2 runs as `python -m raydm2.service.jobs`)."""

import os
import sys


def run(command: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from raydm2.service.jobs import run as run_job

    sys.exit(run_job([command, *sys.argv[1:]]))
