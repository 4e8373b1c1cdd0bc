"""Where project and pool files live: local paths or pyarrow filesystem URIs, with atomic writes.

Atomicity: on a local filesystem every write goes to a temporary sibling and is renamed into place (rename is
atomic on POSIX). On object stores a single object put is already all-or-nothing, so the object is written
directly. Either way a reader never sees a half-written file.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydm2.errors import RayDM2Error

SUPPORTED_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss")


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path inside it; `uri` is what users wrote and what we record."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> "Location":
        path = "/".join([self.path.rstrip("/"), *parts])
        uri = "/".join([self.uri.rstrip("/"), *parts])
        return Location(self.fs, path, uri)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_json(self) -> dict:
        return json.loads(self.read_text())

    def write_bytes(self, data: bytes) -> None:
        """Write atomically: readers see the old content or the new, never a mix."""
        parent = self.path.rsplit("/", 1)[0]
        if parent:
            self.fs.create_dir(parent, recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _rename_into_place(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, obj) -> None:
        self.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def write_table(self, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(buf.getvalue())

    def read_table(self) -> pa.Table:
        with self.fs.open_input_file(self.path) as f:
            return pq.read_table(f)

    def list_dir(self) -> list[str]:
        """Names of the direct children, sorted; empty when the folder does not exist."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return sorted(info.base_name for info in infos)

    def delete(self) -> None:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)


def _rename_into_place(src: str, dst: str) -> None:
    # Separate function so fault-injection tests can simulate a crash between the temp write and the rename.
    os.replace(src, dst)


def resolve(uri: str) -> Location:
    """Turn a local path or a filesystem URI into a Location, refusing schemes pyarrow cannot open."""
    if not uri:
        raise RayDM2Error("empty path or URI")
    if "://" in uri:
        scheme = uri.split("://", 1)[0].lower()
        if scheme not in SUPPORTED_SCHEMES:
            raise RayDM2Error(
                f"unknown URI scheme {scheme!r} in {uri!r}; supported: local paths and "
                + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
            )
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise RayDM2Error(f"cannot open {uri!r}: {exc}") from exc
        return Location(fs, path.rstrip("/") or "/", uri.rstrip("/"))
    path = os.path.abspath(os.path.expanduser(uri))
    return Location(pafs.LocalFileSystem(), path, path)
