"""Label round trip with annotators: export a round's selection (CSV, JSONL, Label Studio tasks) and parse
their answers back (CSV, JSONL, Label Studio exports) into (ids, class indices).

Exported images are written as PNG files next to the export so any tool can show them; each row/task carries
the raydm2 id, which is what comes back. Parsing refuses, with one clear message, anything it cannot map
unambiguously: a file that must not change the project's labels is rejected whole.
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from raydm2.data import pool
from raydm2.errors import RayDM2Error
from raydm2.data.storage import resolve

FORMATS = ("csv", "jsonl", "labelstudio")


def _image_ref(image_dir: str, url_prefix: str | None, i: int) -> str:
    name = f"{i}.png"
    return f"{url_prefix.rstrip('/')}/{name}" if url_prefix else os.path.join(image_dir, name)


def export(project, n: int, fmt: str, out: str, url_prefix: str | None = None) -> int:
    """Write round n's selection to `out` (plus `<out stem>_images/`); returns the number of items."""
    if fmt not in FORMATS:
        raise RayDM2Error(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    selection = project.selection(n)
    ids = selection.column("id").to_numpy()
    images = pool.read_columns(project.config.pool, ["id", "image"], ids)
    by_id = dict(zip(images.column("id").to_pylist(), images.column("image").to_pylist()))
    out_loc = resolve(out)
    image_dir = out_loc.path.rsplit(".", 1)[0] + "_images"
    image_loc = resolve(out_loc.uri.rsplit(".", 1)[0] + "_images")
    for i in ids:
        image_loc.join(f"{int(i)}.png").write_bytes(by_id[int(i)])
    rows = [{"id": int(i), "rank": int(r), "score": float(s), "image": _image_ref(image_dir, url_prefix, int(i))}
            for i, r, s in zip(ids, selection.column("rank").to_pylist(), selection.column("score").to_pylist())]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["id", "rank", "score", "image", "label"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "label": ""})
        text = buf.getvalue()
    elif fmt == "jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        tasks = [{"data": {"image": r["image"], "raydm2_id": r["id"], "score": r["score"]}} for r in rows]
        text = json.dumps(tasks, indent=1)
    out_loc.write_text(text)
    with project.writing():
        state = project.manifest(n)["state"]
        if state in ("selected", "exported"):
            project.update(n, state="exported", exported={"format": fmt, "path": out_loc.uri, "items": len(rows)})
    return len(rows)


def _to_index(value, classes: list[str], where: str) -> int:
    """A label given as a class name or as an integer index."""
    if isinstance(value, bool):
        raise RayDM2Error(f"{where}: label {value!r} is not a class")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise RayDM2Error(f"{where}: label {value!r} is not an integer class index")
    text = str(value).strip()
    if text in classes:
        return classes.index(text)
    try:
        return int(text)
    except ValueError:
        raise RayDM2Error(f"{where}: label {text!r} is neither a class name ({', '.join(classes)}) "
                          "nor an integer index") from None


def _to_id(value, where: str) -> int:
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    except (TypeError, ValueError):
        raise RayDM2Error(f"{where}: id {value!r} is not an integer") from None


def parse(path: str, classes: list[str], fmt: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a label file into (ids, class indices). Format from `fmt` or the file extension."""
    loc = resolve(path)
    if not loc.exists():
        raise RayDM2Error(f"label file not found: {path}")
    raw = loc.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError:
        raise RayDM2Error(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise RayDM2Error(f"{path}: the label file is empty")
    fmt = fmt or {".csv": "csv", ".jsonl": "jsonl", ".json": "labelstudio"}.get(os.path.splitext(path)[1].lower())
    if fmt == "csv":
        pairs = _parse_csv(text, path)
    elif fmt == "jsonl":
        pairs = _parse_jsonl(text, path)
    elif fmt == "labelstudio":
        pairs = _parse_labelstudio(text, path)
    else:
        raise RayDM2Error(f"{path}: cannot tell the format; pass --format csv|jsonl|labelstudio")
    if not pairs:
        raise RayDM2Error(f"{path}: the label file has no rows")
    ids = np.array([_to_id(i, f"{path} row {k + 1}") for k, (i, _) in enumerate(pairs)], np.int64)
    labels = np.array([_to_index(v, classes, f"{path} row {k + 1}") for k, (_, v) in enumerate(pairs)], np.int64)
    return ids, labels


def _parse_csv(text: str, path: str) -> list:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = {"id", "label"} - set(fields)
    if missing:
        raise RayDM2Error(f"{path}: CSV needs columns 'id' and 'label'; missing {sorted(missing)} (found {fields})")
    pairs = []
    for k, row in enumerate(reader):
        row = {(key or "").strip(): value for key, value in row.items()}
        if None in row or row.get("") is not None:
            raise RayDM2Error(f"{path} row {k + 2}: more values than columns")
        if row["id"] in (None, "") or row["label"] in (None, ""):
            raise RayDM2Error(f"{path} row {k + 2}: empty id or label")
        pairs.append((row["id"], row["label"]))
    return pairs


def _parse_jsonl(text: str, path: str) -> list:
    pairs = []
    for k, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise RayDM2Error(f"{path} line {k + 1}: not JSON ({exc})") from None
        if not isinstance(obj, dict) or "id" not in obj or "label" not in obj:
            raise RayDM2Error(f"{path} line {k + 1}: each line needs 'id' and 'label'")
        pairs.append((obj["id"], obj["label"]))
    return pairs


def _parse_labelstudio(text: str, path: str) -> list:
    """A Label Studio JSON export: tasks with data.raydm2_id and an annotation whose result holds choices."""
    try:
        tasks = json.loads(text)
    except ValueError as exc:
        raise RayDM2Error(f"{path}: not JSON ({exc})") from None
    if not isinstance(tasks, list):
        raise RayDM2Error(f"{path}: a Label Studio export is a JSON list of tasks")
    pairs = []
    for k, task in enumerate(tasks):
        data = task.get("data", {}) if isinstance(task, dict) else {}
        if "raydm2_id" not in data:
            raise RayDM2Error(f"{path} task {k + 1}: no data.raydm2_id (was it exported by raydm2?)")
        choices = [c for ann in task.get("annotations", []) if not ann.get("was_cancelled")
                   for res in ann.get("result", []) for c in res.get("value", {}).get("choices", [])]
        if not choices:
            continue  # not annotated yet: labels may arrive over several exports
        if len(set(choices)) > 1:
            raise RayDM2Error(f"{path} task {k + 1}: annotations disagree ({sorted(set(choices))})")
        pairs.append((data["raydm2_id"], choices[0]))
    return pairs
