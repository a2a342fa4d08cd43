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


# --- parquet copies as the dataset hub serves them (lmms-eval's copies, HR-Bench's export) -------------
# Each ``*_copy_files`` returns {path inside the copy: columns}, holding the same records as the native
# fixture above; ``place_copy`` lays them out as a ``--local-dir`` download or as the hub cache does.


def png_cell(color: tuple[int, int, int]) -> dict:
    return {"bytes": image_bytes(color), "path": None}


def write_parquet(path: Path, columns: dict[str, list], image: str | None = "image") -> Path:
    """A parquet file as ``datasets`` writes one: ``image`` holding ``{"bytes", "path"}`` cells is an
    ``Image`` feature (the schema metadata says so); other columns are typed from their values."""
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict(columns)
    if image in columns and isinstance(next(iter(columns[image]), None), dict):
        table = table.cast_column(image, datasets.Image())
    table.to_parquet(str(path))
    return path


def place_copy(root: Path, repo: str, files: dict[str, dict[str, list]], layout: str) -> Path:
    """Write ``files`` as ``huggingface-cli download REPO --local-dir`` does (``layout="local-dir"``) or
    as the hub cache does (``"hub-cache"``: ``datasets--org--name/snapshots/<hash>/`` holding symlinks to
    ``blobs/``, ``refs/main`` naming the hash). Returns the folder to pass as ``--data``."""
    org, name = repo.split("/")
    if layout == "local-dir":
        for relative, columns in files.items():
            write_parquet(root / name / relative, columns)
        return root / name
    cache = root / "hub" / f"datasets--{org}--{name}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    for number, (relative, columns) in enumerate(files.items()):
        blob = write_parquet(cache / "blobs" / f"blob{number}", columns)
        link = cache / "snapshots" / revision / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(revision)
    return cache


def pope_copy_files() -> dict[str, dict[str, list]]:
    """lmms-lab/POPE's default config: one test split, the setting in ``category`` (adversarial first)."""
    rows = [
        (setting, qid, f"Is there a {animal} in the image?", label)
        for setting, dog in (("adversarial", "no"), ("popular", "no"), ("random", "yes"))
        for qid, animal, label in ((1, "dog", dog), (2, "cat", "yes"))
    ]
    return {
        "data/test-00000-of-00001.parquet": {
            "id": [str(n) for n in range(len(rows))],
            "question_id": [str(qid) for _, qid, _, _ in rows],
            "question": [q for _, _, q, _ in rows],
            "answer": [a for _, _, _, a in rows],
            "image_source": [f"COCO_val2014_00000000000{qid}" for _, qid, _, _ in rows],
            "image": [png_cell((qid * 40, 0, 0)) for _, qid, _, _ in rows],
            "category": [s for s, _, _, _ in rows],
        }
    }


def hallusion_copy_files() -> dict[str, dict[str, list]]:
    """lmms-lab/HallusionBench: the JSON's fields plus ``image``, split into image / non_image files."""
    records = [
        hallusion_record("VD", "illusion", 0, 0, 0, "1"),
        hallusion_record("VD", "illusion", 0, 0, 1, "0"),
        hallusion_record("VD", "illusion", 0, 1, 0, "0"),
        hallusion_record("VD", "illusion", 0, 1, 1, "1"),
        hallusion_record("VS", "chart", 1, 1, 0, "0", visual="2"),
    ]
    text_only = [hallusion_record("VS", "chart", 1, 0, 0, "1", visual="0")]

    def columns(rows, with_image):
        table = {key: [r[key] for r in rows] for key in rows[0] if key != "filename"}
        table["filename"] = [r["filename"] or "" for r in rows]
        if with_image:
            table["image"] = [png_cell((0, 90, 0)) for _ in rows]
        return table

    return {
        "data/image-00000-of-00001.parquet": columns(records, True),
        "data/non_image-00000-of-00001.parquet": columns(text_only, False),
    }


