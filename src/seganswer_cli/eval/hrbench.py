"""HR-Bench 4K and 8K (Wang et al., 2025): multiple choice on 4K / 8K images, two tasks.

Data (``--data``): the folder holding the published TSV (``DreamMr/HR-Bench``), or its parquet export::

    HR-Bench/
      hr_bench_4k.tsv    columns: index, question, answer, category, A, B, C, D, image (base64), cycle_category
      hr_bench_8k.tsv

Parquet copy (when the TSV is absent): ``DreamMr/HR-Bench``'s ``hr_bench_4k.parquet`` /
``hr_bench_8k.parquet`` (or ``hrbench_4k-*.parquet`` shards), the same columns, read by ``hub_copies.py``.

``category`` is ``single`` (FSP, fine-grained single-instance perception) or ``cross`` (FCP,
fine-grained cross-instance perception). Each question appears once per ``cycle_category``, with its
options cyclically shifted. Images are decoded lazily, one row at a time (the 8K TSV is several GB).

Prompt: VLMEvalKit's (``Question:``, ``Options:``, ``A. ...``, "Please select the correct answer from the
options above."). Score: the extracted letter equals ``answer`` (the official harness asks an LLM judge
whether the reply matches; we match rule-based, see answers.py). Metrics, as the benchmark's own
``evaluate``: within each cycle, accuracy on FSP, FCP and all; then each averaged over the cycles.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.hub_copies import HubCopy, locate_or_copy, read_copy
from seganswer_cli.eval.items import BenchmarkData, EvalItem, SampleResult
from seganswer_cli.eval.metrics import accuracy, hrbench_metrics
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import is_blank, read_tsv_lazy, require_columns, resolve_image_references
from seganswer_cli.model.conversation import vlmevalkit_prompt

RESOLUTIONS = ("4k", "8k")
SPLITS = ("test",)
DEFAULT_SPLIT = "test"

PROTOCOL = Protocol(
    prompt="VLMEvalKit's multiple-choice layout (Question:, Options:, A. ..., the selection instruction)",
    extraction="the option letter (letter, answer phrase, then option text; answers.py)",
    metrics="FSP, FCP and overall accuracy within each option cycle, averaged over cycles",
    source="DreamMr/HR-Bench: eval (VLMEvalKit's multiple-choice evaluation)",
    judge="fallback",
)

#: Columns the TSV and the parquet copy both need (besides ``image``).
COLUMNS = ("index", "question", "answer", "category", "A", "B")

score = score_sample


def hub_copy(resolution: str) -> HubCopy:
    """HR-Bench's own parquet export of one resolution."""
    patterns = (f"hr_bench_{resolution}*.parquet", f"hrbench_{resolution}*.parquet", f"*{resolution}*.parquet")
    return HubCopy("DreamMr/HR-Bench", patterns, COLUMNS)


def read(root: Path, split: str | None = None, *, resolution: str = "4k") -> BenchmarkData:
    """Items of HR-Bench ``resolution`` (``4k`` or ``8k``) from the folder holding its TSV/parquet."""
    if resolution not in RESOLUTIONS:
        raise UsageError(f"hrbench: resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    if (split or DEFAULT_SPLIT) not in SPLITS:
        raise UsageError(f"hrbench-{resolution}: HR-Bench has one split, 'test'; got {split!r}")
    name = f"hrbench-{resolution}"
    found = locate_or_copy(root, [f"hr_bench_{resolution}.tsv"], hub_copy(resolution), name)
    if isinstance(found, Path):
        path = found
        header, rows = read_tsv_lazy(path, {"image"})
        require_columns(path, header, [*COLUMNS, "image"])
    else:
        path, rows = found[0], read_copy(found, hub_copy(resolution))
    resolve_image_references(path, rows)
    items: list[EvalItem] = []
    for number, row in enumerate(rows, start=1):
        options = {
            k: str(row[k]).strip() for k in string.ascii_uppercase if k in row and not is_blank(row[k])
        }
        answer = str(row["answer"]).strip().upper()
        if answer not in options:
            raise DataError(
                f"{path}: row {number} answer {answer!r} is not one of its options {sorted(options)}"
            )
        if is_blank(row["image"]) or isinstance(row["image"], str):
            raise DataError(f"{path}: row {number} (index {row['index']}) has no base64 image")
        items.append(
            EvalItem(
                id=str(row["index"]).strip(),
                benchmark=name,
                image=row["image"],
                question=str(row["question"]).strip(),
                prompt=vlmevalkit_prompt(str(row["question"]).strip(), options),
                answer=answer,
                options=options,
                groups={
                    "category": str(row["category"]).strip(),
                    "cycle": str(row.get("cycle_category", "0")),
                },
            )
        )
    return BenchmarkData(items, [], source=str(path))


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """FSP, FCP and overall accuracy averaged over option cycles, plus the plain per-row accuracy."""
    summary = hrbench_metrics(
        (r.groups.get("category", ""), r.groups.get("cycle", "0"), r.correct) for r in results
    )
    plain = accuracy([r.correct for r in results])
    summary.update(row_accuracy=plain.value, row_accuracy_ci_low=plain.low, row_accuracy_ci_high=plain.high)
    summary["n"] = float(len(results))
    return summary
