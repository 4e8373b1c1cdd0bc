"""Image folders as pools: `root/<class>/...` (labels = sorted class-folder index; any depth below a class folder)
or a flat folder of images (no labels), in any format Pillow reads.

The original bytes are stored unchanged: decoding, resizing and mode conversion happen in the pipeline
(`raydm2.data.images`), where an image the project cannot use is skipped and counted rather than failing a round.
What the ingest itself leaves out is listed with the reason: files without an image extension, symbolic links that
leave the folder, and files that cannot be read. Files are read and written in parts, so memory stays bounded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from raydm2.data import pool
from raydm2.errors import RayDM2Error

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


def ingest_folder(root: str, out: str, source: str | None = None) -> tuple[int, list[str], list[tuple[str, str]]]:
    """Append the folder's images to the pool at `out`, a part at a time; returns (rows appended, class names,
    files left out with the reason)."""
    found = scan(root)
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
