"""Shared body of the job entrypoints: make the submitted working_dir importable and run one CLI command.

Inside a Ray job RAY_ADDRESS points at the cluster, so raydm2 joins it instead of starting a local one.
"""

import os
import sys


def run(command: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from raydm2.service.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
