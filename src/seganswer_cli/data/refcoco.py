"""RefCOCO, RefCOCO+, RefCOCOg and RefClef: the ``refer`` layout and the parquet variants.

**refer layout** (as distributed with the ``refer`` API and used by LISA's ``refer_seg`` root)::

    refer_seg/
      refcoco/   refs(unc).p  refs(google).p  instances.json
      refcoco+/  refs(unc).p  instances.json
      refcocog/  refs(umd).p  refs(google).p  instances.json
      refclef/   refs(unc).p  refs(berkeley).p  instances.json
      images/mscoco/images/train2014/COCO_train2014_*.jpg     (RefCOCO/+/g)
      images/saiapr_tc-12/...                                  (RefClef)

``refs(<split_by>).p`` is a pickled list of refs ``{ref_id, ann_id, image_id, category_id,
split, sentences: [{sent, sent_id, ...}], ...}``; ``instances.json`` is COCO style (``images``
with ``file_name``/``height``/``width``, ``annotations`` with ``segmentation`` as polygons, or
RLE for RefClef, ``categories``). One ``SegSample`` per sentence.

The user may point at the ``refer_seg`` root or the dataset's own folder (images are then found
at ``../images/...``); ``images=`` overrides where images are looked up.

**parquet variants** (one row per referred object, image embedded): columns ``image``
(``{bytes, path}``), ``answer`` (list of referring sentences), ``segmentation`` (one flat polygon
``[x0, y0, x1, y1, ...]``), ``bbox``, ``question_id``, ``file_name``; read from ``*.parquet`` or
``data/*.parquet``. One ``SegSample`` per sentence.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from seganswer_cli.data.locate import find_file, first_existing_dir
from seganswer_cli.data.onerror import RecordErrors
from seganswer_cli.data.samples import ImageRef, LazyMask, SegSample
from seganswer_cli.errors import DataError, read_json
from seganswer_cli.masks import check_polygons_inside, segmentation_to_rle

#: Dataset folder names and their default split (the one LISA and the paper train with).
REFER_DATASETS = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc"}
#: Split schemes published for each dataset.
SPLIT_BYS = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
    "refclef": ("unc", "berkeley"),
}


class _PlainUnpickler(pickle.Unpickler):
    """Loads only plain containers and scalars: a refs pickle never needs a class, so refuse any."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise pickle.UnpicklingError(f"refs pickle references {module}.{name}; only plain data is allowed")


def load_refs_pickle(path: Path) -> list[dict]:
    """The list of refs in a ``refs(<split_by>).p`` file (Python 2 pickles included)."""
    try:
        with open(path, "rb") as f:
            # latin1 decodes Python 2 ``str`` objects the way they were written
            refs = _PlainUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable refs pickle: {e}") from None
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def load_instances(path: Path) -> dict:
    """``instances.json`` checked for the three COCO lists the readers need."""
    instances = read_json(path)
    for key in ("images", "annotations"):
        if not isinstance(instances.get(key), list):
            raise DataError(f"{path}: missing the COCO list {key!r}")
    return instances


def _dataset_dir(path: Path, dataset: str, split_by: str) -> Path:
    """The folder holding ``refs(<split_by>).p`` for ``dataset``: ``path`` itself, ``path/dataset`` or nearby."""
    refs_name = f"refs({split_by}).p"
    refs_file = find_file(path, [f"{dataset}/{refs_name}", refs_name], f"{dataset} refs file")
    return refs_file.parent


def _image_dir(dataset_dir: Path, dataset: str, images: Path | None) -> Path:
    if images is not None:
        if not Path(images).is_dir():
            raise DataError(f"image folder not found: {images} (given with --images)")
        return Path(images)
    refer_root = dataset_dir.parent
    if dataset == "refclef":
        tails = ["images/saiapr_tc-12", "saiapr_tc-12"]
    else:
        tails = ["images/mscoco/images/train2014", "images/train2014", "train2014", "images/mscoco/train2014"]
    candidates = [base / tail for base in (refer_root, dataset_dir, refer_root.parent) for tail in tails]
    found = first_existing_dir(candidates)
    if found is None:
        raise DataError(
            f"{dataset} images not found: looked in {', '.join(str(c) for c in candidates[:6])}; "
            "pass --images DIR to say where they are"
        )
    return found


