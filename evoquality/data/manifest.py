"""Image manifests: the one CSV format of the unlabeled pool and of IQA benchmarks.

A manifest is a CSV file with a header. `image` is required: a path relative to the manifest's
folder, an absolute path, or an s3:// / file:// URI. `mos` is optional (benchmarks only); any other
columns are kept as strings. The `image` column as written is the image's stable id in every table.
"""

from __future__ import annotations

import csv
import io
import math
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evoquality.storage import NotFound, Store, open_store, split_uri

IMAGE_COLUMN = "image"
MOS_COLUMN = "mos"


class ManifestError(ValueError):
    """A manifest is missing or malformed; the message names the file, row and field."""


@dataclass
class Manifest:
    uri: str
    images: list[str]  # resolved: absolute paths or URIs
    ids: list[str]  # the `image` column as written
    mos: np.ndarray | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)  # the other columns

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int]) -> Manifest:
        idx = [int(i) for i in indices]
        return Manifest(
            uri=self.uri,
            images=[self.images[i] for i in idx],
            ids=[self.ids[i] for i in idx],
            mos=None if self.mos is None else self.mos[idx],
            columns={name: [values[i] for i in idx] for name, values in self.columns.items()},
        )

    def rows(self) -> list[dict]:
        """The rows as written (ids, not resolved paths), e.g. for `write_manifest`."""
        out = []
        for i, image_id in enumerate(self.ids):
            row: dict = {IMAGE_COLUMN: image_id}
            if self.mos is not None:
                row[MOS_COLUMN] = float(self.mos[i])
            row.update({name: values[i] for name, values in self.columns.items()})
            out.append(row)
        return out


def join_location(base: str, relative: str) -> str:
    """`relative` under `base`, where base is a local folder or a URI; absolute inputs stay."""
    if "://" in relative or posixpath.isabs(relative):
        return relative
    if "://" in base:
        return f"{base.rstrip('/')}/{relative}"
    return str(Path(base, relative).absolute())


def _parse_mos(value: str, where: str) -> float:
    try:
        mos = float(value)
    except ValueError:
        raise ManifestError(f"{where}: mos {value!r} is not a number") from None
    if not math.isfinite(mos):
        raise ManifestError(f"{where}: mos {value!r} is not finite")
    return mos


def read_manifest(
    uri: str,
    max_images: int | None = None,
    store_factory: Callable[[str], Store] = open_store,
) -> Manifest:
    """Read a manifest from a local path, file:// or s3:// URI (the first `max_images` rows)."""
    parent, name = split_uri(uri)
    try:
        data = store_factory(parent).get_bytes(name)
    except NotFound:
        raise ManifestError(f"manifest {uri} does not exist") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest {uri} is not UTF-8 text: {err}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames
    if not header:
        raise ManifestError(f"manifest {uri} is empty (no header row)")
    if IMAGE_COLUMN not in header:
        raise ManifestError(f"manifest {uri} has no {IMAGE_COLUMN!r} column (columns: {header})")
    has_mos = MOS_COLUMN in header
    extra = [c for c in header if c not in (IMAGE_COLUMN, MOS_COLUMN)]
    ids: list[str] = []
    mos: list[float] = []
    columns: dict[str, list[str]] = {c: [] for c in extra}
    first_row: dict[str, int] = {}
    for row in reader:
        if max_images is not None and len(ids) >= max_images:
            break
        where = f"manifest {uri}, row {reader.line_num}"
        image_id = (row.get(IMAGE_COLUMN) or "").strip()
        if not image_id:
            raise ManifestError(f"{where}: empty {IMAGE_COLUMN!r}")
        if image_id in first_row:
            raise ManifestError(f"{where}: image {image_id!r} repeats row {first_row[image_id]}")
        first_row[image_id] = reader.line_num
        ids.append(image_id)
        if has_mos:
            mos.append(_parse_mos((row.get(MOS_COLUMN) or "").strip(), where))
        for c in extra:
            columns[c].append(row.get(c) or "")
    if not ids:
        raise ManifestError(f"manifest {uri} has no rows")
    return Manifest(
        uri=uri,
        images=[join_location(parent, i) for i in ids],
        ids=ids,
        mos=np.asarray(mos, dtype=np.float64) if has_mos else None,
        columns=columns,
    )


def write_manifest(
    path: str | Path, rows: list[dict], store_factory: Callable[[str], Store] = open_store
) -> None:
    """Write rows (each with an `image`) as a manifest, atomically; `image` and `mos` come first."""
    if not rows:
        raise ManifestError(f"refusing to write an empty manifest to {path}")
    header: list[str] = [IMAGE_COLUMN]
    for i, row in enumerate(rows):
        if not row.get(IMAGE_COLUMN):
            raise ManifestError(f"row {i} for {path} has no {IMAGE_COLUMN!r}")
        header.extend(k for k in row if k not in header)
    if MOS_COLUMN in header:
        header.insert(1, header.pop(header.index(MOS_COLUMN)))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    parent, name = split_uri(str(path))
    store_factory(parent).put_bytes(name, out.getvalue().encode())


def _column_index(header: list[str], column: int | str, meta_csv: Path) -> int:
    if isinstance(column, int):
        if not 0 <= column < len(header):
            raise ManifestError(f"{meta_csv} has {len(header)} columns, no column {column}")
        return column
    if column not in header:
        raise ManifestError(f"{meta_csv} has no column {column!r} (columns: {header})")
    return header.index(column)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def convert_pyiqa(
    meta_csv: Path,
    image_dir: str,
    out: Path,
    mos_column: int | str = 1,
    image_column: int | str = 0,
    has_header: bool | None = None,
) -> int:
    """Convert a pyiqa meta-info CSV (image name, MOS, extra columns) into a manifest.

    `image_dir` (a folder relative to `out`'s folder, an absolute folder or a URI) is joined to each
    image name. `has_header=None` detects a header: the first row's MOS cell is not a number.
    Extra columns are kept, under their header names (or `col<i>` without a header). Returns the
    number of rows written.
    """
    with open(meta_csv, newline="", encoding="utf-8-sig") as f:
        table = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    if not table:
        raise ManifestError(f"{meta_csv} is empty")
    width = len(table[0])
    generic = [f"col{i}" for i in range(width)]
    if has_header is None:
        first_mos = (
            table[0][_column_index(generic, mos_column, meta_csv)]
            if isinstance(mos_column, int)
            else None
        )
        has_header = first_mos is None or not _is_number(first_mos.strip())
    header = [h.strip() for h in table[0]] if has_header else generic
    body = table[1:] if has_header else table
    img_i = _column_index(header, image_column, meta_csv)
    mos_i = _column_index(header, mos_column, meta_csv)
    rows = []
    for n, cells in enumerate(body, start=2 if has_header else 1):
        if len(cells) != width:
            raise ManifestError(f"{meta_csv}, row {n}: {len(cells)} cells, expected {width}")
        row = {
            IMAGE_COLUMN: posixpath.join(image_dir, cells[img_i].strip()),
            MOS_COLUMN: _parse_mos(cells[mos_i].strip(), f"{meta_csv}, row {n}"),
        }
        row.update({header[i]: c for i, c in enumerate(cells) if i not in (img_i, mos_i)})
        rows.append(row)
    write_manifest(out, rows)
    return len(rows)
