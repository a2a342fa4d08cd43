"""Every benchmark reader on tiny folders in the published layout (built in conftest.py)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval import BENCHMARKS, BenchmarkSpec, get_benchmark, register
from seganswer_cli.eval.items import LazyImage

CLI_NAMES = [
    "vstar",
    "hrbench-4k",
    "hrbench-8k",
    "mmbench",
    "visulogic",
    "mmvp",
    "pope",
    "hallusionbench",
    "refcoco",
    "refcoco+",
    "refcocog",
    "reasonseg",
    "shapes-vqa",
    "shapes-refseg",
]


def test_registry_has_exactly_the_cli_names():
    assert list(BENCHMARKS) == CLI_NAMES


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(UsageError, match="unknown benchmark 'vstar2'.*vstar, hrbench-4k.*reasonseg"):
        get_benchmark("vstar2")


def test_register_adds_a_name_once():
    spec = BenchmarkSpec("my-vstar", "seganswer_cli.eval.vstar", "qa", "test hook", "accuracy")
    try:
        register(spec)
        assert get_benchmark("my-vstar") is spec
        with pytest.raises(ValueError, match="already"):
            register(spec)
    finally:
        BENCHMARKS.pop("my-vstar", None)


def test_eval_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, seganswer_cli.eval as e; [s.load() for s in e.BENCHMARKS.values()]; print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


class TestVStar:
    def test_reads_bom_crlf_jsonl_and_subset_images(self, vstar_dir):
        data = get_benchmark("vstar").read(vstar_dir)
        assert [i.id for i in data.items] == ["0", "1"] and data.missing == []
        first = data.items[0]
        assert first.question == "What is the color of the cup?"
        assert first.options == {"A": "red", "B": "blue", "C": "green", "D": "white"}
        assert first.answer == "B" and first.groups == {"category": "direct_attributes"}
        assert first.prompt.endswith("Answer with the option's letter from the given choices directly.")
        assert first.load_image().size == (8, 8)

    def test_split_selects_one_subset(self, vstar_dir):
        data = get_benchmark("vstar").read(vstar_dir, "relative_position")
        assert [i.groups["category"] for i in data.items] == ["relative_position"]

    def test_found_one_level_deeper(self, vstar_dir, tmp_path):
        outer = tmp_path / "download"
        shutil.move(vstar_dir, outer / "vstar_bench")
        assert len(get_benchmark("vstar").read(outer).items) == 2

    def test_missing_image_is_reported_not_dropped(self, vstar_dir):
        (vstar_dir / "relative_position" / "sa_2.jpg").unlink()
        data = get_benchmark("vstar").read(vstar_dir)
        assert [i.id for i in data.items] == ["0"]
        assert [m.item_id for m in data.missing] == ["1"]
        assert "relative_position/sa_2.jpg" in str(data.missing[0])

    def test_missing_file_names_it_and_the_folders(self, tmp_path):
        with pytest.raises(DataError, match=r"test_questions\.jsonl; looked in .*empty"):
            (tmp_path / "empty").mkdir()
            get_benchmark("vstar").read(tmp_path / "empty")

    def test_unknown_split(self, vstar_dir):
        with pytest.raises(UsageError, match="direct_attributes"):
            get_benchmark("vstar").read(vstar_dir, "ocr")

    def test_fixed_order_puts_the_right_option_first(self, vstar_dir):
        first = get_benchmark("vstar").read(vstar_dir, option_order="fixed").items[0]
        assert first.options == {"A": "blue", "B": "red", "C": "green", "D": "white"} and first.answer == "A"
        assert first.prompt == ("What is the color of the cup?\n(A) blue\n(B) red\n(C) green\n(D) white\n"
                                "Answer with the option's letter from the given choices directly.")

    def test_annotation_copy_is_read_with_seeded_option_order(self, vstar_annotations_dir):
        data = get_benchmark("vstar").read(vstar_annotations_dir)
        assert len(data.items) == 10 and data.missing == []
        first = data.items[0]
        assert first.id == "direct_attributes/sa_0" and first.groups == {"category": "direct_attributes"}
        assert first.options[first.answer] == "red"  # the annotation's first option is the right one
        assert first.prompt.startswith("Question 0 of direct_attributes?\n(A) ")
        letters = [item.answer for item in data.items]
        assert len(set(letters)) > 1, f"the right option should not always be at the same letter: {letters}"
        again = get_benchmark("vstar").read(vstar_annotations_dir)
        assert [i.prompt for i in again.items] == [i.prompt for i in data.items]  # seeded: the same each read
        fixed = get_benchmark("vstar").read(vstar_annotations_dir, option_order="fixed")
        assert {i.answer for i in fixed.items} == {"A"}
        assert [i.options["A"] for i in fixed.items] == ["red"] * 6 + ["left"] * 4

    def test_annotation_without_options_is_one_line(self, vstar_annotations_dir):
        (vstar_annotations_dir / "relative_position" / "sa_0.json").write_text('{"question": "Where?"}')
        with pytest.raises(DataError, match="sa_0.json: expected an annotation with 'question' and a list of 'options'"):
            get_benchmark("vstar").read(vstar_annotations_dir)

    def test_unknown_option_order(self, vstar_dir):
        with pytest.raises(UsageError, match="shuffled, fixed"):
            get_benchmark("vstar").read(vstar_dir, option_order="random")

    def test_ids_restarting_per_category_are_keyed_with_it(self, vstar_dir):
        """A copy whose question_id restarts in each category: each question still has its own id
        (category/question_id), and one whose pairs repeat too is keyed by line; a run goes through."""
        import json

        path = vstar_dir / "test_questions.jsonl"
        records = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines()]
        for record in records:
            record["question_id"] = 0
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        data = get_benchmark("vstar").read(vstar_dir)
        assert [i.id for i in data.items] == ["direct_attributes/0", "relative_position/0"]
        assert [i.answer for i in data.items] == ["B", "A"]
        path.write_text("".join(json.dumps({**r, "category": "direct_attributes"}) + "\n" for r in records))
        assert [i.id for i in get_benchmark("vstar").read(vstar_dir).items] == ["line-1", "line-2"]


class TestHRBench:
    def test_lazy_base64_images_multiline_questions_and_references(self, hrbench_dir):
        data = get_benchmark("hrbench-4k").read(hrbench_dir)
        assert [i.id for i in data.items] == ["0", "1", "2"]
        first, second, third = data.items
        assert first.question == "What is written\non the sign?"
        assert isinstance(first.image, LazyImage)
        assert first.load_image().getpixel((5, 5)) == (255, 0, 0)
        assert second.load_image().getpixel((5, 5)) == (0, 255, 0)
        # row 2 stores "0" in its image cell: the image of index 0
        assert third.load_image().getpixel((5, 5)) == (255, 0, 0)
        assert third.groups == {"category": "single", "cycle": "1"} and third.answer == "D"
        assert first.prompt.startswith("Question: What is written") and "A. STOP" in first.prompt

    def test_8k_needs_its_own_file(self, hrbench_dir):
        with pytest.raises(DataError, match="hr_bench_8k.tsv"):
            get_benchmark("hrbench-8k").read(hrbench_dir)


class TestMMBench:
    def test_circular_copies_are_made_with_vlmevalkit_ids(self, mmbench_dir):
        data = get_benchmark("mmbench").read(mmbench_dir)
        # question 0 has three options (three shifts), question 1 has two
        assert [i.id for i in data.items] == ["0", "1000000", "2000000", "1", "1000001"]
        shift1 = data.items[1]
        assert shift1.options == {"A": "dog", "B": "cow", "C": "cat"} and shift1.answer == "A"
        assert {i.groups["circular_group"] for i in data.items[:3]} == {"0"}
        hinted = data.items[3]
        assert hinted.prompt.startswith("Hint: Look at the trees.\nQuestion: Which season is it?")
        assert hinted.load_image().size == (64, 64)  # through the reference to row 0

    def test_file_with_circular_copies_is_used_as_is(self, mmbench_dir):
        path = mmbench_dir / "MMBench_DEV_EN.tsv"
        lines = path.read_text().splitlines()
        # a shifted copy of question 1 (options swapped, answer B) with VLMEvalKit's id; CRLF + BOM
        copy = lines[2].split("\t")
        copy[0], copy[3], copy[4], copy[7] = "1000001", "winter", "summer", "B"
        path.write_bytes(("\ufeff" + "\r\n".join([*lines, "\t".join(copy)]) + "\r\n").encode("utf-8"))
        data = get_benchmark("mmbench").read(mmbench_dir)
        assert [i.id for i in data.items] == ["0", "1", "1000001"]
        assert data.items[2].groups["circular_group"] == "1" and data.items[2].answer == "B"
        assert data.items[2].load_image().size == (64, 64)

    def test_without_circular_only_originals(self, mmbench_dir):
        data = get_benchmark("mmbench").read(mmbench_dir, circular=False)
        assert [i.id for i in data.items] == ["0", "1"]

    def test_parquet_export(self, mmbench_dir, tmp_path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
        table = pa.table(
            {
                "index": [0],
                "question": ["Q?"],
                "hint": [None],
                "A": ["x"],
                "B": ["y"],
                "C": [None],
                "D": [None],
                "answer": ["B"],
                "category": ["c"],
                "l2-category": ["l2"],
                "split": ["dev"],
                "image": [{"bytes": buffer.getvalue(), "path": None}],
            }
        )
        folder = tmp_path / "parquet" / "en"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "dev-00000-of-00001.parquet")
        data = get_benchmark("mmbench").read(tmp_path / "parquet")
        assert [i.id for i in data.items] == ["0", "1000000"]
        assert data.items[0].load_image().getpixel((0, 0)) == (1, 2, 3)

    def test_test_split_has_no_answers(self, mmbench_dir):
        with pytest.raises(UsageError, match="dev"):
            get_benchmark("mmbench").read(mmbench_dir, "test")


class TestPOPE:
    def test_three_settings_prefixed_ids_and_image_folder(self, pope_dir):
        data = get_benchmark("pope").read(pope_dir)
        assert [i.id for i in data.items] == [
            "random-1",
            "random-2",
            "popular-1",
            "popular-2",
            "adversarial-1",
            "adversarial-2",
        ]
        assert data.items[2].answer == "no" and data.items[2].answer_kind == "yesno"
        assert data.items[0].prompt == "Is there a dog in the image?\nPlease answer yes or no."
        assert Path(data.items[0].image).parent.name == "val2014"

    def test_one_setting(self, pope_dir):
        assert len(get_benchmark("pope").read(pope_dir, "popular").items) == 2

    def test_missing_setting_file(self, pope_dir):
        (pope_dir / "coco_pope_adversarial.json").unlink()
        with pytest.raises(DataError, match="coco_pope_adversarial.json"):
            get_benchmark("pope").read(pope_dir)


class TestHallusionBench:
    def test_grouping_keys_answers_and_image_fallback(self, hallusion_dir):
        data = get_benchmark("hallusionbench").read(hallusion_dir)
        # the text-only VS question is left out of the default "image" split
        assert [i.id for i in data.items] == [
            "VD_illusion_0_0_0",
            "VD_illusion_0_0_1",
            "VD_illusion_0_1_0",
            "VD_illusion_0_1_1",
            "VS_chart_1_1_0",
        ]
        first = data.items[0]
        assert first.groups == {
            "category": "VD",
            "subcategory": "illusion",
            "set_id": "0",
            "figure_id": "0",
            "question_id": "0",
        }
        assert [i.answer for i in data.items] == ["yes", "no", "no", "yes", "no"]
        assert first.image == hallusion_dir / "VD" / "illusion" / "0_0.png"

    def test_all_split_keeps_text_only_questions(self, hallusion_dir):
        data = get_benchmark("hallusionbench").read(hallusion_dir, "all")
        text_only = [i for i in data.items if i.image is None]
        assert [i.id for i in text_only] == ["VS_chart_1_0_0"]
        with pytest.raises(ValueError, match="text-only"):
            text_only[0].load_image()


class TestMMVP:
    def test_options_answers_pairs_and_quoted_questions(self, mmvp_dir):
        data = get_benchmark("mmvp").read(mmvp_dir)
        assert [i.id for i in data.items] == ["1", "2", "3", "4"]
        assert data.items[0].options == {"A": "Open", "B": "Closed"}
        assert [i.answer for i in data.items] == ["A", "B", "B", "A"]
        assert [i.groups["pair"] for i in data.items] == ["0", "0", "1", "1"]
        assert data.items[2].question == "Is the dog facing left, or right?"
        assert data.items[0].prompt.splitlines()[1:] == [
            "(A) Open",
            "(B) Closed",
            "Answer with the option's letter from the given choices directly.",
        ]

    def test_missing_image(self, mmvp_dir):
        (mmvp_dir / "MMVP Images" / "4.jpg").unlink()
        data = get_benchmark("mmvp").read(mmvp_dir)
        assert [m.item_id for m in data.missing] == ["4"]


class TestVisuLogic:
    def test_inline_options_or_bare_letters(self, visulogic_dir):
        data = get_benchmark("visulogic").read(visulogic_dir)
        assert [i.answer for i in data.items] == ["C", "A"]
        assert data.items[0].options == {"A": "A", "B": "B", "C": "C", "D": "D"}
        assert data.items[1].options == {"A": "A", "B": "B", "C": "C", "D": "D"}
        assert data.items[0].groups == {"tag": "Quantitative Reasoning"}

    def test_official_prompt(self, visulogic_dir):
        item = get_benchmark("visulogic").read(visulogic_dir).items[1]
        assert item.prompt == (
            "Choose the most appropriate option to fill the question mark.\nSolve the complex visual logical "
            "reasoning problem through step-by-step reasoning. Think about the reasoning process first and "
            "answer the question following this format: Answer: \\boxed{$LETTER}."
        )

    @pytest.mark.parametrize("prefix", ["images/", "VisuLogic/images/", ""])
    def test_images_zip_as_distributed(self, visulogic_dir, prefix):
        import io
        import shutil
        import zipfile

        from PIL import Image

        from seganswer_cli.eval.items import LazyImage

        shutil.rmtree(visulogic_dir / "images")
        with zipfile.ZipFile(visulogic_dir / "images.zip", "w") as archive:
            for name, colour in (("00000.png", "red"), ("00001.png", "blue")):
                buffer = io.BytesIO()
                Image.new("RGB", (6, 4), colour).save(buffer, format="PNG")
                archive.writestr(prefix + name, buffer.getvalue())
        data = get_benchmark("visulogic").read(visulogic_dir)
        assert data.missing == [] and all(isinstance(i.image, LazyImage) for i in data.items)
        assert [i.load_image().getpixel((0, 0)) for i in data.items] == [(255, 0, 0), (0, 0, 255)]

    def test_image_missing_from_the_zip_names_it(self, visulogic_dir):
        import shutil
        import zipfile

        shutil.rmtree(visulogic_dir / "images")
        with zipfile.ZipFile(visulogic_dir / "images.zip", "w") as archive:
            archive.writestr("images/00000.png", b"")
        data = get_benchmark("visulogic").read(visulogic_dir)
        assert [m.item_id for m in data.missing] == ["00001"]
        assert "images.zip" in str(data.missing[0])

    def test_corrupt_zip_is_one_line(self, visulogic_dir):
        (visulogic_dir / "images.zip").write_bytes(b"not a zip")
        with pytest.raises(DataError, match="images.zip: not a readable zip archive"):
            get_benchmark("visulogic").read(visulogic_dir)

    def test_bad_label(self, visulogic_dir):
        path = visulogic_dir / "data.jsonl"
        path.write_text(
            json.dumps({"id": "x", "image_path": "images/00000.png", "question": "q", "label": "E"})
        )
        with pytest.raises(DataError, match="label"):
            get_benchmark("visulogic").read(visulogic_dir)


def coco_reference_mask(segmentation, height, width):
    """What pycocotools' COCO.annToMask gives, written out with pycocotools.mask directly."""
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    else:
        rle = dict(segmentation, counts=segmentation["counts"].encode("ascii"))
    return coco_mask.decode(rle).astype(bool)


