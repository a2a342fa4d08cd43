"""The shapes world as a benchmark source: generated from a held-out seed, or read from a synth folder.

Shared by ``shapes_vqa.py`` and ``shapes_refseg.py``. Without ``--data`` the samples are generated
on the fly from ``HELD_OUT_SEED`` and ``DEFAULT_CONFIG`` (the demo world the shipped ``shapes`` model
was trained on: 640 x 480 canvases with a 20-32 px target among 2-4 larger, similar shapes), so the
whole harness runs offline.
Sample ``i`` depends only on (seed, kind, i), and training folders made by ``seganswer data synth``
use other seeds (0 by default), so the benchmark never shows a training scene.

With ``--data DIR`` the samples come from a folder written by ``seganswer data synth --kind vqa``
(``shapes-vqa``) or ``--kind refseg`` (``shapes-refseg``): ``seganswer_data.json`` +
``records.jsonl`` + ``images/`` (docs/data.md). A record whose image file is missing is reported
as a ``MissingImage``, not dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from seganswer_cli.data.samples import SegSample, VQASample
from seganswer_cli.data.seganswer_format import MANIFEST, RECORDS, read_manifest, record_to_sample
from seganswer_cli.data.shapes_datasets import generate_samples
from seganswer_cli.data.shapes_scenes import WORLDS
from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.items import MissingImage
from seganswer_cli.eval.reading import locate

SPLITS = ("test",)
DEFAULT_SPLIT = "test"
#: Seed of the generated benchmark; ``seganswer data synth`` defaults to 0, so training never sees it.
HELD_OUT_SEED = 100_003
#: Samples generated per benchmark (V* has 191 questions).
DEFAULT_N = 200
#: The demo world (``data.shapes_scenes.WORLDS["demo"]``): 640x480 scenes whose 20-32 px target is about
#: one LLM token in the shapes model's global view and readable once zoomed, among shapes sharing its
#: colour or kind. The shipped ``shapes`` model is trained on this world from other seeds.
DEFAULT_CONFIG = WORLDS["demo"]


def read_samples(
    root: Path | None, split: str | None, *, name: str, kind: str, limit: int | None = None
) -> tuple[list[SegSample | VQASample], list[MissingImage], str]:
    """(samples, records with a missing image, source) of ``kind`` (``vqa``/``refseg``) for benchmark ``name``.

    ``limit`` generates only the first samples (the same ones a full generation starts with); a folder
    is always read whole, so its missing images are all counted.
    """
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise UsageError(f"{name}: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if root is None:
        c = DEFAULT_CONFIG
        source = (f"shapes world (generated): seed {HELD_OUT_SEED}, {DEFAULT_N} samples, "
                  f"{c.width}x{c.height}")
        n = DEFAULT_N if limit is None else min(limit, DEFAULT_N)
        return list(generate_samples(kind, n, c, seed=HELD_OUT_SEED)), [], source
    return _read_folder(Path(root), name=name, kind=kind)


def generation_settings() -> dict:
    """How the generated benchmark is made (recorded in ``summary.json``)."""
    return {"seed": HELD_OUT_SEED, "n": DEFAULT_N, "config": asdict(DEFAULT_CONFIG)}


def _read_folder(root: Path, *, name: str, kind: str) -> tuple[list, list[MissingImage], str]:
    manifest_path = locate(root, [MANIFEST], f"{name} (a folder written by `seganswer data synth --kind {kind}`)")
    folder = manifest_path.parent
    manifest = read_manifest(folder)
    if manifest.get("kind") != kind:
        raise DataError(f"{manifest_path}: kind is {manifest.get('kind')!r}; {name} needs a folder written "
                        f"by `seganswer data synth --kind {kind}`")
    records_path = folder / manifest.get("records", RECORDS)
    if not records_path.is_file():
        raise DataError(f"{name}: {records_path} not found (named by {manifest_path})")
    samples, missing = [], []
    for number, record in _records(records_path):
        image = record.get("image") if isinstance(record, dict) else None
        if isinstance(image, str) and not (folder / image).is_file():
            missing.append(MissingImage(str(record.get("id", number)), image, (str(folder),)))
            continue
        try:
            samples.append(record_to_sample(record, folder))
        except (ValueError, KeyError, TypeError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise DataError(f"{records_path}: line {number}: {detail} (expected a {kind} record, see docs/data.md)") from None
    return samples, missing, str(records_path)


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {number} is not JSON ({e}); expected one record per line") from None


def image_of(sample: SegSample | VQASample) -> Path | bytes:
    """The item image: the file of a folder sample, or the PNG bytes of a generated one."""
    return sample.image.path if sample.image.path is not None else sample.image.data
