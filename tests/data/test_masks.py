"""seganswer_cli.masks against pycocotools (the reference implementation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from seganswer_cli.masks import (
    check_polygons_inside,
    decode_rle,
    encode_rle,
    mask_bbox,
    mask_iou,
    polygons_to_mask,
    rle_area,
    rle_bbox,
    segmentation_to_rle,
)


@pytest.fixture
def random_mask() -> np.ndarray:
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 53), dtype=bool)
    mask[5:30, 10:40] = rng.random((25, 30)) > 0.3
    return mask


def test_encode_decode_round_trip_matches_pycocotools(random_mask):
    rle = encode_rle(random_mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    json.dumps(rle)  # JSON-able
    reference = coco_mask.encode(np.asfortranarray(random_mask.astype(np.uint8)))
    assert rle["counts"].encode() == reference["counts"]
    decoded = decode_rle(rle)
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, random_mask)
    assert rle_area(rle) == random_mask.sum() == int(coco_mask.area(reference))
    assert rle_bbox(rle) == tuple(coco_mask.toBbox(reference).tolist())


def test_bbox_of_mask_and_empty_mask(random_mask):
    x, y, w, h = mask_bbox(random_mask)
    ref = coco_mask.toBbox(coco_mask.encode(np.asfortranarray(random_mask.astype(np.uint8))))
    assert (x, y, w, h) == tuple(int(v) for v in ref)
    assert mask_bbox(np.zeros((4, 4), dtype=bool)) == (0, 0, 0, 0)


def test_polygons_match_pycocotools_and_union():
    polygons = [[1, 1, 10, 1, 10, 8, 1, 8], [12, 2, 20, 2, 16, 12]]
    ref = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, 15, 22))).astype(bool)
    np.testing.assert_array_equal(polygons_to_mask(polygons, 15, 22), ref)


def test_uncompressed_and_list_rle_forms():
    mask = np.zeros((5, 6), dtype=bool)
    mask[1:3, 2:5] = True
    # column-major run lengths, as COCO crowd annotations store them
    flat = mask.flatten(order="F").astype(int)
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    np.testing.assert_array_equal(decode_rle({"size": [5, 6], "counts": runs}), mask)
    merged = segmentation_to_rle([encode_rle(mask), encode_rle(np.eye(5, 6, dtype=bool))], 5, 6)
    np.testing.assert_array_equal(decode_rle(merged), mask | np.eye(5, 6, dtype=bool))


def test_malformed_input_raises_value_error():
    with pytest.raises(ValueError, match="outside the 10x10 image"):
        check_polygons_inside([[0, 0, 50, 0, 5, 5]], 10, 10)
    with pytest.raises(ValueError, match="even number"):
        check_polygons_inside([[0, 0, 5]], 10, 10)
    with pytest.raises(ValueError, match="runs sum to"):
        decode_rle({"size": [3, 3], "counts": [1, 2]})
    with pytest.raises(ValueError, match="does not match the image size"):
        segmentation_to_rle(encode_rle(np.ones((3, 3), bool)), 4, 4)
    with pytest.raises(ValueError, match="empty"):
        segmentation_to_rle([], 4, 4)


def test_iou():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
