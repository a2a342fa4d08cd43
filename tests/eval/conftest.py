"""Tiny benchmark folders in each benchmark's published layout, written into ``tmp_path``.

Schemas follow the benchmarks' own files (dataset cards, official eval code); values are made up and
images are 8x8 solid colours, so every folder is a few KB. Each builder returns the folder a user would
pass as ``--data``.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def image_bytes(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 8), fmt: str = "PNG"
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(
    path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 8)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(color, size, "JPEG" if path.suffix == ".jpg" else "PNG"))
    return path


def write_jsonl(path: Path, records: list[dict], newline: str = "\n", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = newline.join(json.dumps(r) for r in records) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.fixture
def vstar_annotations_dir(tmp_path: Path) -> Path:
    """The layout the official vstar_bench_eval.py reads: per-image annotations, right option first."""
    root = tmp_path / "vstar_bench"
    for subset, n, choices in (("direct_attributes", 6, ["red", "blue", "green", "white"]),
                               ("relative_position", 4, ["left", "right"])):
        for index in range(n):
            annotation = {"target_object": ["cup"], "bbox": [[1, 1, 3, 3]],
                          "question": f"Question {index} of {subset}?", "options": choices}
            # pretty-printed, as the published annotations are
            (root / subset).mkdir(parents=True, exist_ok=True)
            (root / subset / f"sa_{index}.json").write_text(json.dumps(annotation, indent=4))
            write_image(root / subset / f"sa_{index}.jpg")
    return root


@pytest.fixture
def vstar_dir(tmp_path: Path) -> Path:
    root = tmp_path / "vstar_bench"
    records = [
        {
            "image": "direct_attributes/sa_1.jpg",
            "text": "What is the color of the cup?\n(A) red\n(B) blue\n(C) green\n(D) white\n"
            "Answer with the option's letter from the given choices directly.",
            "category": "direct_attributes",
            "question_id": 0,
            "label": "B",
        },
        {
            "image": "relative_position/sa_2.jpg",
            "text": "Is the dog on the left or right side of the car?\n(A) left\n(B) right\n"
            "Answer with the option's letter from the given choices directly.",
            "category": "relative_position",
            "question_id": 1,
            "label": "A",
        },
    ]
    # written on Windows: BOM and CRLF
    write_jsonl(root / "test_questions.jsonl", records, newline="\r\n", bom=True)
    write_image(root / "direct_attributes" / "sa_1.jpg")
    write_image(root / "relative_position" / "sa_2.jpg")
    return root


def tsv_cell(value: str) -> str:
    """Quote a cell the way pandas' ``to_csv(sep="\\t")`` does when it holds a tab, newline or quote."""
    if any(ch in value for ch in '\t\n"'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(tsv_cell(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def b64_image(color: tuple[int, int, int]) -> str:
    # 64x64 so the base64 is longer than the 64-character "reference to another row" cut-off
    return base64.b64encode(image_bytes(color, (64, 64))).decode("ascii")


@pytest.fixture
def hrbench_dir(tmp_path: Path) -> Path:
    root = tmp_path / "HR-Bench"
    header = ["index", "question", "answer", "category", "A", "B", "C", "D", "image", "cycle_category"]
    red, green = b64_image((255, 0, 0)), b64_image((0, 255, 0))
    rows = [
        # a question spanning two lines (quoted), as real HR-Bench OCR questions do
        ["0", "What is written\non the sign?", "A", "single", "STOP", "GO", "EXIT", "OPEN", red, "0"],
        ["1", "Which car is closer?", "C", "cross", "red", "blue", "green", "none", green, "0"],
        ["2", "What is written\non the sign?", "D", "single", "GO", "EXIT", "OPEN", "STOP", "0", "1"],
    ]
    write_tsv(root / "hr_bench_4k.tsv", header, rows)
    return root


@pytest.fixture
def mmbench_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mmbench"
    header = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    ]
    rows = [
        [
            "0",
            "What is the main object?",
            "nan",
            "cat",
            "dog",
            "cow",
            "nan",
            "B",
            "object_localization",
            b64_image((10, 20, 30)),
            "src",
            "finegrained_perception (instance-level)",
            "nan",
            "dev",
        ],
        # image stored once: row 1 refers to row 0's image by index
        [
            "1",
            "Which season is it?",
            "Look at the trees.",
            "summer",
            "winter",
            "nan",
            "nan",
            "A",
            "image_scene",
            "0",
            "src",
            "coarse_perception",
            "nan",
            "dev",
        ],
    ]
    write_tsv(root / "MMBench_DEV_EN.tsv", header, rows)
    return root


@pytest.fixture
def pope_dir(tmp_path: Path) -> Path:
    root = tmp_path / "pope"
    for setting, label in (("random", "yes"), ("popular", "no"), ("adversarial", "no")):
        write_jsonl(
            root / f"coco_pope_{setting}.json",
            [
                {
                    "question_id": 1,
                    "image": "COCO_val2014_000000000001.jpg",
                    "text": "Is there a dog in the image?",
                    "label": label,
                },
                {
                    "question_id": 2,
                    "image": "COCO_val2014_000000000002.jpg",
                    "text": "Is there a cat in the image?",
                    "label": "yes",
                },
            ],
        )
    write_image(root / "val2014" / "COCO_val2014_000000000001.jpg")
    write_image(root / "val2014" / "COCO_val2014_000000000002.jpg")
    return root


def hallusion_record(category, subcategory, set_id, figure_id, question_id, gt, visual="1"):
    filename = (
        None if visual == "0" else f"./hallusion_bench/{category}/{subcategory}/{set_id}_{figure_id}.png"
    )
    return {
        "category": category,
        "subcategory": subcategory,
        "visual_input": visual,
        "set_id": str(set_id),
        "figure_id": str(figure_id),
        "sample_note": "note",
        "question_id": str(question_id),
        "question": f"Question {question_id} about set {set_id}?",
        "gt_answer_details": "details",
        "gt_answer": gt,
        "filename": filename,
    }


@pytest.fixture
def hallusion_dir(tmp_path: Path) -> Path:
    root = tmp_path / "HallusionBench"
    records = [
        hallusion_record("VD", "illusion", 0, 0, 0, "1"),
        hallusion_record("VD", "illusion", 0, 0, 1, "0"),
        hallusion_record("VD", "illusion", 0, 1, 0, "0"),
        hallusion_record("VD", "illusion", 0, 1, 1, "1"),
        hallusion_record("VS", "chart", 1, 0, 0, "1", visual="0"),
        hallusion_record("VS", "chart", 1, 1, 0, "0", visual="2"),
    ]
    root.mkdir(parents=True)
    (root / "HallusionBench.json").write_text(json.dumps(records), encoding="utf-8")
    # the official layout without the ./hallusion_bench prefix: found through the fallback path
    write_image(root / "VD" / "illusion" / "0_0.png")
    write_image(root / "hallusion_bench" / "VD" / "illusion" / "0_1.png")
    write_image(root / "hallusion_bench" / "VS" / "chart" / "1_1.png")
    return root


@pytest.fixture
def mmvp_dir(tmp_path: Path) -> Path:
    root = tmp_path / "MMVP"
    root.mkdir()
    (root / "Questions.csv").write_text(
        "Index,Question,Options,Correct Answer\n"
        "1,Are the butterfly's wings closer to being open or closed?,(a) Open (b) Closed,(a)\n"
        "2,Are the butterfly's wings closer to being open or closed?,(a) Open (b) Closed,(b)\n"
        '3,"Is the dog facing left, or right?",(a) Left (b) Right,(b)\n'
        '4,"Is the dog facing left, or right?",(a) Left (b) Right,(a)\n',
        encoding="utf-8",
    )
    for index in range(1, 5):
        write_image(root / "MMVP Images" / f"{index}.jpg")
    return root


@pytest.fixture
def visulogic_dir(tmp_path: Path) -> Path:
    root = tmp_path / "VisuLogic"
    write_jsonl(
        root / "data.jsonl",
        [
            {
                "id": "00000",
                "image_path": "images/00000.png",
                "question": "Which option completes the sequence?\nA: A\nB: B\nC: C\nD: D",
                "label": "C",
                "tag": "Quantitative Reasoning",
            },
            {
                "id": "00001",
                "image_path": "images/00001.png",
                "question": "Choose the most appropriate option to fill the question mark.",
                "label": "A",
                "tag": "Spatial Reasoning",
            },
        ],
    )
    write_image(root / "images" / "00000.png")
    write_image(root / "images" / "00001.png")
    return root


@pytest.fixture
def refer_seg_dir(tmp_path: Path) -> Path:
    """``refer_seg`` with refcoco (unc) and refcocog (umd), one 10x12 COCO image, polygon and RLE masks."""
    from pycocotools import mask as coco_mask

    root = tmp_path / "refer_seg"
    write_image(root / "images/mscoco/images/train2014/COCO_train2014_000000000009.jpg", size=(12, 10))
    crowd = np.zeros((10, 12), dtype=np.uint8)
    crowd[6:9, 1:4] = 1
    crowd_rle = coco_mask.encode(np.asfortranarray(crowd))
    instances = {
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 10, "width": 12}],
        "annotations": [
            {
                "id": 101,
                "image_id": 9,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [2, 1, 4, 3],
                "area": 12,
                "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]],
            },
            {
                "id": 102,
                "image_id": 9,
                "category_id": 2,
                "iscrowd": 1,
                "bbox": [1, 6, 3, 3],
                "area": 9,
                "segmentation": {"size": [10, 12], "counts": crowd_rle["counts"].decode("ascii")},
            },
        ],
        "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "plate"}],
    }
    refs = [
        {
            "ref_id": 0,
            "ann_id": 101,
            "image_id": 9,
            "split": "val",
            "category_id": 1,
            "file_name": "COCO_train2014_000000000009_101.jpg",
            "sent_ids": [0, 1],
            "sentences": [
                {"sent_id": 0, "sent": "left cup", "raw": "Left cup.", "tokens": ["left", "cup"]},
                {"sent_id": 1, "sent": "the cup", "raw": "the cup", "tokens": ["the", "cup"]},
            ],
        },
        {
            "ref_id": 1,
            "ann_id": 102,
            "image_id": 9,
            "split": "testA",
            "category_id": 2,
            "file_name": "COCO_train2014_000000000009_102.jpg",
            "sent_ids": [2],
            "sentences": [{"sent_id": 2, "sent": "plate", "raw": "plate", "tokens": ["plate"]}],
        },
    ]
    for dataset, partition in (("refcoco", "unc"), ("refcocog", "umd")):
        folder = root / dataset
        folder.mkdir(parents=True)
        (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
        with (folder / f"refs({partition}).p").open("wb") as handle:
            pickle.dump(
                refs if dataset == "refcoco" else [dict(r, split="test") for r in refs], handle, protocol=2
            )
    return root


@pytest.fixture
def reasonseg_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ReasonSeg"
    write_image(root / "val" / "scene.jpg", size=(10, 8))
    annotation = {
        "text": ["the thing you would sit on", "the chair"],
        "is_sentence": True,
        "shapes": [
            {"label": "target", "points": [[1, 1], [7, 1], [7, 6], [1, 6]], "shape_type": "polygon"},
            # a smaller ignore region inside the target: painted after it, so it wins there
            {"label": "ignore", "points": [[2, 2], [4, 2], [4, 4], [2, 4]], "shape_type": "polygon"},
            {"label": "flag", "points": [[0, 0], [1, 0], [1, 1]], "shape_type": "polygon"},
        ],
        "imageHeight": 8,
        "imageWidth": 10,
    }
    (root / "val" / "scene.json").write_text(json.dumps(annotation), encoding="utf-8")
    # a record without its image: reported as missing
    (root / "val" / "lost.json").write_text(json.dumps({**annotation, "text": ["x"]}), encoding="utf-8")
    return root
