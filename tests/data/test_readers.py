"""Each reader on tiny files in the published schema; masks checked against pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import (
    POLY_A,
    POLY_B,
    POLY_C,
    H,
    W,
    add_refclef,
    make_ade20k,
    make_coco_parts,
    make_reasonseg,
    make_refcoco_parquet,
    make_refer_root,
    make_virl39k,
    make_visualcot,
    make_visualcot_llava,
    write_image,
)
from pycocotools import mask as coco_mask

from seganswer_cli.data import SegSample, VQASample, detect_format, open_dataset
from seganswer_cli.data.inspect import check_sample
from seganswer_cli.errors import DataError, ImageReadError, UsageError


def coco_polygon_mask(polygons) -> np.ndarray:
    """The reference: pycocotools' own rasterization of COCO polygons, merged."""
    rles = coco_mask.frPyObjects(polygons, H, W)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


# --- RefCOCO family -----------------------------------------------------------------------------


def test_refcoco_from_refer_root_one_sample_per_sentence(refer_root):
    samples = open_dataset(refer_root, "refcoco").take()
    assert [s.expression for s in samples] == ["man on the left", "person in blue", "dog", "two boxes bottom left"]
    assert all(isinstance(s, SegSample) and s.source == "refcoco" for s in samples)
    assert samples[0].id == "refcoco(unc):0:0"
    for sample, polygons in zip(samples, [POLY_A, POLY_A, POLY_B, POLY_C], strict=True):
        np.testing.assert_array_equal(sample.mask.decode(), coco_polygon_mask(polygons))
    assert samples[0].image.path.name == "COCO_train2014_000000000001.jpg"
    assert samples[0].image.load().size == (W, H)


def test_refcoco_from_its_own_folder_and_split_filter(refer_root):
    # pointing at refer_seg/refcoco finds the images at ../images/...
    assert detect_format(refer_root / "refcoco") == "refcoco"
    val = open_dataset(refer_root / "refcoco", split="val").take()
    assert [s.expression for s in val] == ["two boxes bottom left"]
    test = open_dataset(refer_root / "refcoco", "refcoco", split="test").take()
    assert [s.split for s in test] == ["testA"]


def test_refcoco_images_override(tmp_path):
    root = make_refer_root(tmp_path / "refer_seg")
    moved = tmp_path / "elsewhere"
    (root / "images" / "mscoco" / "images" / "train2014").rename(moved)
    with pytest.raises(DataError, match="refcoco images not found.*--images"):
        open_dataset(root, "refcoco").take()
    samples = open_dataset(root, "refcoco", images=moved).take()
    assert samples[0].image.path.parent == moved


def test_refclef_rle_masks(refer_root):
    expected = add_refclef(refer_root)
    with pytest.raises(UsageError, match="several refer datasets"):
        detect_format(refer_root)
    (sample,) = open_dataset(refer_root, "refclef").take()
    assert sample.expression == "sky"
    np.testing.assert_array_equal(sample.mask.decode(), expected)


def test_refcoco_missing_refs_file_names_what_and_where(tmp_path):
    (tmp_path / "refcoco").mkdir()
    with pytest.raises(DataError, match=r"refcoco refs file not found: expected one of refcoco/refs\(unc\).p"):
        open_dataset(tmp_path, "refcoco").take()


def test_refcoco_polygon_outside_image_names_file_and_record(tmp_path):
    bad = [{"id": 101, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 80, 2, 80, 12, 2, 12]]},
           {"id": 102, "image_id": 1, "category_id": 2, "segmentation": POLY_B},
           {"id": 103, "image_id": 2, "category_id": 1, "segmentation": POLY_C}]
    root = make_refer_root(tmp_path / "refer_seg", annotations_override=bad)
    with pytest.raises(DataError, match=r"refs\(unc\).p: record 0 \(ref_id 0\): polygon 0 has vertex \(80, 2\) "
                                        r"outside the 40x30 image"):
        open_dataset(root, "refcoco").take()
    dataset = open_dataset(root, "refcoco", on_error="skip")
    assert [s.expression for s in dataset.take()] == ["dog", "two boxes bottom left"]
    assert len(dataset.errors.skipped) == 1 and "outside" in dataset.errors.skipped[0].reason
    assert "1 record(s) skipped" in dataset.errors.summary()


