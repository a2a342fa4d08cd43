"""Every readable format by name, format detection, and ``open_dataset`` (the one entry point)::

    from seganswer_cli.data import open_dataset
    ds = open_dataset("data/refer_seg", "refcocog", split="train")
    for sample in ds: ...                                 # SegSample / VQASample
    print(ds.errors.summary())                            # records skipped with on_error="skip"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seganswer_cli.data import ade20k, coco_classes, reasonseg, refcoco, seganswer_format, virl39k, visualcot
from seganswer_cli.data.onerror import OnError, RecordErrors
from seganswer_cli.data.samples import SegSample, VQASample
from seganswer_cli.errors import DataError, UsageError


@dataclass(frozen=True)
class Format:
    """One readable format."""

    name: str
    """Name used by ``--format`` and ``--data NAME=PATH``."""
    kind: str
    """``seg`` (yields ``SegSample``) or ``vqa`` (yields ``VQASample``); ``mixed`` for seganswer folders."""
    description: str
    """One line for ``seganswer data inspect --help`` and the docs: what the user points at."""
    read: Callable[..., Iterator[SegSample | VQASample]]
    """``read(path, *, images, split, errors)`` -> samples."""


def _refer(dataset: str, split_by: str | None = None):
    def read(path, *, images=None, split=None, errors=None):
        return refcoco.read_refer(path, dataset=dataset, split_by=split_by, split=split, images=images,
                                  errors=errors)
    return read


def _coco(source: str | None):
    def read(path, *, images=None, split=None, errors=None):
        return coco_classes.read_coco_classes(path, images=images, source=source, errors=errors)
    return read


def _no_images(reader, **fixed):
    def read(path, *, images=None, split=None, errors=None):
        if images is not None:
            raise UsageError("this format does not take --images (its images sit in the dataset folder)")
        kwargs = dict(fixed, errors=errors)
        if split is not None:
            kwargs["split"] = split
        return reader(path, **kwargs)
    return read


def _refcoco_parquet(path, *, images=None, split=None, errors=None):
    if images is not None:
        raise UsageError("parquet variants embed their images; --images does not apply")
    return refcoco.read_refcoco_parquet(path, split=split, errors=errors)


def _visualcot(path, *, images=None, split=None, errors=None):
    return visualcot.read_visualcot(path, images=images, split=split, errors=errors)


def _virl39k(path, *, images=None, split=None, errors=None):
    if split is not None:
        raise UsageError("ViRL39K has a single split; drop --split")
    return virl39k.read_virl39k(path if images is None else images, errors=errors)


def _seganswer(path, *, images=None, split=None, errors=None):
    if images is not None:
        raise UsageError("seganswer folders hold their images; --images does not apply")
    samples = seganswer_format.read_seganswer(path, errors=errors)
    return samples if split is None else (s for s in samples if s.split == split)


FORMATS: dict[str, Format] = {}


def _register(fmt: Format) -> None:
    FORMATS[fmt.name] = fmt


_register(Format("seganswer", "mixed", "a folder written by `seganswer data synth` (seganswer_data.json + "
                 "records.jsonl + images/)", _seganswer))
for _name, _default in refcoco.REFER_DATASETS.items():
    _register(Format(_name, "seg", f"{_name} in the refer layout: LISA's refer_seg root or its {_name}/ folder "
                     f"(refs({_default}).p + instances.json; images under images/...)", _refer(_name)))
    for _split_by in refcoco.SPLIT_BYS[_name]:
        if _split_by != _default:
            _register(Format(f"{_name}-{_split_by}", "seg", f"{_name} with the {_split_by} split "
                             f"(refs({_split_by}).p)", _refer(_name, _split_by)))
_register(Format("refcoco-parquet", "seg", "RefCOCO/+/g parquet variants with embedded images "
                 "(*.parquet or data/*.parquet; columns image, answer, segmentation)", _refcoco_parquet))
_register(Format("reasonseg", "seg", "ReasonSeg: the folder holding train/ val/ test/ (image + labelme JSON "
                 "with is_sentence)", _no_images(reasonseg.read_reasonseg)))
_register(Format("ade20k", "seg", "ADEChallengeData2016: images/, annotations/ and objectInfo150.txt, as "
                 "class-name referring", _no_images(ade20k.read_ade20k)))
_register(Format("coco", "seg", "a COCO-style instances/parts JSON (COCO-Stuff, PACO-LVIS, PASCAL-Part, LVIS) "
                 "as class-name referring; images next to it or --images", _coco(None)))
for _alias in ("cocostuff", "paco-lvis", "pascal-part", "lvis"):
    _register(Format(_alias, "seg", f"{_alias} as COCO-style class-name referring (same reader as coco)",
                     _coco(_alias)))
_register(Format("visualcot", "vqa", "VisualCoT: metadata/*.jsonl or viscot_363k.json with the cot/ image tree",
                 _visualcot))
_register(Format("virl39k", "vqa", "ViRL39K: the folder holding 39Krelease.parquet and images/", _virl39k))


def detect_format(path: Path) -> str:
    """The format name of what ``path`` holds; ``UsageError`` when it cannot be told (name it then)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"dataset path not found: {path}")
    if seganswer_format.looks_like_seganswer(path):
        return "seganswer"
    refer = refcoco.refer_datasets_at(path)
    if len(refer) > 1:
        raise UsageError(f"{path} holds several refer datasets ({', '.join(refer)}); pick one with --format")
    found = refer[0] if refer else refcoco.looks_like_refer(path)
    if found:
        return found
    if reasonseg.looks_like_reasonseg(path):
        return "reasonseg"
    if ade20k.looks_like_ade20k(path):
        return "ade20k"
    if visualcot.looks_like_visualcot(path):
        return "visualcot"
    if virl39k.looks_like_virl39k(path):
        return "virl39k"
    if _looks_like_refcoco_parquet(path):
        return "refcoco-parquet"
    if coco_classes.looks_like_coco(path):
        return "coco"
    raise UsageError(f"cannot tell the format of {path}; name it with --format ({', '.join(FORMATS)})")


