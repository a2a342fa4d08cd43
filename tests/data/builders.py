"""Builders of tiny datasets in the exact published layouts and schemas (a few KB each).

Written from the formats' documentation (the ``refer`` API, LISA's loaders, the VisualCoT and
ViRL39K releases); each builder returns what a user would point seganswer at. Images are small
solid-colour files so masks can be checked against pycocotools exactly.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 40, 30  # every fixture image is 40 x 30


def write_image(path: Path, colour=(90, 120, 150), size=(W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def png_bytes(colour=(10, 200, 30), size=(W, H)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# RefCOCO-style polygons: ann 1 a rectangle, ann 2 a triangle (two polygons for ann 3)
POLY_A = [[2.0, 2.0, 20.0, 2.0, 20.0, 12.0, 2.0, 12.0]]
POLY_B = [[25.0, 5.0, 38.0, 5.0, 31.0, 25.0]]
POLY_C = [[1.0, 20.0, 8.0, 20.0, 8.0, 28.0], [10.0, 20.0, 16.0, 20.0, 16.0, 28.0, 10.0, 28.0]]


def make_refer_root(root: Path, *, refs_override=None, annotations_override=None) -> Path:
    """LISA's ``refer_seg`` root with refcoco (unc) and refclef (unc, RLE masks)."""
    images = root / "images" / "mscoco" / "images" / "train2014"
    write_image(images / "COCO_train2014_000000000001.jpg")
    write_image(images / "COCO_train2014_000000000002.jpg")
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": H, "width": W},
        ],
        "annotations": annotations_override or [
            {"id": 101, "image_id": 1, "category_id": 1, "segmentation": POLY_A, "area": 180.0,
             "bbox": [2, 2, 18, 10], "iscrowd": 0},
            {"id": 102, "image_id": 1, "category_id": 2, "segmentation": POLY_B, "area": 130.0,
             "bbox": [25, 5, 13, 20], "iscrowd": 0},
            {"id": 103, "image_id": 2, "category_id": 1, "segmentation": POLY_C, "area": 80.0,
             "bbox": [1, 20, 15, 8], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 2, "name": "dog", "supercategory": "animal"}],
    }
    refs = refs_override or [
        {"ref_id": 0, "ann_id": 101, "image_id": 1, "category_id": 1, "split": "train", "sent_ids": [0, 1],
         "file_name": "COCO_train2014_000000000001_101.jpg",
         "sentences": [{"sent_id": 0, "sent": "man on the left", "raw": "Man on the left", "tokens": ["man"]},
                       {"sent_id": 1, "sent": "person in blue", "raw": "person in blue", "tokens": ["person"]}]},
        {"ref_id": 1, "ann_id": 102, "image_id": 1, "category_id": 2, "split": "testA", "sent_ids": [2],
         "file_name": "COCO_train2014_000000000001_102.jpg",
         "sentences": [{"sent_id": 2, "sent": "dog", "raw": "dog", "tokens": ["dog"]}]},
        {"ref_id": 2, "ann_id": 103, "image_id": 2, "category_id": 1, "split": "val", "sent_ids": [3],
         "file_name": "COCO_train2014_000000000002_103.jpg",
         "sentences": [{"sent_id": 3, "sent": "two boxes bottom left", "raw": "two boxes", "tokens": ["two"]}]},
    ]
    folder = root / "refcoco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(instances))
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the published files are Python 2 pickles
    return root


def refclef_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def add_refclef(root: Path) -> np.ndarray:
    """RefClef folder (RLE segmentation, list of RLE dicts) under the same root; returns the GT mask."""
    write_image(root / "images" / "saiapr_tc-12" / "25" / "images" / "25220.jpg")
    mask = np.zeros((H, W), dtype=bool)
    mask[5:15, 10:30] = True
    instances = {
        "images": [{"id": 25220, "file_name": "25/images/25220.jpg", "height": H, "width": W}],
        "annotations": [{"id": 7, "image_id": 25220, "category_id": 3, "segmentation": [refclef_rle(mask)],
                         "area": int(mask.sum()), "bbox": [10, 5, 20, 10], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "sky", "supercategory": "sky"}],
    }
    refs = [{"ref_id": 9, "ann_id": 7, "image_id": 25220, "category_id": 3, "split": "train", "sent_ids": [5],
             "sentences": [{"sent_id": 5, "sent": "sky", "raw": "sky", "tokens": ["sky"]}]}]
    folder = root / "refclef"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(instances))
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return mask