def mmbench_copy_files() -> dict[str, dict[str, list]]:
    """lmms-lab/MMBench, config ``en`` (``cn`` sorts first and must not be picked): every row its image."""
    def columns(question_prefix):
        return {
            "index": [0, 1],
            "question": [f"{question_prefix}What is the main object?", f"{question_prefix}Which season is it?"],
            "hint": [None, "Look at the trees."],
            "A": ["cat", "summer"],
            "B": ["dog", "winter"],
            "C": ["cow", None],
            "D": [None, None],
            "answer": ["B", "A"],
            "category": ["object_localization", "image_scene"],
            "image": [png_cell((10, 20, 30)), png_cell((10, 20, 30))],
            "source": ["src", "src"],
            "L2-category": ["finegrained_perception (instance-level)", "coarse_perception"],
            "comment": [None, None],
            "split": ["dev", "dev"],
        }

    return {"cn/dev-00000-of-00001.parquet": columns("中文 "), "en/dev-00000-of-00001.parquet": columns("")}


def hrbench_copy_files() -> dict[str, dict[str, list]]:
    """HR-Bench's own ``hr_bench_4k.parquet``: the TSV's columns, base64 images, one row referring to
    another's image by index."""
    red, green = b64_image((255, 0, 0)), b64_image((0, 255, 0))
    return {
        "hr_bench_4k.parquet": {
            "index": [0, 1, 2],
            "question": ["What is written\non the sign?", "Which car is closer?", "What is written\non the sign?"],
            "answer": ["A", "C", "D"],
            "category": ["single", "cross", "single"],
            "A": ["STOP", "red", "GO"],
            "B": ["GO", "blue", "EXIT"],
            "C": ["EXIT", "green", "OPEN"],
            "D": ["OPEN", "none", "STOP"],
            "image": [red, green, "0"],
            "cycle_category": [0, 0, 1],
        }
    }


def mmvp_copy_files() -> dict[str, dict[str, list]]:
    """MMVP's questions with their images in the rows (lmms-eval's copy: the CSV's columns + image)."""
    options = ["(a) Open (b) Closed"] * 2 + ["(a) Left (b) Right"] * 2
    questions = ["Are the butterfly's wings closer to being open or closed?"] * 2 + [
        "Is the dog facing left, or right?"
    ] * 2
    return {
        "data/train-00000-of-00001.parquet": {
            "Index": [1, 2, 3, 4],
            "Question": questions,
            "Options": options,
            "Correct Answer": ["(a)", "(b)", "(b)", "(a)"],
            "image": [png_cell((200, 30, 30)) for _ in range(4)],
        }
    }


def vstar_copy_files() -> dict[str, dict[str, list]]:
    """lmms-lab/vstar-bench: the jsonl's fields with the image in the row (the ``image`` column)."""
    return {
        "data/test-00000-of-00001.parquet": {
            "text": ["What is the color of the cup?\n(A) red\n(B) blue\n(C) green\n(D) white\n"
                     "Answer with the option's letter from the given choices directly.",
                     "Is the dog on the left or right side of the car?\n(A) left\n(B) right\n"
                     "Answer with the option's letter from the given choices directly."],
            "label": ["B", "A"],
            "category": ["direct_attributes", "relative_position"],
            "question_id": [0, 1],
            "image": [png_cell((0, 0, 200)), png_cell((0, 200, 0))],
        }
    }


@pytest.fixture
def hub():
    """The copy helpers above, for tests: ``hub.place``, ``hub.write`` and ``hub.files[benchmark]()``."""
    from types import SimpleNamespace

    files = {
        "pope": pope_copy_files,
        "hallusionbench": hallusion_copy_files,
        "mmbench": mmbench_copy_files,
        "hrbench-4k": hrbench_copy_files,
        "mmvp": mmvp_copy_files,
        "vstar": vstar_copy_files,
    }
    return SimpleNamespace(place=place_copy, write=write_parquet, files=files)