def _looks_like_refcoco_parquet(path: Path) -> bool:
    try:
        columns = set(refcoco.parquet_columns(refcoco.parquet_files(path)[0]))
    except DataError:
        return False
    return {"image", "segmentation"} <= columns


@dataclass
class Dataset:
    """A dataset opened for reading: iterate it for samples (each pass re-reads the files lazily)."""

    path: Path
    """What the user pointed at."""
    format: str
    """The format name (detected or given)."""
    images: Path | None = None
    """Image folder override (``--images``), for the formats that look images up."""
    split: str | None = None
    """Only this published split, when given."""
    on_error: OnError = "stop"
    """``stop``: the first bad record raises ``DataError`` naming file and record; ``skip``: count and go on."""
    errors: RecordErrors = field(init=False)
    """Records skipped during the latest pass (``errors.summary()`` for the report)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"unknown data format {self.format!r}; known: {', '.join(FORMATS)}")
        self.errors = RecordErrors(self.on_error)

    @property
    def kind(self) -> str:
        """``seg``, ``vqa`` or ``mixed`` (seganswer folders: see the manifest's ``kind``)."""
        return FORMATS[self.format].kind

    def __iter__(self) -> Iterator[SegSample | VQASample]:
        self.errors = RecordErrors(self.on_error)
        return iter(FORMATS[self.format].read(self.path, images=self.images, split=self.split, errors=self.errors))

    def take(self, limit: int | None = None) -> list[SegSample | VQASample]:
        """The first ``limit`` samples (all when None) as a list."""
        out: list[Any] = []
        for sample in self:
            if limit is not None and len(out) >= limit:
                break
            out.append(sample)
        return out


def open_dataset(
    path: str | Path,
    format: str | None = None,
    *,
    images: str | Path | None = None,
    split: str | None = None,
    on_error: OnError = "stop",
) -> Dataset:
    """Open a dataset folder or file in a published format (detected when ``format`` is None)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"dataset path not found: {path}")
    name = format or detect_format(path)
    return Dataset(path=path, format=name, images=Path(images).expanduser() if images else None, split=split,
                   on_error=on_error)
