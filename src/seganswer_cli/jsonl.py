"""JSONL results files: one JSON object per line, appended as work is done so a killed run resumes.

The one home of the rules every such file follows (eval ``predictions.jsonl``, ``infer --batch``
answers, training ``metrics.jsonl``, the Stage 2 mask cache):

- A line is complete when its ``\\n`` is there. A last line without one was cut by a kill: readers
  skip it (``read_records``; they never fail on it), writers cut it off the file before they append
  (``repair``, ``JsonlAppender``), so the next record starts on a fresh line and the work it held is
  done again.
- Blank lines (only whitespace) are skipped by readers and left in place by ``repair``; line numbers
  in errors count them, so they match an editor's.
- A complete line that is not JSON, or not a JSON object, or lacks a key the caller requires, is a
  ``DataError`` naming the file and the line: something other than a kill wrote it, and guessing
  would hide it.
- Lines are split on ``\\n`` only (not ``str.splitlines``, which also splits on U+2028 and friends,
  written raw with ``ensure_ascii=False``). Files are UTF-8.
- Each record is flushed as it is written (not fsynced): a killed process loses nothing it wrote; a
  power cut may lose the last records, which the rerun does again.

Typical use (a writer that resumes)::

    done = {r["id"] for r in read_records(path, require=("id",))}
    with JsonlAppender(path) as sink:
        for item in todo:
            if item.id not in done:
                sink.write({"id": item.id, ...})
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from seganswer_cli.errors import DataError


def read_records(path: Path, *, require: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The record of every complete line of ``path``, in file order (empty when there is no file).
    The file is not changed: a cut last line is skipped, so this is safe while a writer appends."""
    path = Path(path)
    if not path.is_file():
        return []
    return _parse(path, _complete_part(path.read_bytes()), require)


def repair(path: Path, *, require: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``read_records``, then truncate ``path`` back to its last complete line (a writer calls this
    before appending). A file with a broken complete line raises before anything is changed."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete = _complete_part(raw)
    records = _parse(path, complete, require)
    if len(complete) != len(raw):
        with path.open("r+b") as handle:
            handle.truncate(len(complete))
    return records


class JsonlAppender:
    """Appends records to a JSONL file, one line each, flushed per record.

    Entering cuts off a last line left by a kill (only the file's tail is read, so opening one per
    record stays cheap) and creates the file if needed; its folder must exist::

        with JsonlAppender(path) as sink:
            sink.write({"id": "q0", "answer": "red"})
    """

    def __init__(self, path: Path, *, sort_keys: bool = False) -> None:
        self.path = Path(path)
        self.sort_keys = sort_keys
        self._file = None

    def __enter__(self) -> JsonlAppender:
        _cut_partial_line(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(_line(record, self.sort_keys))
        self._file.flush()

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._file = None


def rewrite(path: Path, records: Iterable[dict[str, Any]], *, sort_keys: bool = False) -> None:
    """Replace ``path`` by ``records``, one line each, through a temporary file in the same folder and
    ``os.replace``: a kill leaves the old file or the new one, never half of either."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(_line(r, sort_keys) for r in records)
    os.replace(tmp, path)


def _line(record: dict[str, Any], sort_keys: bool) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=sort_keys) + "\n"


def _complete_part(raw: bytes) -> bytes:
    """``raw`` up to and with its last ``\\n`` (empty when it has none)."""
    return raw[: raw.rfind(b"\n") + 1]


def _parse(path: Path, complete: bytes, require: Sequence[str]) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: line {number} is not JSON ({e}); fix or remove the line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is not a JSON object; fix or remove the line")
        missing = [key for key in require if key not in record]
        if missing:
            raise DataError(f"{path}: line {number} has no {', '.join(map(repr, missing))}; fix or remove the line")
        records.append(record)
    return records


def _cut_partial_line(path: Path, block: int = 1 << 16) -> None:
    """Truncate ``path`` after its last ``\\n`` (to nothing when it has none), reading back from the
    end only as far as that newline."""
    if not path.is_file():
        return
    with path.open("r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            newline = handle.read(position - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        if keep != end:
            handle.truncate(keep)
