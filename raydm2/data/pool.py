"""Pools: Parquet datasets of (`id`, `image`, optional `label`, optional `source`).

A pool is a folder (or URI) of `part-NNNNNN.parquet` files. Ids are unique and stable forever: appending writes
a new part file whose ids continue after the largest id already stored, so an id is never reused. Each part file
is written atomically and only after every check has passed, so a refused append changes nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from raydm2.errors import RayDM2Error
from raydm2.data.images import encode_png
from raydm2.data.storage import Location, resolve

POOL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.int64()),
        pa.field("source", pa.string()),
    ]
)
PART_PREFIX = "part-"
ROWS_PER_PART = 20_000
# Small row groups let Ray Data split one part file across many read tasks.
ROW_GROUP_SIZE = 2_000


@dataclass(frozen=True)
class PoolInfo:
    rows: int
    parts: int
    max_id: int  # -1 for an empty pool
    has_labels: bool


def _part_files(loc: Location) -> list[str]:
    return [n for n in loc.list_dir() if n.startswith(PART_PREFIX) and n.endswith(".parquet")]


def _dataset(loc: Location) -> pads.Dataset:
    files = [loc.join(n).path for n in _part_files(loc)]
    if not files:
        raise RayDM2Error(f"pool {loc.uri!r} has no part-*.parquet files")
    _check_parts(loc, files)
    return pads.dataset(files, format="parquet", filesystem=loc.fs)


def _check_parts(loc: Location, files: list[str]) -> None:
    """Every part's footer must read as Parquet, so a stray file fails here in one line, not deep in a read."""
    for path in files:
        try:
            with loc.fs.open_input_file(path) as f:
                pq.read_metadata(f)
        except (pa.ArrowException, OSError) as exc:
            raise RayDM2Error(f"pool {loc.uri!r}: {path.rsplit('/', 1)[-1]} is not a readable Parquet file "
                              f"({str(exc).splitlines()[0]})") from None


def check_schema(schema: pa.Schema, where: str) -> None:
    """Refuse a pool that lacks the required columns or has them with the wrong types."""
    for name in ("id", "image"):
        if name not in schema.names:
            raise RayDM2Error(f"pool {where!r} has no {name!r} column (columns: {', '.join(schema.names)})")
    if not pa.types.is_integer(schema.field("id").type):
        raise RayDM2Error(f"pool {where!r}: column 'id' must be integer, got {schema.field('id').type}")
    if not (pa.types.is_binary(schema.field("image").type) or pa.types.is_large_binary(schema.field("image").type)):
        raise RayDM2Error(f"pool {where!r}: column 'image' must be binary, got {schema.field('image').type}")
    if "label" in schema.names and not pa.types.is_integer(schema.field("label").type):
        raise RayDM2Error(f"pool {where!r}: column 'label' must be integer, got {schema.field('label').type}")


def pool_info(uri: str) -> PoolInfo:
    """Row count, largest id and whether labels exist, read from Parquet metadata and the id column only."""
    loc = resolve(uri)
    if not loc.exists():
        raise RayDM2Error(f"pool {uri!r} does not exist")
    ds = _dataset(loc)
    check_schema(ds.schema, uri)
    ids = ds.to_table(columns=["id"]).column("id")
    if ids.null_count:
        raise RayDM2Error(f"pool {uri!r} has {ids.null_count} rows without an id")
    distinct = pc.count_distinct(ids).as_py() if len(ids) else 0
    if distinct != len(ids):
        raise RayDM2Error(f"pool {uri!r} has duplicate ids ({len(ids) - distinct} rows repeat an id); ids must be "
                          "unique, since selections and labels refer to images by id")
    max_id = pc.max(ids).as_py() if len(ids) else None
    return PoolInfo(
        rows=len(ids),
        parts=len(_part_files(loc)),
        max_id=-1 if max_id is None else int(max_id),
        has_labels="label" in ds.schema.names,
    )


def read_columns(uri: str, columns: list[str], ids: np.ndarray | None = None) -> pa.Table:
    """Read some columns of a pool, optionally only the given ids (pushed down as a filter)."""
    loc = resolve(uri)
    ds = _dataset(loc)
    check_schema(ds.schema, uri)
    missing = [c for c in columns if c not in ds.schema.names]
    if missing:
        raise RayDM2Error(f"pool {uri!r} has no column(s) {missing}")
    flt = None if ids is None else pc.field("id").isin(pa.array(np.asarray(ids, dtype=np.int64)))
    return ds.to_table(columns=columns, filter=flt)


def image_bytes(uri: str) -> int:
    """Stored bytes of the pool's `image` column, from the Parquet footers (no image is read)."""
    loc = resolve(uri)
    total = 0
    for name in _part_files(loc):
        with loc.fs.open_input_file(loc.join(name).path) as f:
            meta = pq.read_metadata(f)
        column = meta.schema.names.index("image")
        total += sum(meta.row_group(g).column(column).total_compressed_size for g in range(meta.num_row_groups))
    return total


