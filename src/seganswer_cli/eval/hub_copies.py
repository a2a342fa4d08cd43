"""Parquet copies of the benchmarks, as downloaded from the dataset hub: find their files, read their rows.

lmms-eval's copies (``lmms-lab/POPE``, ``lmms-lab/HallusionBench``, ``lmms-lab/MMBench``...) and the
parquet files some benchmarks publish next to their TSV (``DreamMr/HR-Bench``) hold the same records
as the native files, one row each, with the image inside the row. A benchmark module states what its
copy looks like once (a ``HubCopy``: the repository, its file patterns, the columns it needs) and turns
the rows into the same ``EvalItem`` its native reader makes.

Where the files are looked for, from ``--data``: the folder itself, one level deeper or shallower
(``reading.candidate_folders``), and under each of those the hub cache's ``snapshots/<revision>/``
(the revision ``refs/main`` names first, then the newest), so both of these work::

    huggingface-cli download lmms-lab/POPE --repo-type dataset --local-dir POPE   ->  --data POPE
    ~/.cache/huggingface/hub/datasets--lmms-lab--POPE/snapshots/<hash>/data/test-00000-of-00001.parquet
                                                                       ->  --data .../datasets--lmms-lab--POPE

A copy's file patterns are tried in order (the first that matches anywhere wins), so a copy with two
layouts (POPE's ``data/test-*`` and ``Full/<setting>-*``) is read once, never twice. All shards a
pattern matches are read, in name order.

Adding a copy to a benchmark (V*'s ``lmms-lab/vstar-bench``, say) is a ``HubCopy`` constant and two
lines in its ``read``: ``found = locate_or_copy(root, native_names, COPY, NAME)``; when ``found`` is not
a ``Path``, ``read_copy(found, COPY)`` gives the rows to hand to the module's own item constructor.

Reading: the text columns go through ``datasets`` (``Dataset.from_parquet`` of those columns only,
``keep_in_memory`` with its cache in a temporary folder that is removed afterwards, so nothing is
written under the user's home and nothing is fetched over the network). The image column is never
read then: each row gets a ``LazyImage`` that fetches its cell from the parquet row group when the item's
image is loaded (a ``datasets`` ``Image`` struct ``{"bytes", "path"}``, raw bytes, or base64 text).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seganswer_cli.errors import DataError
from seganswer_cli.eval.items import LazyImage
from seganswer_cli.eval.reading import candidate_folders, decode_base64_image, locate


@dataclass(frozen=True)
class HubCopy:
    """What one benchmark's parquet copy looks like."""

    repo: str
    """Where it is published (``lmms-lab/POPE``), named in error messages."""
    files: tuple[str, ...]
    """Glob patterns relative to the copy's root, most specific first (``data/test-*.parquet``)."""
    columns: tuple[str, ...]
    """Columns every row needs, matched ignoring case; rows are keyed by these spellings."""
    image: str | None = "image"
    """The column fetched lazily (``LazyImage``); ``None`` when the copy has no image column."""