class TestRefCOCO:
    def test_one_item_per_sentence_with_coco_masks(self, refer_seg_dir):
        data = get_benchmark("refcoco").read(refer_seg_dir)
        assert [i.id for i in data.items] == ["0_0", "0_1"]
        first = data.items[0]
        assert first.question == "left cup" and first.prompt == "Can you segment the left cup in this image?"
        assert first.answer_kind == "mask"
        instances = json.loads((refer_seg_dir / "refcoco" / "instances.json").read_text())
        polygon = instances["annotations"][0]["segmentation"]
        np.testing.assert_array_equal(first.load_gt_mask(), coco_reference_mask(polygon, 10, 12))

    def test_rle_annotation_split_testA(self, refer_seg_dir):
        (item,) = get_benchmark("refcoco").read(refer_seg_dir, "testA").items
        instances = json.loads((refer_seg_dir / "refcoco" / "instances.json").read_text())
        expected = coco_reference_mask(instances["annotations"][1]["segmentation"], 10, 12)
        np.testing.assert_array_equal(item.load_gt_mask(), expected)
        assert item.load_gt_mask().sum() == 9

    def test_refcocog_umd_split_aliases(self, refer_seg_dir):
        spec = get_benchmark("refcocog")
        assert [i.id for i in spec.read(refer_seg_dir, "test-u").items] == ["0_0", "0_1", "1_2"]
        assert spec.read(refer_seg_dir, "test").items[0].benchmark == "refcocog"

    def test_pointing_at_the_dataset_folder_works(self, refer_seg_dir):
        assert len(get_benchmark("refcoco").read(refer_seg_dir / "refcoco").items) == 2

    def test_missing_dataset_and_bad_split(self, refer_seg_dir):
        with pytest.raises(DataError, match=r"refs\(unc\)\.p"):
            get_benchmark("refcoco+").read(refer_seg_dir)
        with pytest.raises(UsageError, match="testA"):
            get_benchmark("refcoco").read(refer_seg_dir, "test-u")

    def test_missing_image_reports_each_sentence(self, refer_seg_dir):
        shutil.rmtree(refer_seg_dir / "images")
        data = get_benchmark("refcoco").read(refer_seg_dir)
        assert data.items == [] and [m.item_id for m in data.missing] == ["0_0", "0_1"]


class TestReasonSeg:
    def test_target_ignore_and_prompts(self, reasonseg_dir):
        data = get_benchmark("reasonseg").read(reasonseg_dir)
        assert [i.id for i in data.items] == ["scene_0", "scene_1"]
        assert [m.item_id for m in data.missing] == ["lost"]
        item = data.items[0]
        assert item.prompt == "the thing you would sit on Please output segmentation mask."
        target, ignore = item.load_gt_mask(), item.load_ignore_mask()
        square = coco_mask.decode(
            coco_mask.merge(coco_mask.frPyObjects([[1, 1, 7, 1, 7, 6, 1, 6]], 8, 10))
        ).astype(bool)
        small = coco_mask.decode(
            coco_mask.merge(coco_mask.frPyObjects([[2, 2, 4, 2, 4, 4, 2, 4]], 8, 10))
        ).astype(bool)
        np.testing.assert_array_equal(ignore, small)
        np.testing.assert_array_equal(target, square & ~small)
        assert target.shape == (8, 10)

    def test_split_folder_missing(self, reasonseg_dir):
        with pytest.raises(DataError, match="test/"):
            get_benchmark("reasonseg").read(reasonseg_dir, "test")