def read_refer(
    path: Path,
    *,
    dataset: str = "refcoco",
    split_by: str | None = None,
    split: str | None = None,
    images: Path | None = None,
    errors: RecordErrors | None = None,
) -> Iterator[SegSample]:
    """Yield one ``SegSample`` per sentence of ``dataset`` (refcoco, refcoco+, refcocog, refclef).

    ``split`` keeps one published split (``train``, ``val``, ``test``, ``testA``, ``testB``); ``test``
    also matches ``testA``/``testB``, as the ``refer`` API does.
    """
    if dataset not in REFER_DATASETS:
        raise DataError(f"unknown refer dataset {dataset!r}; expected one of {', '.join(REFER_DATASETS)}")
    split_by = split_by or REFER_DATASETS[dataset]
    if split_by not in SPLIT_BYS[dataset]:
        raise DataError(f"{dataset} has no {split_by!r} split; published: {', '.join(SPLIT_BYS[dataset])}")
    errors = errors or RecordErrors()
    dataset_dir = _dataset_dir(Path(path), dataset, split_by)
    refs_file = dataset_dir / f"refs({split_by}).p"
    instances_file = find_file(dataset_dir, ["instances.json"], f"{dataset} instances.json")
    image_dir = _image_dir(dataset_dir, dataset, images)

    refs = load_refs_pickle(refs_file)
    instances = load_instances(instances_file)
    anns = {ann["id"]: ann for ann in instances["annotations"] if isinstance(ann, dict) and "id" in ann}
    imgs = {img["id"]: img for img in instances["images"] if isinstance(img, dict) and "id" in img}
    source = dataset

    for index, ref in enumerate(refs):
        if split is not None and not _split_matches(ref.get("split"), split):
            continue
        ref_label = f"{index} (ref_id {ref.get('ref_id', '?')})" if isinstance(ref, dict) else str(index)
        built = errors.attempt(refs_file, ref_label, lambda ref=ref: _ref_to_samples(
            ref, anns, imgs, image_dir, source, split_by, instances_file))
        if built:
            yield from built


def _split_matches(ref_split: str | None, wanted: str) -> bool:
    if ref_split is None:
        return False
    if wanted == "test":
        return "test" in ref_split
    if wanted in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and wanted[-1] in ref_split[4:]
    return ref_split == wanted


def _ref_to_samples(ref: dict, anns: dict, imgs: dict, image_dir: Path, source: str, split_by: str,
                    instances_file: Path) -> list[SegSample]:
    ann = anns.get(ref["ann_id"])
    if ann is None:
        raise DataError(f"ann_id {ref['ann_id']} is not in {instances_file}")
    img = imgs.get(ref["image_id"])
    if img is None:
        raise DataError(f"image_id {ref['image_id']} is not in {instances_file}")
    height, width = int(img["height"]), int(img["width"])
    image_path = image_dir / img["file_name"]
    if not image_path.is_file():
        raise DataError(f"image not found: {image_path}")
    mask = _annotation_mask(ann["segmentation"], height, width)
    sentences = ref["sentences"]
    if not sentences:
        raise ValueError("ref has no sentences")
    image = ImageRef(path=image_path, name=img["file_name"])
    samples = []
    for sent in sentences:
        text = (sent.get("sent") or sent.get("raw") or "").strip()
        if not text:
            raise ValueError(f"sentence {sent.get('sent_id', '?')} is empty")
        samples.append(SegSample(
            id=f"{source}({split_by}):{ref['ref_id']}:{sent.get('sent_id', len(samples))}",
            image=image,
            expression=text,
            mask=mask,
            source=source,
            split=ref.get("split"),
            extra={"ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "image_id": ref["image_id"],
                   "category_id": ref.get("category_id"), "split_by": split_by},
        ))
    return samples


def _annotation_mask(segmentation, height: int, width: int) -> LazyMask:
    """Polygons stay polygons (decoded on use, after a bounds check now); RLE is normalised now."""
    if isinstance(segmentation, list) and segmentation and isinstance(segmentation[0], list):
        check_polygons_inside(segmentation, height, width)
        return LazyMask.from_polygons(segmentation, height, width)
    return LazyMask.from_rle(segmentation_to_rle(segmentation, height, width))


# ---------------------------------------------------------------------------------------------
# parquet variants