def snapshot_roots(root: Path) -> list[Path]:
    """The folders a copy may start from: ``candidate_folders(root)`` and, under each, the hub cache's
    ``snapshots/<revision>`` folders (``refs/main``'s first, then newest first)."""
    roots: list[Path] = []
    for folder in candidate_folders(root):
        roots.append(folder)
        snapshots = folder / "snapshots"
        if snapshots.is_dir():
            revisions = sorted(
                (p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
            )
            main = folder / "refs" / "main"
            if main.is_file():
                named = snapshots / main.read_text().strip()
                revisions = [named, *(r for r in revisions if r != named)] if named.is_dir() else revisions
            roots += revisions
    return list(dict.fromkeys(roots))


def find_copy(root: Path, patterns: Iterable[str]) -> list[Path]:
    """The parquet files of the first of ``patterns`` that matches under ``snapshot_roots(root)``, in
    name order (all shards); ``[root]`` when ``root`` is a parquet file; ``[]`` when none matches."""
    root = Path(root)
    if root.is_file():
        return [root] if root.suffix == ".parquet" else []
    if not root.exists():
        return []
    roots = snapshot_roots(root)
    for pattern in patterns:
        for folder in roots:
            hits = sorted(p for p in folder.glob(pattern) if p.suffix == ".parquet" and p.is_file())
            if hits:
                return hits
    return []


def locate_or_copy(root: Path, names: Iterable[str], copy: HubCopy, benchmark: str) -> Path | list[Path]:
    """The native file (``reading.locate``), else the files of the parquet copy; when neither is there,
    one ``DataError`` naming both."""
    try:
        return locate(root, names, benchmark)
    except DataError as native:
        files = find_copy(root, copy.files)
        if not files:
            raise DataError(f"{native}; nor {copy.repo}'s parquet copy ({', '.join(copy.files)})") from None
        return files


def read_copy(files: Sequence[Path], copy: HubCopy) -> list[dict[str, Any]]:
    """The rows of ``files`` as dicts: every column, ``copy.columns`` under their own spelling, the
    image column (if any) as a ``LazyImage`` (a short text cell, a reference to another row's image,
    kept as text). Wrong columns, an unreadable file or no rows: ``DataError``."""
    files = [Path(f) for f in files]
    names = _columns(files, copy)
    rename = {found: wanted for wanted in copy.columns for found in names if found.lower() == wanted.lower()}
    image = next((n for n in names if copy.image and n.lower() == copy.image.lower()), None)
    text_columns = [n for n in names if n != image]
    places = [(f, number, *place) for f in files for number, place in enumerate(_row_places(f))]
    if not places:
        raise DataError(f"{', '.join(str(f) for f in files)}: no rows")
    rows = [{rename.get(k, k): v for k, v in row.items()} for row in _text_rows(files, text_columns)]
    if len(places) != len(rows):
        raise DataError(f"{files[0].parent}: read {len(rows)} rows but the files hold {len(places)}")
    if image is not None:
        short = {(f, number): cell for f in files for number, cell in _short_text_cells(f, image).items()}
        for row, (path, number, group, position) in zip(rows, places):
            if (path, number) in short:
                row[copy.image] = short[path, number]
                continue
            row[copy.image] = LazyImage(
                fetch=functools.partial(_parquet_image, str(path), group, position, image),
                label=f"{path.name} row group {group} row {position}",
            )
    return rows


def _columns(files: list[Path], copy: HubCopy) -> list[str]:
    """The columns of the first file, checked against ``copy.columns`` (and every shard against it)."""
    import pyarrow.parquet as pq

    first: list[str] | None = None
    for path in files:
        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises its own error types for empty or corrupt files
            raise DataError(f"{path}: not a readable parquet file: {_one_line(e)}") from None
        if first is None:
            first = names
            found = {n.lower() for n in names}
            wanted = [*copy.columns, *([copy.image] if copy.image else [])]
            if any(c.lower() not in found for c in wanted):
                raise DataError(
                    f"{path}: not {copy.repo}'s parquet copy: expected columns {', '.join(wanted)}; "
                    f"found {', '.join(names) or 'none'}"
                )
        elif names != first:
            raise DataError(f"{path}: columns {', '.join(names)} differ from {files[0].name}'s {', '.join(first)}")
    return first or []


def _text_rows(files: list[Path], columns: list[str]) -> list[dict[str, Any]]:
    """``columns`` of every row of ``files``, through ``datasets``, offline, without a cache left behind."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one "Generating train split" bar per read is noise in eval's output
    try:
        with tempfile.TemporaryDirectory(prefix="seganswer-parquet-") as cache:
            table = datasets.Dataset.from_parquet(
                [str(f) for f in files], columns=columns, keep_in_memory=True, cache_dir=cache
            )
            return table.to_list()
    except Exception as e:  # datasets/pyarrow errors on files pyarrow could open: mismatched shards...
        raise DataError(f"{files[0].parent}: cannot read the parquet rows: {_one_line(e)}") from None
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _row_places(path: Path) -> list[tuple[int, int]]:
    """(row group, position in it) of each row of ``path``, in file order."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    return [(g, p) for g in range(metadata.num_row_groups) for p in range(metadata.row_group(g).num_rows)]


def _short_text_cells(path: Path, column: str) -> dict[int, str]:
    """Row number -> cell, for the cells of at most 64 characters of a text image column (VLMEvalKit's
    exports store a repeated image once and the ``index`` of that row elsewhere; blank cells too), so
    that ``reading.resolve_image_references`` sees them as it does in a TSV. ``datasets`` ``Image``
    columns (structs) never hold such cells and are not scanned; a text column is, in small batches."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    kind = parquet.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return {}
    short: dict[int, str] = {}
    start = 0
    for batch in parquet.iter_batches(batch_size=64, columns=[column]):
        cells = batch.column(0)
        lengths = pc.fill_null(pc.binary_length(cells), 0).to_pylist()
        for offset, length in enumerate(lengths):
            if length <= 64:
                short[start + offset] = cells[offset].as_py() or ""
        start += len(cells)
    return short


@functools.lru_cache(maxsize=1)
def _parquet_column(path: str, group: int, column: str) -> list[Any]:
    """One row group's image column; cached so items read in order decode each group once."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(0).to_pylist()


def _parquet_image(path: str, group: int, position: int, column: str) -> bytes:
    value = _parquet_column(path, group, column)[position]
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, str):
        return decode_base64_image(value, f"{Path(path).name} row group {group} row {position}")
    if not isinstance(value, bytes):
        raise DataError(f"{path}: row group {group} row {position} has no image bytes in column {column!r}")
    return value


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
