"""Label round trip with annotators: export a round's selection (CSV, JSONL, Label Studio tasks) and parse
their answers back (CSV, JSONL, Label Studio exports) into (ids, class indices).

Exported images are the pool's original bytes (the photo as taken, not the model's resized input), written next
to the export with their format's extension; each row/task carries
the raydm2 id, which is what comes back. Parsing refuses, with one clear message, anything it cannot map
unambiguously: a file that must not change the project's labels is rejected whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from raydm2.data import pool
from raydm2.errors import RayDM2Error
from raydm2.ledger import labelstudio
from raydm2.data.storage import resolve

FORMATS = ("csv", "jsonl", "labelstudio")


def _file_name(i: int, blob: bytes) -> str:
    try:
        kind = (Image.open(io.BytesIO(blob)).format or "bin").lower()
    except (UnidentifiedImageError, OSError):
        kind = "bin"  # an undecodable pool image still goes to the annotator as the bytes it is
    return f"{i}.{ {'jpeg': 'jpg', 'tiff': 'tif'}.get(kind, kind) }"


def _image_ref(image_dir: str, url_prefix: str | None, name: str) -> str:
    return f"{url_prefix.rstrip('/')}/{name}" if url_prefix else os.path.join(image_dir, name)


def export(project, n: int, fmt: str, out: str, url_prefix: str | None = None) -> int:
    """Write round n's selection to `out` (plus `<out stem>_images/`; for Label Studio also `<out stem>_config.xml`
    and, after round 0, the selecting model's prediction on each task); returns the number of items."""
    if fmt not in FORMATS:
        raise RayDM2Error(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    selection = project.selection(n)
    out_loc = resolve(out)
    image_dir = out_loc.path.rsplit(".", 1)[0] + "_images"
    image_loc = resolve(out_loc.uri.rsplit(".", 1)[0] + "_images")
    for target in (out_loc, image_loc):
        if target.uri == project.uri or target.uri.startswith(project.uri.rstrip("/") + "/"):
            raise RayDM2Error(f"export --out {out} would write into the project's ledger ({project.uri}); "
                              "export somewhere outside the project folder")
    if out_loc.is_dir():
        raise RayDM2Error(f"export --out {out} is a directory; give a file name, e.g. {out.rstrip('/')}/round{n}.json")
    ids = selection.column("id").to_numpy()
    images = pool.read_columns(project.config.pool, ["id", "image"], ids)
    by_id = dict(zip(images.column("id").to_pylist(), images.column("image").to_pylist()))
    names = {}
    for i in ids:
        names[int(i)] = _file_name(int(i), by_id[int(i)])
        image_loc.join(names[int(i)]).write_bytes(by_id[int(i)])
    rows = [{"id": int(i), "rank": int(r), "score": float(s), "image": _image_ref(image_dir, url_prefix, names[int(i)])}
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
        predicted, version = _predictions(project, n, ids, by_id)
        tasks = [labelstudio.task(r, predicted.get(r["id"]), version) for r in rows]
        text = json.dumps(tasks, indent=1)
        # The project's labeling config, to paste into Label Studio (Settings > Labeling Interface > Code).
        resolve(out_loc.uri.rsplit(".", 1)[0] + "_config.xml").write_text(
            labelstudio.labeling_config(project.config.classes))
    out_loc.write_text(text)
    with project.writing():
        state = project.manifest(n)["state"]
        if state in ("selected", "exported"):
            project.update(n, state="exported", exported={"format": fmt, "path": out_loc.uri, "items": len(rows)})
    return len(rows)


def _predictions(project, n: int, ids, by_id: dict) -> tuple[dict, str | None]:
    """{id: (class, confidence)} of the model that selected round n (none for the random round 0)."""
    uri = project.manifest(n).get("checkpoint")
    if not uri:
        return {}, None
    import torch

    from raydm2.data.images import UndecodableImage, decode, to_tensor
    from raydm2.models import checkpoint

    model = checkpoint.load(uri, project.config.model_spec()).eval()
    spec, out = project.config.image_spec(), {}
    decodable = []
    for i in map(int, ids):
        try:
            decodable.append((i, decode(by_id[i], spec)))
        except UndecodableImage:
            continue  # the annotator still sees the file; there is just no pre-annotation for it
    with torch.inference_mode():
        for start in range(0, len(decodable), 256):
            chunk = decodable[start:start + 256]
            p = torch.softmax(model(to_tensor(np.stack([x for _, x in chunk]))), 1)
            conf, cls = p.max(1)
            out.update({i: (project.config.classes[int(c)], round(float(s), 4))
                        for (i, _), c, s in zip(chunk, cls, conf)})
    return out, f"raydm2-{project.config.name}-round-{n - 1}"


MAX_LABEL_FILE_BYTES = 512 * 2**20
INT64 = (-(2**63), 2**63 - 1)


def _shown(value) -> str:
    """A value from the user's file in a message: quoted and cut short, so an error never dumps a file."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _to_index(value, classes: list[str], where: str) -> int:
    """A label given as a class name or as an integer index."""
    if isinstance(value, bool):
        raise RayDM2Error(f"{where}: label {value!r} is not a class")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise RayDM2Error(f"{where}: label {_shown(value)} is not an integer class index")
    text = str(value).strip()
    if text in classes:
        return classes.index(text)
    try:
        return int(text)
    except ValueError:
        raise RayDM2Error(f"{where}: label {_shown(text)} is neither a class name ({', '.join(classes)}) "
                          "nor an integer index") from None


def _to_id(value, where: str) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise RayDM2Error(f"{where}: id {_shown(value)} is not an integer") from None
    if not INT64[0] <= number <= INT64[1]:
        raise RayDM2Error(f"{where}: id {_shown(value)} is out of range (ids are 64-bit integers)")
    return number


@dataclass(frozen=True)
class LabelFile:
    ids: np.ndarray
    labels: np.ndarray  # class indices
    cancelled: int = 0  # Label Studio annotations skipped by their annotator
    unannotated: int = 0  # Label Studio tasks with no usable annotation yet


def parse(path: str, classes: list[str], fmt: str | None = None,
          from_name: str = labelstudio.FROM_NAME) -> LabelFile:
    """Read a label file into ids and class indices. Format from `fmt` or the file extension; a CSV or TSV that
    Label Studio wrote (it has a `raydm2_id` column) is read as Label Studio's. `from_name`: the name of the Choices
    tag in a Label Studio project's labeling config."""
    loc = resolve(path)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise RayDM2Error(f"label file not found: {path}")
    if info.type != pafs.FileType.File or (loc.is_local and not stat.S_ISREG(os.stat(loc.path).st_mode)):
        raise RayDM2Error(f"{path} is not a regular file: give the label file itself")
    if info.size > MAX_LABEL_FILE_BYTES:
        raise RayDM2Error(f"{path} is {info.size / 2**20:.0f} MiB; label files above "
                          f"{MAX_LABEL_FILE_BYTES // 2**20} MiB are refused (split it and import the parts)")
    raw = loc.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError:
        raise RayDM2Error(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise RayDM2Error(f"{path}: the label file is empty")
    fmt = fmt or {".csv": "csv", ".tsv": "labelstudio", ".jsonl": "jsonl",
                  ".json": "labelstudio"}.get(os.path.splitext(path)[1].lower())
    header = next(csv.reader(io.StringIO(text.split("\n", 1)[0], newline=""),
                             delimiter="\t" if "\t" in text.split("\n", 1)[0] else ","), [])
    studio = labelstudio.Parsed()
    if fmt == "csv" and labelstudio.looks_like_csv_export(header):
        fmt = "labelstudio"
    if fmt == "csv":
        pairs = _parse_csv(text, path)
    elif fmt == "jsonl":
        pairs = _parse_jsonl(text, path)
    elif fmt == "labelstudio":
        studio = (labelstudio.parse_json(text, path, from_name) if text.lstrip().startswith("[")
                  else labelstudio.parse_csv(text, path, from_name))
        pairs = studio.pairs
        if not pairs and studio.cancelled + studio.unannotated:
            raise RayDM2Error(f"{path}: no task is annotated yet ({studio.cancelled} skipped, {studio.unannotated} "
                              "without an annotation)")
    else:
        raise RayDM2Error(f"{path}: cannot tell the format; pass --format csv|jsonl|labelstudio")
    if not pairs:
        raise RayDM2Error(f"{path}: the label file has no rows")
    ids = np.array([_to_id(i, f"{path} row {k + 1}") for k, (i, _) in enumerate(pairs)], np.int64)
    labels = np.array([_to_index(v, classes, f"{path} row {k + 1}") for k, (_, v) in enumerate(pairs)], np.int64)
    return LabelFile(ids, labels, studio.cancelled, studio.unannotated)


def _parse_csv(text: str, path: str) -> list:
    try:
        return _csv_pairs(csv.DictReader(io.StringIO(text, newline="")), path)  # any line endings: \n, \r\n, \r
    except csv.Error as exc:
        raise RayDM2Error(f"{path}: not a readable CSV ({exc})") from None


def _csv_pairs(reader: csv.DictReader, path: str) -> list:
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = {"id", "label"} - set(fields)
    if missing:
        raise RayDM2Error(f"{path}: CSV needs columns 'id' and 'label'; missing {sorted(missing)} (its header has "
                          f"{len(fields)} column{'s' if len(fields) != 1 else ''})")
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
