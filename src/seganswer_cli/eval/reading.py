"""File helpers shared by the benchmark readers: find the published file, read it whatever its encoding.

Benchmarks arrive unpacked one folder deeper or shallower than documented (``vstar_bench/vstar_bench/``,
or the user points at the file itself), saved on Windows (CRLF, BOM, UTF-16), or as multi-GB TSVs of
base64 images. These helpers absorb that so each benchmark file only states what it expects.
Parquet copies (hub downloads, HR-Bench's and MMBench's exports) are read by ``hub_copies.py``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from seganswer_cli.errors import DataError
from seganswer_cli.eval.items import LazyImage


def candidate_folders(root: Path) -> list[Path]:
    """``root``, its sub-folders (one level deeper) and its parent (one level shallower), in that order."""
    root = Path(root)
    folders = [root]
    if root.is_dir():
        folders += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    folders.append(root.parent)
    return folders


def locate(root: Path, names: Iterable[str], benchmark: str) -> Path:
    """The first of ``names`` (file names or glob patterns) found in ``candidate_folders(root)``.

    ``root`` may also be the file itself. Raises ``DataError`` naming the expected files and the
    folders looked in.
    """
    root = Path(root)
    names = list(names)
    if not root.exists():
        raise DataError(f"{benchmark}: data path does not exist: {root}")
    if root.is_file():
        if any(root.match(n) for n in names):
            return root
        raise DataError(f"{benchmark}: expected {' or '.join(names)}, got the file {root}")
    folders = candidate_folders(root)
    for name in names:
        for folder in folders:
            hits = sorted(folder.glob(name))
            if hits:
                return hits[0]
    looked = ", ".join(str(f) for f in folders)
    raise DataError(f"{benchmark}: expected {' or '.join(names)}; looked in {looked}")


def decode_text(raw: bytes) -> str:
    """Bytes to ``str``: UTF-8 (BOM stripped), UTF-16 when it has a BOM, else Windows-1252 then Latin-1."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_text(path: Path) -> str:
    """A whole text file, any of the encodings above, with ``\\r\\n`` and ``\\r`` turned into ``\\n``."""
    text = decode_text(Path(path).read_bytes())
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """Records from a JSON array file or a JSON-lines file (either is accepted for either name)."""
    text = read_text(path).strip()
    if not text:
        raise DataError(f"empty file: {path}")
    if text.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from None
    else:
        records = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON: {e}") from None
    if not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: expected JSON objects, one per record")
    return records


def read_csv_rows(path: Path, *, delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a small CSV/TSV with a header line, header names stripped of spaces and BOMs."""
    reader = csv.DictReader(io.StringIO(read_text(path)), delimiter=delimiter)
    if reader.fieldnames is None:
        raise DataError(f"{path}: no header line")
    reader.fieldnames = [name.strip() for name in reader.fieldnames]
    return [dict(row) for row in reader]


def require_columns(path: Path, columns: Iterable[str], required: Iterable[str]) -> None:
    missing = [c for c in required if c not in set(columns)]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}")


@contextlib.contextmanager
def _large_csv_fields() -> Iterator[None]:
    """Let ``csv`` read base64 image cells of several MB (its default cap is 128 KB); restore after."""
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _decoded_lines(handle: io.BufferedReader, offsets: list[int]) -> Iterator[str]:
    """Lines of a binary file decoded one by one; appends the byte offset after each line to ``offsets``."""
    for raw in handle:
        # running sum of line lengths: cheaper than handle.tell() per line
        offsets.append(offsets[-1] + len(raw))
        yield decode_text(raw)


def read_tsv_lazy(path: Path, lazy_columns: set[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of a (large) TSV; cells of ``lazy_columns`` become ``LazyImage`` fetchers.

    Each fetcher remembers the byte offset its row starts at and re-parses just that row when called,
    so a 5 GB HR-Bench TSV costs one row of memory while reading and one image while evaluating.
    ``csv`` pulls exactly the lines of one record per ``next()``, which is what makes the offsets right
    even when a quoted question spans several lines.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    with _large_csv_fields(), path.open("rb") as handle:
        offsets = [0]
        reader = csv.reader(_decoded_lines(handle, offsets), delimiter="\t")
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        while True:
            start = offsets[-1]
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(f"{path}: malformed TSV near byte {start}: {e}") from None
            if not any(v.strip() for v in values):
                continue
            row: dict[str, Any] = dict(zip(header, values, strict=False))
            for column in lazy_columns & row.keys():
                row[column] = _tsv_cell_fetcher(path, start, header.index(column), row[column])
            rows.append(row)
    return header, rows


def _tsv_cell_fetcher(path: Path, offset: int, column: int, value: str) -> Any:
    """Short cells (MMBench's "see row 17" image references, empty cells) are kept as they are."""
    if len(value) <= 64:
        return value
    label = f"{path.name} row at byte {offset}"

    def fetch() -> bytes:
        with _large_csv_fields(), path.open("rb") as handle:
            handle.seek(offset)
            values = next(csv.reader(_decoded_lines(handle, [offset]), delimiter="\t"))
        return decode_base64_image(values[column], label)

    return LazyImage(fetch=fetch, label=label)


def decode_base64_image(value: str, label: str) -> bytes:
    try:
        return base64.b64decode(value, validate=False)
    except (ValueError, TypeError) as e:
        raise DataError(f"{label}: image cell is not base64: {e}") from None


def is_blank(value: Any) -> bool:
    """True for missing table cells: ``None``, NaN, empty or whitespace strings, ``"nan"``."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def resolve_image_references(path: Path, rows: list[dict[str, Any]], column: str = "image") -> None:
    """VLMEvalKit TSVs store a repeated image once; other rows hold the ``index`` of that row instead of
    base64 (a cell of at most 64 characters). Replace those references by the referenced image, in place."""
    by_index = {str(row.get("index", "")).strip(): row for row in rows}
    for row in rows:
        value = row.get(column)
        if isinstance(value, str) and not is_blank(value):
            target = by_index.get(value.strip())
            if target is None or isinstance(target.get(column), str):
                raise DataError(
                    f"{path}: row index {row.get('index')} refers to image of index {value!r}, which has none"
                )
            row[column] = target[column]


class ZipImages:
    """Images inside a zip archive as distributed (VisuLogic's ``images.zip``), found by the path a
    record names, read only when an item's image is loaded.

    A record's ``images/00000.png`` matches the member ``images/00000.png``, or ``00000.png``, or any
    member whose path ends in it (``VisuLogic/images/00000.png``), as ``items.find_file`` does on disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{self.path}: not a readable zip archive: {e}") from None
        self._by_suffix: dict[str, str] = {}
        for name in names:
            parts = Path(name).parts
            for start in range(len(parts)):  # "a/images/1.png" is found as itself, "images/1.png", "1.png"
                self._by_suffix.setdefault("/".join(parts[start:]), name)

    def find(self, name: str) -> LazyImage | None:
        """The image the record's ``name`` points at, or ``None`` when the archive has no such member."""
        parts = Path(str(name).replace("\\", "/")).parts
        parts = parts[1:] if parts and parts[0] in (".", "/") else parts
        for start in range(len(parts)):
            member = self._by_suffix.get("/".join(parts[start:]))
            if member is not None:
                return LazyImage(fetch=functools.partial(_zip_member, str(self.path), member),
                                 label=f"{self.path.name}:{member}")
        return None


def _zip_member(path: str, member: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(member)
