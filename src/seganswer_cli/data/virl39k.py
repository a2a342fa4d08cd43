"""ViRL39K (VL-Rethinker): verifiable question-answer pairs for vision-language RL.

The release is a folder holding ``39Krelease.parquet`` and the ``images/`` it names. Columns:
``question`` (with ``<image>`` placeholders), ``answer`` (in ``\\boxed{...}``), ``image`` (a list
of image paths relative to the folder), ``category``, ``source``, ``qid`` and the pass rates
``PassRate_32BTrained`` / ``PassRate_7BTrained``. Re-uploads with the images embedded
(``problem``/``images`` with ``{bytes, path}`` cells) and JSON/JSONL exports with the same keys
are read too.

The sample's ``answer`` is the content of the last ``\\boxed{}`` (the exact verifiable answer);
the raw answer stays in ``extra["raw_answer"]``. ``<image>`` placeholders are removed from the
question (the prompt builder places the images).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from seganswer_cli.data.onerror import RecordErrors
from seganswer_cli.data.refcoco import embedded_image, iter_parquet_rows, parquet_columns
from seganswer_cli.data.samples import ImageRef, VQASample
from seganswer_cli.errors import DataError, read_json

_PASS_RATE_KEYS = ("PassRate_32BTrained", "PassRate_7BTrained")


def boxed_content(answer: str) -> str:
    """The content of the last ``\\boxed{...}`` (braces balanced), or the answer itself when there is none.

    >>> boxed_content(r"The area is \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    start = answer.rfind("\\boxed{")
    if start < 0:
        return answer.strip()
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(answer)):
        if answer[i] == "{":
            depth += 1
        elif answer[i] == "}":
            if depth == 0:
                return answer[begin:i].strip()
            depth -= 1
    raise ValueError(f"unbalanced braces in \\boxed answer {answer!r}")


def data_files(path: Path) -> list[Path]:
    """The release's data files: ``*.parquet`` (also under ``data/``), else ``*.jsonl``/``*.json``."""
    path = Path(path)
    if path.is_file():
        return [path]
    for folder in (path, path / "data"):
        if folder.is_dir():
            files = sorted(folder.glob("*.parquet"))
            if files:
                return files
    files = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.json"))
    if files:
        return files
    raise DataError(f"ViRL39K data not found: expected *.parquet (e.g. 39Krelease.parquet) or *.jsonl in {path}")


def looks_like_virl39k(path: Path) -> bool:
    """True when the first data file has ViRL39K's question/answer/image and pass-rate or qid columns."""
    try:
        file = data_files(path)[0]
    except DataError:
        return False
    if file.suffix == ".parquet":
        try:
            columns = set(parquet_columns(file))
        except DataError:
            return False
    elif file.suffix in (".json", ".jsonl"):
        with open(file, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
        columns = {k for k in ("qid", "question", "answer", "image", *_PASS_RATE_KEYS) if f'"{k}"' in head}
    else:
        return False
    has_text = bool({"question", "problem"} & columns) and "answer" in columns
    return has_text and bool({"qid", *_PASS_RATE_KEYS} & columns) and bool({"image", "images"} & columns)


def read_virl39k(path: Path, *, errors: RecordErrors | None = None) -> Iterator[VQASample]:
    """Yield one ``VQASample`` (``answer_type="math"``) per question."""
    errors = errors or RecordErrors()
    path = Path(path)
    root = path.parent if path.is_file() else path
    for file in data_files(path):
        for label, row in _rows(file, errors):
            sample = errors.attempt(file, label, lambda row=row, label=label, file=file:
                                    _row_to_sample(row, label, root, file))
            if sample is not None:
                yield sample


def _rows(file: Path, errors: RecordErrors) -> Iterator[tuple[str, dict]]:
    if file.suffix == ".parquet":
        for index, row in enumerate(iter_parquet_rows(file)):
            yield f"{index} (qid {row.get('qid', '?')})", row
        return
    if file.suffix == ".jsonl":
        with open(file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    row = errors.attempt(file, f"line {line_no}", lambda line=line: _json_object(line))
                    if row is not None:
                        yield f"line {line_no}", row
        return
    rows = read_json(file)
    if not isinstance(rows, list):
        raise DataError(f"{file}: expected a JSON list of records")
    for index, row in enumerate(rows):
        yield str(index), row


def _json_object(line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    return row


def _image_refs(cells, root: Path, label: str) -> list[ImageRef]:
    if cells is None:
        raise ValueError("record names no image")
    if isinstance(cells, str | dict | bytes):
        cells = [cells]
    refs = []
    for i, cell in enumerate(cells):
        if isinstance(cell, str):
            image_path = root / cell
            if not image_path.is_file():
                raise DataError(f"image not found: {image_path}")
            refs.append(ImageRef(path=image_path, name=cell))
        elif isinstance(cell, dict) and not cell.get("bytes") and cell.get("path"):
            refs.extend(_image_refs([cell["path"]], root, label))
        else:
            refs.append(embedded_image(cell, f"{label}-{i}"))
    if not refs:
        raise ValueError("record names no image")
    return refs


def _row_to_sample(row: dict, label: str, root: Path, file: Path) -> VQASample:
    question = row.get("question", row.get("problem"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError("missing question")
    raw_answer = row["answer"]
    if not isinstance(raw_answer, str) or not raw_answer.strip():
        raise ValueError("missing answer")
    answer = boxed_content(raw_answer)
    images = _image_refs(row.get("image", row.get("images")), root, str(row.get("qid", label)))
    qid = row.get("qid") or row.get("id") or label
    extra = {"raw_answer": raw_answer, "category": row.get("category"), "origin": row.get("source"),
             "raw_question": question}
    extra.update({k: row[k] for k in _PASS_RATE_KEYS if k in row})
    return VQASample(
        id=f"virl39k:{qid}", image=images[0], question=question.replace("<image>", "").strip(), answer=answer,
        source="virl39k", answer_type="math", extra_images=images[1:], extra=extra,
    )