def parquet_files(path: Path) -> list[Path]:
    """``*.parquet`` files of a dataset folder (or ``data/*.parquet``), or the file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    for folder in (path, path / "data"):
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if files:
            return files
    raise DataError(f"no parquet files found: expected {path}/*.parquet or {path}/data/*.parquet")


def parquet_columns(file: Path) -> list[str]:
    """Column names of a parquet file, from its footer (no data read)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(file).names)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for non-parquet files
        raise DataError(f"{file}: not a readable parquet file: {e}") from None


def iter_parquet_rows(file: Path, columns: list[str] | None = None, batch_size: int = 256) -> Iterator[dict]:
    """Rows of a parquet file as plain dicts, a batch at a time (images stay encoded bytes)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()
    except OSError as e:
        raise DataError(f"{file}: cannot read parquet: {e}") from None


def embedded_image(value, label: str) -> ImageRef:
    """An ``ImageRef`` from a parquet image cell (``{"bytes": ..., "path": ...}`` or raw bytes)."""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path") or label
    else:
        data, name = value, label
    if not isinstance(data, bytes | bytearray) or not data:
        raise ValueError("image cell has no embedded bytes")
    return ImageRef(data=bytes(data), name=str(name))


def embedded_image_size(image: ImageRef) -> tuple[int, int]:
    """(H, W) of embedded image bytes, read from the header only."""
    try:
        with Image.open(io.BytesIO(image.data)) as img:
            width, height = img.size
    except Exception as e:  # PIL raises several types for bad headers
        raise ValueError(f"embedded image {image.name} cannot be decoded: {e}") from None
    return height, width


def read_refcoco_parquet(
    path: Path, *, source: str = "refcoco", split: str | None = None, errors: RecordErrors | None = None
) -> Iterator[SegSample]:
    """Yield one ``SegSample`` per sentence of the parquet variant (images embedded)."""
    errors = errors or RecordErrors()
    for file in parquet_files(Path(path)):
        file_split = file.name.split("-")[0] if "-" in file.name else None
        if split is not None and file_split not in (None, split):
            continue
        for index, row in enumerate(iter_parquet_rows(file)):
            built = errors.attempt(file, f"{index} (question_id {row.get('question_id', '?')})",
                                   lambda row=row, index=index, file=file, file_split=file_split:
                                   _parquet_row_to_samples(row, index, file, source, file_split))
            if built:
                yield from built


def _parquet_row_to_samples(row: dict, index: int, file: Path, source: str, split: str | None) -> list[SegSample]:
    name = row.get("file_name") or f"{file.stem}-{index}"
    image = embedded_image(row["image"], str(name))
    height, width = embedded_image_size(image)
    segmentation = row["segmentation"]
    if segmentation and not isinstance(segmentation[0], list | tuple):
        segmentation = [segmentation]  # one flat polygon, as published
    mask = _annotation_mask([list(map(float, p)) for p in segmentation], height, width)
    sentences = row.get("answer")
    if sentences is None:
        sentences = row.get("sentences") or row.get("expression")
    if isinstance(sentences, str):
        sentences = [sentences]
    if not sentences:
        raise ValueError("row has no referring sentence ('answer')")
    row_id = row.get("question_id") or f"{file.stem}-{index}"
    return [
        SegSample(
            id=f"{source}:{row_id}:{i}", image=image, expression=str(text).strip(), mask=mask,
            source=source, split=split, extra={"bbox": row.get("bbox"), "file_name": row.get("file_name")},
        )
        for i, text in enumerate(sentences)
    ]


def looks_like_refer(path: Path) -> str | None:
    """The refer dataset name found at ``path`` (root or dataset folder), or None."""
    path = Path(path)
    if not path.is_dir():
        return None
    for dataset in REFER_DATASETS:
        if any((path / dataset / f"refs({s}).p").is_file() for s in SPLIT_BYS[dataset]):
            return dataset
    if (path / "instances.json").is_file() and list(path.glob("refs(*).p")):
        name = path.name.lower()
        return name if name in REFER_DATASETS else "refcoco"
    return None


def refer_datasets_at(path: Path) -> list[str]:
    """Every refer dataset present under a ``refer_seg`` root."""
    path = Path(path)
    return [d for d in REFER_DATASETS if any((path / d / f"refs({s}).p").is_file() for s in SPLIT_BYS[d])]

