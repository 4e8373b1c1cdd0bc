"""The entrypoints of raydm2's Ray jobs, shipped inside the package so an installed raydm2 can be scheduled:

    python -m raydm2.service.jobs round|train|acquire|requery --project URI [--set KEY=VALUE ...]

A job's driver runs on the cluster with RAY_ADDRESS set by Ray, so the command joins that cluster. `jobs/*.py` in a
source checkout are thin wrappers of this for `ray job submit --working-dir .`.
"""

from __future__ import annotations

import sys

from raydm2.service.cli import main

COMMANDS = ("round", "train", "acquire", "requery")


def run(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m raydm2.service.jobs {{{','.join(COMMANDS)}}} --project URI [...]", file=sys.stderr)
        return 2
    return main(argv, own_process=True)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
