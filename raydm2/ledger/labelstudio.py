"""Label Studio as its users run it: the labeling config and tasks raydm2 exports (with the model's prediction as a
pre-annotation), and every export format of a classification project read back (JSON, JSON-MIN, CSV, TSV).

Formats, as a Label Studio 1.23 server writes them (tests/corpus/labelstudio holds real ones):
- JSON: one object per task, every annotation with its `result`, `was_cancelled` and `ground_truth`.
- JSON-MIN, CSV, TSV: one row per annotation that was not cancelled; the task's data flattened into the row, the
  chosen class in a column named after the Choices tag (`from_name`). No ground-truth flag, no cancelled rows.

Several annotators of one task are resolved by one rule: a ground-truth annotation wins; else the majority; a tie
is refused, naming the tasks, so nothing unresolved reaches the ledger.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from raydm2.errors import RayDM2Error

FROM_NAME = "label"
TO_NAME = "image"


def labeling_config(classes: list[str]) -> str:
    """The XML of a single-choice image classification project over `classes`."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def task(row: dict, prediction: tuple[str, float] | None, model_version: str | None) -> dict:
    """A task for one exported image; with the model's (class, confidence) as a prediction annotators start from."""
    out = {"data": {"image": row["image"], "raydm2_id": row["id"], "score": row["score"]}}
    if prediction is not None:
        out["predictions"] = [{"model_version": model_version, "score": prediction[1], "result": [
            {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [prediction[0]]}}]}]
    return out


@dataclass
class Parsed:
    """(raydm2 id, class name) per resolved task, and what was left out."""

    pairs: list = field(default_factory=list)
    cancelled: int = 0  # annotations marked skipped / cancelled (JSON only: the flat formats drop them)
    unannotated: int = 0  # tasks without a usable annotation yet


def looks_like_csv_export(header: list[str]) -> bool:
    """A CSV/TSV written by Label Studio (rather than raydm2's own `id,label` file): it carries `raydm2_id`."""
    return "raydm2_id" in header


def parse_json(text: str, path: str, from_name: str = FROM_NAME) -> Parsed:
    """A JSON or JSON-MIN export."""
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise RayDM2Error(f"{path}: not JSON ({exc})") from None
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise RayDM2Error(f"{path}: a Label Studio export is a JSON list of tasks")
    if items and "data" not in items[0] and "annotations" not in items[0]:
        return _resolve(_flat_votes(items, path, from_name), path, flat=True)
    votes: dict = {}
    cancelled = 0
    for k, item in enumerate(items):
        data = item.get("data")
        if not isinstance(data, dict) or "raydm2_id" not in data:
            raise RayDM2Error(f"{path} task {k + 1}: no data.raydm2_id (was it exported by raydm2?)")
        annotations = item.get("annotations", [])
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise RayDM2Error(f"{path} task {k + 1}: 'annotations' is not a list of annotations")
        ballot = votes.setdefault(data["raydm2_id"], _Ballot(item.get("id", k + 1)))
        for annotation in annotations:
            if annotation.get("was_cancelled"):
                cancelled += 1
                ballot.skipped = True
                continue
            for choice in _choices(annotation.get("result", []), from_name, f"{path} task {k + 1}"):
                ballot.add(choice, bool(annotation.get("ground_truth")))
    parsed = _resolve(votes, path)
    parsed.cancelled = cancelled
    return parsed


def parse_csv(text: str, path: str, from_name: str = FROM_NAME) -> Parsed:
    """A CSV or TSV export (one row per annotation)."""
    delimiter = "\t" if "\t" in text.split("\n", 1)[0] else ","
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise RayDM2Error(f"{path}: not a readable CSV ({exc})") from None
    return _resolve(_flat_votes(rows, path, from_name), path, flat=True)


class _Ballot:
    def __init__(self, task_id):
        self.task_id = task_id
        self.votes: Counter = Counter()
        self.truth: set = set()
        self.skipped = False  # an annotator skipped it: counted as cancelled, not as waiting for an annotation

    def add(self, choice: str, ground_truth: bool) -> None:
        self.votes[choice] += 1
        if ground_truth:
            self.truth.add(choice)


def _choices(result, from_name: str, where: str) -> list[str]:
    if not isinstance(result, list):
        raise RayDM2Error(f"{where}: an annotation's result is not a list")
    out = []
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise RayDM2Error(f"{where}: an annotation's result is not Label Studio's [{{value: {{choices: [...]}}}}]")
        if item.get("from_name", from_name) != from_name:
            continue  # another control of the labeling config (a comment, a second question)
        choices = item["value"].get("choices", [])
        if not isinstance(choices, list) or len(choices) > 1:
            raise RayDM2Error(f"{where}: {len(choices)} classes chosen in one annotation; a classification "
                              "round takes one")
        out += choices
    return out


def _flat_votes(rows: list[dict], path: str, from_name: str) -> dict:
    if rows and "raydm2_id" not in rows[0]:
        raise RayDM2Error(f"{path}: rows have no raydm2_id column (was the task exported by raydm2?)")
    if rows and from_name not in rows[0]:
        found = sorted(set(rows[0]) - {"id", "raydm2_id", "image", "score", "annotator", "annotation_id",
                                        "created_at", "updated_at", "lead_time"})
        raise RayDM2Error(f"{path}: no column {from_name!r} (the Choices tag's name); columns that could be it: "
                          f"{', '.join(found) or 'none'} (pass --from-name)")
    votes: dict = {}
    for k, row in enumerate(rows):
        ballot = votes.setdefault(row["raydm2_id"], _Ballot(row.get("id", k + 1)))
        value = row[from_name]
        if isinstance(value, dict):  # JSON-MIN of a multiple-choice tag
            value = value.get("choices", [])
            if len(value) > 1:
                raise RayDM2Error(f"{path} row {k + 1}: {len(value)} classes chosen; a classification round "
                                  "takes one")
            value = value[0] if value else None
        if value not in (None, ""):
            ballot.add(value, False)
    return votes


def _resolve(votes: dict, path: str, flat: bool = False) -> Parsed:
    parsed = Parsed()
    ties = []
    for raydm2_id, ballot in votes.items():
        if len(ballot.truth) > 1:
            ties.append(ballot.task_id)
        elif ballot.truth:
            parsed.pairs.append((raydm2_id, next(iter(ballot.truth))))
        elif not ballot.votes:
            parsed.unannotated += not ballot.skipped
        else:
            (best, n), *rest = ballot.votes.most_common()
            if rest and rest[0][1] == n:
                ties.append(ballot.task_id)
            else:
                parsed.pairs.append((raydm2_id, best))
    if ties:
        raise RayDM2Error(f"{path}: annotators disagree with no majority and no ground truth on {len(ties)} "
                          f"task{'s' if len(ties) != 1 else ''} (Label Studio ids {', '.join(map(str, ties[:10]))}"
                          f"{', ...' if len(ties) > 10 else ''}); mark one annotation as ground truth or add a vote"
                          + ("; this format has no ground truth: export JSON to use it" if flat else ""))
    return parsed