def make_refcoco_parquet(folder: Path, rows: list[dict] | None = None) -> Path:
    """The parquet variant: data/val-00000-of-00001.parquet with embedded images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = rows or [
        {"question_id": "q1", "image": {"bytes": png_bytes(), "path": "COCO_1.jpg"},
         "question": "Please carefully observe the area and describe it.",
         "answer": ["man on the left", "person in blue"], "segmentation": POLY_A[0],
         "bbox": [2.0, 2.0, 18.0, 10.0], "iscrowd": 0, "file_name": "COCO_1.jpg"},
    ]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "val-00000-of-00001.parquet")
    return folder


def make_reasonseg(root: Path, *, shapes=None, text=None) -> Path:
    """ReasonSeg/{train,val}/<name>.jpg + labelme JSON."""
    base = root / "ReasonSeg"
    for split, name in (("train", "img_a"), ("val", "img_b")):
        write_image(base / split / f"{name}.jpg")
        record = {
            "text": text if text is not None else ["the thing you sit on", "where to sit"],
            "is_sentence": split == "train",
            "shapes": shapes if shapes is not None else [
                {"label": "target", "points": [[2, 2], [30, 2], [30, 26], [2, 26]], "shape_type": "polygon"},
                {"label": "ignore", "points": [[10, 10], [20, 10], [20, 20], [10, 20]], "shape_type": "polygon"},
                {"label": "flag", "points": [[0, 0], [1, 0], [1, 1]], "shape_type": "polygon"},
            ],
            "imagePath": f"{name}.jpg", "imageHeight": H, "imageWidth": W,
        }
        (base / split / f"{name}.json").write_text(json.dumps(record))
    return base


def make_ade20k(root: Path) -> tuple[Path, np.ndarray]:
    """ADEChallengeData2016 with one training image; returns the folder and its label map."""
    base = root / "ADEChallengeData2016"
    write_image(base / "images" / "training" / "ADE_train_00000001.jpg")
    label = np.zeros((H, W), dtype=np.uint8)
    label[:10] = 3   # sky
    label[10:, :20] = 1  # wall
    (base / "annotations" / "training").mkdir(parents=True)
    Image.fromarray(label, mode="L").save(base / "annotations" / "training" / "ADE_train_00000001.png")
    (base / "objectInfo150.txt").write_text(
        "Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n2\t0.1072\t6046\t612\tbuilding, edifice\n"
        "3\t0.0878\t8265\t796\tsky\n")
    return base, label


def make_coco_parts(root: Path) -> Path:
    """A PACO/PASCAL-Part style COCO JSON (object:part names) with images next to it."""
    write_image(root / "images" / "p1.jpg")
    coco = {
        "images": [{"id": 5, "file_name": "p1.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 10, "segmentation": POLY_A, "bbox": [2, 2, 18, 10],
             "area": 180, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 10, "segmentation": POLY_B, "bbox": [25, 5, 13, 20],
             "area": 130, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 11, "segmentation": POLY_C, "bbox": [1, 20, 15, 8],
             "area": 80, "iscrowd": 0},
        ],
        "categories": [{"id": 10, "name": "car_(automobile):wheel"}, {"id": 11, "name": "dog:leg"}],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "paco_lvis_v1_train.json").write_text(json.dumps(coco))
    return root


VISCOT_RECORDS = [
    {"question": "Is the car over the cat?", "answer": "No", "image": "000000068878.jpg", "width": W,
     "height": H, "bboxs": [[3.5, 4.0, 20.25, 18.0]], "dataset": "vsr", "split": "train"},
    {"question": "What is under the teddy bear?", "answer": "couch", "image": "000000528832.jpg", "width": W,
     "height": H, "bboxs": [[0.0, 0.9, 41.0, 29.5]], "dataset": "vsr", "split": "train"},
]


def make_visualcot(root: Path, records=None) -> Path:
    """VisualCoT metadata JSONL + the cot/<dataset>/ image tree."""
    for record in records or VISCOT_RECORDS:
        if isinstance(record, dict):
            write_image(root / "cot" / record["dataset"] / record["image"])
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in (records or VISCOT_RECORDS)]
    (root / "metadata" / "vsr_cot_train.jsonl").write_text("\n".join(lines) + "\n")
    return root


def make_visualcot_llava(root: Path) -> Path:
    """The LLaVA-format viscot_363k.json."""
    write_image(root / "cot" / "gqa" / "2370799.jpg")
    records = [{
        "dataset": "gqa", "split": "train", "question_id": 0,
        "image": ["cot/gqa/2370799.jpg", "cot/gqa/2370799.jpg###[5, 6, 20, 22]"],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the bus? Please provide the bounding box coordinate "
                                       "of the region that can help you answer the question better."},
            {"from": "gpt", "value": "[0.125, 0.2, 0.5, 0.733]"},
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": "red"},
        ],
    }]
    (root / "viscot_363k.json").write_text(json.dumps(records))
    return root


def make_virl39k(root: Path, *, embedded: bool = False) -> Path:
    """ViRL39K: 39Krelease.parquet + images/ (or the re-upload with images embedded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    if embedded:
        rows = [{"problem": "<image>What is x?", "answer": "\\boxed{17^\\circ}", "category": "math", "qid": "a1",
                 "images": [{"bytes": png_bytes(), "path": "a1.png"}], "id": 0}]
        (root / "data").mkdir()
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / "train-00000-of-00001.parquet")
        return root
    write_image(root / "images" / "q1.png")
    write_image(root / "images" / "q2a.png")
    write_image(root / "images" / "q2b.png")
    rows = [
        {"question": "<image>Find the area of the triangle.", "answer": "The area is \\boxed{\\frac{1}{2}}.",
         "image": ["images/q1.png"], "category": "(GradeSchool) Geometric", "source": "MMK12", "qid": "q1",
         "PassRate_32BTrained": 0.5, "PassRate_7BTrained": 0.25},
        {"question": "<image><image>Which is larger? A. left B. right", "answer": "\\boxed{B}",
         "image": ["images/q2a.png", "images/q2b.png"], "category": "Spatial", "source": "new", "qid": "q2",
         "PassRate_32BTrained": 1.0, "PassRate_7BTrained": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "39Krelease.parquet")
    return root
