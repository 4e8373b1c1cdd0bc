"""Image folders as pools: `root/<class>/...` (labels = sorted class-folder index; any depth below a class folder)
or a flat folder of images (no labels), in any format Pillow reads.

The original bytes are stored unchanged: decoding, resizing and mode conversion happen in the pipeline
(`raydm2.data.images`), where an image the project cannot use is skipped and counted rather than failing a round.
What the ingest itself leaves out is listed with the reason: files without an image extension, symbolic links that
leave the folder, and files that cannot be read. Files are read and written in parts, so memory stays bounded.

Large trees (or `distributed=True`) are read by a Ray Data job: the driver only lists the files and numbers them;
tasks read a part's files each and write its Parquet part into a staging folder, which joins the pool (renamed into
place) only when every part is written, so an interrupted ingest adds nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from raydm2 import progress
from raydm2.data import pool
from raydm2.errors import RayDM2Error

# From this many files, `ingest folder` reads them with Ray Data rather than in one process.
DISTRIBUTED_FROM = 100_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


@dataclass
class FolderScan:
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    # (path relative to the root, why it was left out)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def scan(root: str) -> FolderScan:
    base = Path(root)
    if not base.is_dir():
        raise RayDM2Error(f"image folder not found: {root}")
    inside = base.resolve()
    out = FolderScan()
    entries = sorted(base.iterdir())
    class_dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES]
    if class_dirs and loose:
        raise RayDM2Error(f"{root}: mixes class folders and loose images; use one layout")
    if not class_dirs:
        for p in entries:
            _consider(p, None, base, inside, out)
    for p in entries:
        if p in class_dirs and _leaves(p, inside):
            out.skipped.append((p.name, "symbolic link to a folder outside the image folder"))
            continue
        if p in class_dirs:
            out.classes.append(p.name)
            for folder, dirs, names in os.walk(p):  # does not descend into linked folders
                dirs.sort()
                for name in sorted(names):
                    _consider(Path(folder) / name, len(out.classes) - 1, base, inside, out)
                out.skipped += [(str((Path(folder) / d).relative_to(base)), "symbolic link to a folder (not followed)")
                                for d in dirs if (Path(folder) / d).is_symlink()]
    if not out.files:
        raise RayDM2Error(f"{root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return out


def _leaves(path: Path, inside: Path) -> bool:
    return path.is_symlink() and not path.resolve().is_relative_to(inside)


def _consider(path: Path, label: int | None, base: Path, inside: Path, out: FolderScan) -> None:
    where = str(path.relative_to(base))
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        out.skipped.append((where, "not an image file name (" + (path.suffix or "no extension") + ")"))
    elif _leaves(path, inside):
        out.skipped.append((where, "symbolic link to a file outside the image folder"))
    elif not path.is_file():
        out.skipped.append((where, "not a regular file"))
    elif not os.access(path, os.R_OK):
        out.skipped.append((where, "cannot be read (permission denied)"))
    else:
        out.files.append(path)
        if label is not None:
            out.labels.append(label)


def ingest_folder(root: str, out: str, source: str | None = None, distributed: bool | None = None,
                  rows_per_part: int = pool.ROWS_PER_PART) -> tuple[int, list[str], list[tuple[str, str]]]:
    """Append the folder's images to the pool at `out`, a part at a time; returns (rows appended, class names,
    files left out with the reason). `distributed`: read with Ray Data (default: from `DISTRIBUTED_FROM` files)."""
    found = scan(root)
    if distributed or (distributed is None and len(found.files) >= DISTRIBUTED_FROM):
        return _ingest_distributed(found, root, out, source, rows_per_part)
    # Each row's source names its file, so a picked image can be found in the user's folder.
    prefix = source or f"folder:{os.path.basename(os.path.abspath(root))}"
    rows = 0
    for start in range(0, len(found.files), pool.ROWS_PER_PART):
        images, labels, sources = [], [], []
        for k in range(start, min(start + pool.ROWS_PER_PART, len(found.files))):
            path = found.files[k]
            relative = path.relative_to(root).as_posix()
            try:
                images.append(path.read_bytes())
            except OSError as exc:
                found.skipped.append((relative, f"cannot be read ({exc.strerror})"))
                continue
            sources.append(f"{prefix}/{relative}")
            if found.classes:
                labels.append(found.labels[k])
        if images:
            rows += len(pool.append(out, images, labels if found.classes else None, sources))
    return rows, found.classes, found.skipped


def _ingest_distributed(found: FolderScan, root: str, out: str, source: str | None,
                        rows_per_part: int) -> tuple[int, list[str], list[tuple[str, str]]]:
    import ray.data

    from raydm2.data.storage import resolve
    from raydm2.runtime import connect

    prefix = source or f"folder:{os.path.basename(os.path.abspath(root))}"
    loc = resolve(out)
    info = pool.pool_info(out) if loc.exists() and pool.part_uris(out) else None
    first_id, first_part = (0, 0) if info is None else (info.max_id + 1, info.parts)
    chunks = [{"part": k, "first_id": first_id + start,
               "paths": [str(p) for p in found.files[start:start + rows_per_part]],
               "labels": found.labels[start:start + rows_per_part] if found.classes else [],
               "sources": [f"{prefix}/{p.relative_to(root).as_posix()}"
                           for p in found.files[start:start + rows_per_part]]}
              for k, start in enumerate(range(0, len(found.files), rows_per_part))]
    staging = loc.join(f".staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    connect()
    started = time.perf_counter()
    written = ray.data.from_items(chunks, override_num_blocks=len(chunks)).map(
        _write_part, fn_kwargs={"staging": staging.uri, "first_part": first_part}).take_all()
    rows = sum(w["rows"] for w in written)
    for w in sorted(written, key=lambda w: w["name"]):
        if w["rows"]:
            loc.fs.move(staging.join(w["name"]).path, loc.join(w["name"]).path)
    loc.fs.delete_dir(staging.path)
    found.skipped += [tuple(s) for w in written for s in w["skipped"]]
    progress.stage_done("ingest_s", time.perf_counter() - started, rows)
    return rows, found.classes, found.skipped


def _write_part(chunk: dict, staging: str, first_part: int) -> dict:
    """One task: read a part's files and write them as one Parquet part; unreadable files are skipped, so ids
    stay those the driver gave (gaps are allowed: ids need only be unique)."""
    from raydm2.data.storage import resolve

    images, ids, labels, sources, skipped = [], [], [], [], []
    for k, path in enumerate(chunk["paths"]):
        try:
            with open(path, "rb") as f:
                images.append(f.read())
        except OSError as exc:
            skipped.append((chunk["sources"][k].split("/", 1)[1], f"cannot be read ({exc.strerror})"))
            continue
        ids.append(chunk["first_id"] + k)
        sources.append(chunk["sources"][k])
        if chunk["labels"]:
            labels.append(chunk["labels"][k])
    name = f"{pool.PART_PREFIX}{first_part + chunk['part']:06d}.parquet"
    if images:
        pool.write_part(resolve(staging).join(name), ids, images, labels or None, sources)
    return {"name": name, "rows": len(images), "skipped": skipped}