def test_refcoco_missing_image_and_malformed_ref(tmp_path):
    refs = [{"ref_id": 0, "ann_id": 999, "image_id": 1, "split": "train", "sentences": [{"sent": "x", "sent_id": 0}]},
            {"ref_id": 1, "image_id": 1, "split": "train", "sentences": []}]
    root = make_refer_root(tmp_path / "refer_seg", refs_override=refs)
    dataset = open_dataset(root, "refcoco", on_error="skip")
    assert dataset.take() == []
    reasons = [s.reason for s in dataset.errors.skipped]
    assert "ann_id 999 is not in" in reasons[0] and reasons[1] == "missing field 'ann_id'"
    (root / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000001.jpg").unlink()
    root2 = make_refer_root(tmp_path / "other")
    (root2 / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(DataError, match=r"record 2 \(ref_id 2\): image not found: .*000000000002.jpg"):
        open_dataset(root2, "refcoco").take()


def test_refs_pickle_with_classes_is_refused(tmp_path):
    root = make_refer_root(tmp_path / "refer_seg")
    import pickle

    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": 0, "oops": np.int64(3)}], f)  # would need numpy to unpickle
    with pytest.raises(DataError, match="only plain data is allowed"):
        open_dataset(root, "refcoco").take()


def test_refcoco_parquet_variant(tmp_path):
    folder = make_refcoco_parquet(tmp_path / "RefCOCO")
    assert detect_format(folder) == "refcoco-parquet"
    samples = open_dataset(folder).take()
    assert [s.expression for s in samples] == ["man on the left", "person in blue"]
    assert samples[0].split == "val" and samples[0].image.data is not None
    np.testing.assert_array_equal(samples[0].mask.decode(), coco_polygon_mask(POLY_A))
    check_sample(samples[0])


def test_refcoco_parquet_undecodable_embedded_image(tmp_path):
    rows = [{"question_id": "q9", "image": {"bytes": b"not an image", "path": "x.jpg"}, "answer": ["a"],
             "segmentation": POLY_A[0], "file_name": "x.jpg"}]
    folder = make_refcoco_parquet(tmp_path / "RefCOCO", rows)
    with pytest.raises(DataError, match=r"val-00000-of-00001.parquet: record 0 \(question_id q9\): embedded image "
                                        r"x.jpg cannot be decoded"):
        open_dataset(folder, "refcoco-parquet").take()


# --- ReasonSeg ----------------------------------------------------------------------------------


def test_reasonseg_target_minus_ignore_and_is_sentence(tmp_path):
    root = make_reasonseg(tmp_path)
    assert detect_format(root) == "reasonseg"
    samples = open_dataset(root).take()
    assert [(s.split, s.expression, s.extra["is_sentence"]) for s in samples] == [
        ("train", "the thing you sit on", True), ("train", "where to sit", True),
        ("val", "the thing you sit on", False), ("val", "where to sit", False)]
    outer = coco_polygon_mask([[2, 2, 30, 2, 30, 26, 2, 26]])
    inner = coco_polygon_mask([[10, 10, 20, 10, 20, 20, 10, 20]])
    # the smaller "ignore" polygon is painted last, over the target
    np.testing.assert_array_equal(samples[0].mask.decode(), outer & ~inner)
    np.testing.assert_array_equal(samples[0].ignore_mask.decode(), inner)
    assert [s.split for s in open_dataset(root, split="val").take()] == ["val", "val"]


def test_reasonseg_bad_polygon_and_missing_target(tmp_path):
    root = make_reasonseg(tmp_path, shapes=[{"label": "target", "points": [[2, 2], [300, 2], [30, 26]]}])
    with pytest.raises(DataError, match=r"img_a.json: record img_a: shape 0 \(target\): polygon 0 has vertex"):
        open_dataset(root).take()
    root = make_reasonseg(tmp_path / "b", shapes=[{"label": "ignore", "points": [[2, 2], [30, 2], [30, 26]]}])
    dataset = open_dataset(root, on_error="skip")
    assert dataset.take() == [] and {s.reason for s in dataset.errors.skipped} == {"no 'target' shape"}


# --- ADE20K and COCO-style class names -------------------------------------------------------------


def test_ade20k_one_sample_per_class_present(tmp_path):
    root, label = make_ade20k(tmp_path)
    assert detect_format(tmp_path) == "ade20k"
    samples = open_dataset(tmp_path).take()
    assert [(s.expression, s.split) for s in samples] == [("wall", "train"), ("sky", "train")]
    np.testing.assert_array_equal(samples[0].mask.decode(), label == 1)
    np.testing.assert_array_equal(samples[1].mask.decode(), label == 3)


def test_ade20k_label_beyond_class_list(tmp_path):
    root, label = make_ade20k(tmp_path)
    label[0, 0] = 200
    from PIL import Image

    Image.fromarray(label).save(root / "annotations" / "training" / "ADE_train_00000001.png")
    with pytest.raises(DataError, match=r"ADE_train_00000001.png: record ADE_train_00000001: label values \[200\]"):
        open_dataset(root, "ade20k").take()


def test_coco_parts_as_class_names(tmp_path):
    root = make_coco_parts(tmp_path / "paco")
    assert detect_format(root) == "coco"
    samples = open_dataset(root, "paco-lvis").take()
    assert [s.expression for s in samples] == ["the wheel of the car", "the leg of the dog"]
    assert samples[0].source == "paco-lvis"
    np.testing.assert_array_equal(samples[0].mask.decode(), coco_polygon_mask(POLY_A + POLY_B))
    np.testing.assert_array_equal(samples[1].mask.decode(), coco_polygon_mask(POLY_C))


# --- VisualCoT and ViRL39K --------------------------------------------------------------------------


def test_visualcot_metadata_jsonl(tmp_path):
    root = make_visualcot(tmp_path / "viscot")
    assert detect_format(root) == "visualcot"
    samples = open_dataset(root).take()
    assert [(s.question, s.answer) for s in samples] == [("Is the car over the cat?", "No"),
                                                         ("What is under the teddy bear?", "couch")]
    assert all(isinstance(s, VQASample) and s.region_masks == [] for s in samples)
    assert samples[0].region_boxes == [(3.5, 4.0, 20.25, 18.0)]
    assert samples[1].region_boxes == [(0.0, 0.9, float(W), 29.5)]  # clipped to the image
    assert samples[0].image.path == root / "cot" / "vsr" / "000000068878.jpg"


def test_visualcot_llava_json(tmp_path):
    root = make_visualcot_llava(tmp_path / "viscot")
    (sample,) = open_dataset(root, "visualcot").take()
    assert (sample.question, sample.answer, sample.region_boxes) == ("What color is the bus?", "red",
                                                                    [(5.0, 6.0, 20.0, 22.0)])


def test_visualcot_malformed_line_and_box(tmp_path):
    records = ['{"question": "broken', {**VISCOT_BAD_BOX}]
    root = make_visualcot(tmp_path / "viscot", records)
    with pytest.raises(DataError, match=r"vsr_cot_train.jsonl: record line 1: not valid JSON"):
        open_dataset(root, "visualcot").take()
    dataset = open_dataset(root, "visualcot", on_error="skip")
    assert dataset.take() == []
    assert [s.record for s in dataset.errors.skipped] == ["line 1", "line 2"]
    assert "lies outside the 40x30 image" in dataset.errors.skipped[1].reason


VISCOT_BAD_BOX = {"question": "Q?", "answer": "A", "image": "1.jpg", "width": W, "height": H,
                  "bboxs": [[50, 50, 60, 60]], "dataset": "vsr", "split": "train"}


def test_virl39k_parquet_with_image_paths(tmp_path):
    root = make_virl39k(tmp_path / "ViRL39K")
    assert detect_format(root) == "virl39k"
    first, second = open_dataset(root).take()
    assert (first.question, first.answer, first.answer_type) == ("Find the area of the triangle.", "\\frac{1}{2}",
                                                                 "math")
    assert first.extra["raw_answer"].endswith("\\boxed{\\frac{1}{2}}.") and first.extra["PassRate_32BTrained"] == 0.5
    assert second.answer == "B" and [i.name for i in [second.image, *second.extra_images]] == [
        "images/q2a.png", "images/q2b.png"]


def test_virl39k_embedded_images_and_missing_image(tmp_path):
    root = make_virl39k(tmp_path / "emb", embedded=True)
    (sample,) = open_dataset(root, "virl39k").take()
    assert sample.answer == "17^\\circ" and sample.image.load().size == (W, H)
    root = make_virl39k(tmp_path / "paths")
    (root / "images" / "q1.png").unlink()
    with pytest.raises(DataError, match=r"39Krelease.parquet: record 0 \(qid q1\): image not found: .*q1.png"):
        open_dataset(root).take()


# --- bad images, detection ----------------------------------------------------------------------


def test_undecodable_image_is_reported_with_its_file(tmp_path):
    root = make_visualcot(tmp_path / "viscot")
    (root / "cot" / "vsr" / "000000068878.jpg").write_bytes(b"\x89PNG truncated")
    sample = open_dataset(root).take()[0]
    with pytest.raises(ImageReadError, match="000000068878.jpg"):
        sample.image.load()


def test_detection_failure_asks_for_a_format(tmp_path):
    write_image(tmp_path / "lonely.jpg")
    with pytest.raises(UsageError, match="cannot tell the format.*--format"):
        detect_format(tmp_path)
    with pytest.raises(UsageError, match="dataset path not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(UsageError, match="unknown data format 'refcocoz'"):
        open_dataset(tmp_path, "refcocoz")


def test_seganswer_record_with_wrong_mask_size(tmp_path):
    from seganswer_cli.data.shapes_datasets import write_synthetic
    from seganswer_cli.data.shapes_scenes import ShapesConfig

    out = write_synthetic(tmp_path / "syn", "refseg", 2, ShapesConfig(width=48, height=32, min_size=8, max_size=16))
    lines = (out / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["mask"]["size"] = [10, 10]
    (out / "records.jsonl").write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"records.jsonl: record line 2: mask size \[10, 10\] does not match"):
        open_dataset(out).take()
