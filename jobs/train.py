"""`ray job submit --working-dir . -- python jobs/train.py --project URI [--set KEY=VALUE ...]`"""

from _entry import run

run("train")