def part_uris(uri: str) -> list[str]:
    loc = resolve(uri)
    names = _part_files(loc)
    _check_parts(loc, [loc.join(n).path for n in names])
    return [loc.join(n).uri for n in names]


def append(
    uri: str,
    images: Iterable[bytes],
    labels: Iterable[int] | None = None,
    source: str | list[str] | None = None,
    ids: np.ndarray | None = None,
) -> np.ndarray:
    """Append encoded images to the pool at `uri` (created if absent); returns the ids they were given. `source`
    is one string for every row or one per row (an image folder records each file's path).

    Without `ids` the new rows continue after the pool's largest id. With explicit `ids`, they must be unique
    and absent from the pool. Nothing is written unless every check passes.
    """
    loc = resolve(uri)
    images = list(images)
    n = len(images)
    if n == 0:
        raise RayDM2Error("nothing to append: no images")
    label_arr = None
    if labels is not None:
        label_arr = np.asarray(list(labels), dtype=np.int64)
        if len(label_arr) != n:
            raise RayDM2Error(f"{n} images but {len(label_arr)} labels")
        if (label_arr < 0).any():
            raise RayDM2Error("labels must be non-negative class indices")
    existing = pool_info(uri) if loc.exists() and _part_files(loc) else None
    if ids is None:
        start = 0 if existing is None else existing.max_id + 1
        ids = np.arange(start, start + n, dtype=np.int64)
    else:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != n:
            raise RayDM2Error(f"{n} images but {len(ids)} ids")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise RayDM2Error(f"duplicate ids in the appended rows: {uniq[counts > 1][:10].tolist()}")
        if existing is not None:
            clash = read_columns(uri, ["id"], ids).column("id").to_numpy()
            if len(clash):
                raise RayDM2Error(f"ids already in pool {uri!r}: {np.sort(clash)[:10].tolist()}")
    sources = list(source) if isinstance(source, list) else [source] * n
    if len(sources) != n:
        raise RayDM2Error(f"{n} images but {len(sources)} sources")
    next_part = len(_part_files(loc)) if loc.exists() else 0
    loc.mkdir()
    for start in range(0, n, ROWS_PER_PART):
        stop = min(n, start + ROWS_PER_PART)
        table = pa.table(
            {
                "id": pa.array(ids[start:stop], pa.int64()),
                "image": pa.array(images[start:stop], pa.binary()),
                "label": pa.nulls(stop - start, pa.int64())
                if label_arr is None
                else pa.array(label_arr[start:stop], pa.int64()),
                "source": pa.array(sources[start:stop], pa.string()),
            },
            schema=POOL_SCHEMA,
        )
        _write_part(loc.join(f"{PART_PREFIX}{next_part:06d}.parquet"), table)
        next_part += 1
    return ids


def write_part(loc: Location, ids, images: list[bytes], labels, sources: list[str]) -> None:
    """One part file of rows whose ids the caller has checked (a distributed ingest's task writes one)."""
    _write_part(loc, pa.table({
        "id": pa.array(ids, pa.int64()), "image": pa.array(images, pa.binary()),
        "label": pa.nulls(len(ids), pa.int64()) if labels is None else pa.array(labels, pa.int64()),
        "source": pa.array(sources, pa.string())}, schema=POOL_SCHEMA))


def _write_part(loc: Location, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=ROW_GROUP_SIZE)
    loc.write_bytes(buf.getvalue())


def append_arrays(uri: str, pixels: np.ndarray, labels: np.ndarray | None, source: str | None) -> np.ndarray:
    """Append NxHxW or NxHxWxC uint8 arrays as PNG-encoded rows."""
    if pixels.dtype != np.uint8:
        raise RayDM2Error(f"image arrays must be uint8, got {pixels.dtype}")
    if pixels.ndim not in (3, 4):
        raise RayDM2Error(f"image arrays must be NxHxW or NxHxWxC, got shape {pixels.shape}")
    if labels is not None and len(labels) != len(pixels):
        raise RayDM2Error(f"{len(pixels)} images but {len(labels)} labels")
    from tqdm import tqdm

    encoded = tqdm((encode_png(p) for p in pixels), total=len(pixels), desc=f"encoding {source or 'images'}",
                   unit="img", disable=len(pixels) < 10_000)
    return append(uri, encoded, labels, source)


def iter_batches(uri: str, columns: list[str], batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
    """Stream a pool in batches (single process); used by the reference path and the floor benchmark."""
    yield from _dataset(resolve(uri)).to_batches(columns=columns, batch_size=batch_size)
