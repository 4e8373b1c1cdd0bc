"""`ray job submit --working-dir . -- python jobs/round.py --project URI [--set KEY=VALUE ...]`"""

from _entry import run

run("round")
