"""`ray job submit --working-dir . -- python jobs/requery.py --project URI [--set KEY=VALUE ...]`"""

from _entry import run

run("requery")
