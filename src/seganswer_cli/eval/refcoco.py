"""RefCOCO, RefCOCO+ (Kazemzadeh et al., 2014) and RefCOCOg (Mao et al., 2016): referring segmentation.

Data (``--data``): LISA's ``refer_seg`` root, or one dataset's own folder inside it::

    refer_seg/
      refcoco/   refs(unc).p  instances.json       splits val, testA, testB (and train)
      refcoco+/  refs(unc).p  instances.json       splits val, testA, testB
      refcocog/  refs(umd).p  refs(google).p  instances.json
                                                   umd splits val, test (also spelt val-u, test-u);
                                                   google split val (spelt val-g)
      images/mscoco/images/train2014/COCO_train2014_000000581857.jpg ...

``refs(*).p`` is the REFER toolkit's pickle: a list of refs ``{ref_id, ann_id, image_id, split,
sentences: [{sent_id, sent, raw, tokens}], ...}``; ``instances.json`` is COCO-style (``images``,
``annotations`` with polygon or RLE ``segmentation``). Pickles can run code when loaded: point this
only at files from the dataset's published archives.

One item per referring sentence (as LISA evaluates): prompt "Can you segment the <sentence> in this
image?" (LISA's template), target the referred annotation's mask. Metrics: cIoU, gIoU (segmentation.py).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.items import BenchmarkData, EvalItem, MissingImage, find_file
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import read_text
from seganswer_cli.eval.segmentation import score_mask, summarize_masks
from seganswer_cli.masks import segmentation_to_rle

DATASETS = ("refcoco", "refcoco+", "refcocog")
#: (dataset, --split spelling) -> (refs file partition, split name inside the pickle)
SPLITS: dict[tuple[str, str], tuple[str, str]] = {
    **{(d, s): ("unc", s) for d in ("refcoco", "refcoco+") for s in ("train", "val", "testA", "testB")},
    **{("refcocog", s): ("umd", s) for s in ("train", "val", "test")},
    ("refcocog", "val-u"): ("umd", "val"),
    ("refcocog", "test-u"): ("umd", "test"),
    ("refcocog", "val-g"): ("google", "val"),
}
DEFAULT_SPLIT = "val"

PROTOCOL = Protocol(
    prompt="LISA's template: 'Can you segment the <sentence> in this image?', one item per sentence",
    extraction="the predicted mask of the <|seg|> token",
    metrics="cIoU (summed intersection over summed union) and gIoU",
    source="dvlab-research/LISA: train_ds.py (validate), utils/utils.py",
)
PROMPT = "Can you segment the {expression} in this image?"

score = score_mask
summarize = summarize_masks


def read(
    root: Path, split: str | None = None, *, dataset: str = "refcoco", images_dir: Path | None = None
) -> BenchmarkData:
    """One item per sentence of ``dataset``'s ``split``; images looked up under the COCO train2014 tree."""
    split = split or DEFAULT_SPLIT
    if dataset not in DATASETS:
        raise UsageError(f"unknown referring dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if (dataset, split) not in SPLITS:
        known = ", ".join(s for d, s in SPLITS if d == dataset)
        raise UsageError(f"{dataset}: unknown split {split!r}; choose from {known}")
    partition, split_name = SPLITS[(dataset, split)]
    folder = _dataset_folder(Path(root), dataset, f"refs({partition}).p")
    refs = _load_refs(folder / f"refs({partition}).p")
    instances_path = folder / "instances.json"
    if not instances_path.is_file():
        raise DataError(f"{dataset}: expected instances.json next to refs({partition}).p in {folder}")
    try:
        instances = json.loads(read_text(instances_path))
    except json.JSONDecodeError as e:
        raise DataError(f"{instances_path}: not valid JSON: {e}") from None
    images = {img["id"]: img for img in instances.get("images", [])}
    annotations = {ann["id"]: ann for ann in instances.get("annotations", [])}
    image_folders = [Path(images_dir)] if images_dir else []
    for base in (Path(root), folder.parent, folder):
        image_folders += [
            base / "images/mscoco/images/train2014",
            base / "images/train2014",
            base / "train2014",
        ]

    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    found: dict[str, Path | None] = {}
    for ref in refs:
        if ref.get("split") != split_name:
            continue
        ann = annotations.get(ref.get("ann_id"))
        image_info = images.get(ref.get("image_id"))
        if ann is None or image_info is None:
            raise DataError(
                f"{instances_path}: ref {ref.get('ref_id')} points at annotation {ref.get('ann_id')} "
                f"/ image {ref.get('image_id')}, not in the file"
            )
        name = image_info["file_name"]
        if name not in found:
            found[name] = find_file(name, image_folders)
        try:
            rle = segmentation_to_rle(
                ann["segmentation"], int(image_info["height"]), int(image_info["width"])
            )
        except ValueError as e:
            raise DataError(f"{instances_path}: annotation {ann['id']}: {e}") from None
        for sentence in ref.get("sentences", []):
            item_id = f"{ref['ref_id']}_{sentence.get('sent_id', len(items))}"
            if found[name] is None:
                missing.append(MissingImage(item_id, name, tuple(str(f) for f in image_folders)))
                continue
            expression = str(sentence.get("sent") or sentence.get("raw", "")).strip()
            items.append(
                EvalItem(
                    id=item_id,
                    benchmark=dataset,
                    image=found[name],
                    question=expression,
                    prompt=PROMPT.format(expression=expression),
                    answer="",
                    answer_kind="mask",
                    groups={"ref_id": str(ref["ref_id"]), "image_id": str(ref["image_id"])},
                    gt_rle=rle,
                )
            )
    return BenchmarkData(items, missing, source=str(folder / f"refs({partition}).p"))


def _dataset_folder(root: Path, dataset: str, refs_name: str) -> Path:
    """``root/dataset`` (root is ``refer_seg``), ``root`` itself (root is the dataset folder), or a
    sibling (root is another dataset's folder), or one level deeper (``refer_seg`` inside ``root``)."""
    candidates = [root / dataset, root / "refer_seg" / dataset, root.parent / dataset]
    if root.name == dataset:
        candidates.insert(0, root)
    for candidate in candidates:
        if (candidate / refs_name).is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"{dataset}: expected {refs_name} and instances.json; looked in {looked}")


def _load_refs(path: Path) -> list[dict]:
    """The REFER pickle (written by Python 2: ASCII strings by default, Latin-1 as a fallback)."""
    for encoding in ("ASCII", "latin1"):
        try:
            with path.open("rb") as handle:
                refs = pickle.load(handle, encoding=encoding)
            break
        except UnicodeDecodeError:
            continue
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
            raise DataError(f"{path}: not a REFER refs pickle: {e}") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{path}: expected a list of ref dicts")
    return refs
