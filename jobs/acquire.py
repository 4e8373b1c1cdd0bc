"""`ray job submit --working-dir . -- python jobs/acquire.py --project URI [--set KEY=VALUE ...]`"""

from _entry import run

run("acquire")
