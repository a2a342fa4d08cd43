"""The shapes world: deterministic, masks agree with pixels, expressions and answers re-derived."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from seganswer_cli.data import SegSample, VQASample, open_dataset
from seganswer_cli.data.shapes_datasets import generate_samples, write_synthetic
from seganswer_cli.data.shapes_language import ExpressionError, answer_question, holds, resolve
from seganswer_cli.data.shapes_scenes import COLOURS, Scene, ShapesConfig, local_visible_masks, visible_mask
from seganswer_cli.errors import UsageError

SMALL = ShapesConfig(width=96, height=80, min_size=10, max_size=32)


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["refseg", "vqa", "rl"])
def test_same_seed_byte_identical_other_seed_differs(tmp_path, kind):
    a = folder_digest(write_synthetic(tmp_path / "a", kind, 6, SMALL, seed=7))
    b = folder_digest(write_synthetic(tmp_path / "b", kind, 6, SMALL, seed=7))
    c = folder_digest(write_synthetic(tmp_path / "c", kind, 6, SMALL, seed=8))
    assert a == b
    assert a["records.jsonl"] != c["records.jsonl"]
    assert len([k for k in a if k.startswith("images/")]) == 6


def test_samples_do_not_depend_on_n():
    first = [s.expression for s in generate_samples("refseg", 3, SMALL, seed=1)]
    more = [s.expression for s in generate_samples("refseg", 8, SMALL, seed=1)]
    tail = [s.expression for s in generate_samples("refseg", 5, SMALL, seed=1, start=3)]
    assert more[:3] == first and more[3:] == tail


def test_masks_agree_with_rendered_pixels():
    for sample in generate_samples("refseg", 25, SMALL, seed=3):
        scene = Scene.from_dict(sample.extra["scene"])
        image = np.asarray(sample.image.load())  # (H, W, 3)
        assert image.shape == (scene.height, scene.width, 3)
        covered = np.zeros(image.shape[:2], dtype=bool)
        for shape, local in zip(scene.shapes, local_visible_masks(scene.shapes), strict=True):
            window = image[shape.y:shape.y + shape.size, shape.x:shape.x + shape.size]
            assert local.sum() > 0
            # every visible pixel of a shape has exactly its colour
            assert (window[local] == COLOURS[shape.colour]).all()
            covered[shape.y:shape.y + shape.size, shape.x:shape.x + shape.size] |= local
        # pixels no shape covers are background, never a shape colour
        palette = np.array(list(COLOURS.values()))
        outside = image[~covered]
        assert not (outside[:, None, :] == palette[None]).all(-1).any()
        np.testing.assert_array_equal(sample.mask.decode(), visible_mask(scene, sample.extra["target_ids"]))


def test_every_expression_resolves_to_exactly_its_objects(tmp_path):
    # through the on-disk format: the scene graph and the mask come back from JSON
    folder = write_synthetic(tmp_path / "ref", "refseg", 60, SMALL, seed=11)
    families = set()
    for sample in open_dataset(folder):
        assert isinstance(sample, SegSample)
        scene = Scene.from_dict(sample.extra["scene"])
        ids = resolve(sample.expression, scene)
        assert ids == sorted(sample.extra["target_ids"])
        np.testing.assert_array_equal(sample.mask.decode(), visible_mask(scene, ids))
        text = sample.expression
        families.add("multi" if (" and " in text or text.startswith("all ")) else
                     "relation" if any(r in text for r in ("left of", "right of", "above", "below")) else
                     "superlative" if ("largest" in text or "smallest" in text) else "simple")
        # an independent check of the simplest form: "the COLOUR KIND" names a unique pair
        words = text.split()
        if len(words) == 3 and words[0] == "the" and words[1] in COLOURS and words[2] != "shape":
            assert [s.id for s in scene.shapes if s.colour == words[1] and s.kind == words[2]] == ids
    assert families == {"simple", "relation", "superlative", "multi"}


def test_resolver_rejects_ambiguous_and_unknown():
    scene = Scene.from_dict({"width": 100, "height": 100, "size_margin": 1.3, "shapes": [
        {"id": 0, "kind": "circle", "colour": "red", "size": 20, "x": 0, "y": 0},
        {"id": 1, "kind": "circle", "colour": "red", "size": 22, "x": 50, "y": 0},
        {"id": 2, "kind": "star", "colour": "blue", "size": 40, "x": 0, "y": 50},
    ]})
    with pytest.raises(ExpressionError, match="names 2 shapes"):
        resolve("the red circle", scene)
    with pytest.raises(ExpressionError, match="no clearly largest"):
        resolve("the largest circle", scene)  # 22 vs 20 px is within the margin
    assert resolve("the circle right of the star", scene) == [1]
    with pytest.raises(ExpressionError, match="names 2 shapes"):
        resolve("the circle above the star", scene)  # both circles are wholly above it
    assert resolve("all red shapes", scene) == [0, 1]
    assert resolve("the star and the circle right of the star", scene) == [1, 2]
    with pytest.raises(ExpressionError, match="twice"):
        resolve("the star and the blue shape", scene)
    with pytest.raises(ExpressionError):
        resolve("the green circle", scene)
    with pytest.raises(ExpressionError):
        resolve("a red blob", scene)
    assert holds("below", scene.shapes[2], scene.shapes[0])


@pytest.mark.parametrize("kind", ["vqa", "rl"])
def test_answers_correct_by_construction(kind):
    types = set()
    for sample in generate_samples(kind, 40, SMALL, seed=5):
        assert isinstance(sample, VQASample)
        scene = Scene.from_dict(sample.extra["scene"])
        assert answer_question(sample.question, scene) == sample.answer
        types.add(sample.extra["question_type"])
        ids = sample.extra["target_ids"]
        assert len(sample.region_masks) == len(ids)
        for mask, shape_id in zip(sample.region_masks, ids, strict=True):
            np.testing.assert_array_equal(mask.decode(), visible_mask(scene, [shape_id]))
        if sample.options:
            assert sample.answer_type == "choice"
            assert sample.options[ord(sample.answer_letter) - ord("A")] == sample.answer
            assert len(set(sample.options)) == len(sample.options)
    assert types >= {"colour", "shape", "position"} | ({"count"} if kind == "rl" else set())


def test_vqa_has_both_multiple_choice_and_free_text():
    samples = list(generate_samples("vqa", 30, SMALL, seed=2))
    assert {s.answer_type for s in samples} == {"choice", "text"}


def test_large_canvas_small_target():
    config = ShapesConfig(width=1024, height=768, min_size=24, max_size=160, target_min_size=24,
                          target_max_size=32, clutter=200, background_noise=8.0)
    for sample in generate_samples("vqa", 3, config, seed=0):
        scene = Scene.from_dict(sample.extra["scene"])
        target = scene.shapes[-1]
        assert 24 <= target.size <= 32 and target.id in sample.extra["target_ids"]
        assert sample.image.load().size == (1024, 768)
        assert answer_question(sample.question, scene) == sample.answer


def test_config_is_checked():
    with pytest.raises(UsageError, match="min_size"):
        ShapesConfig(width=32, height=32, min_size=8, max_size=64)
    with pytest.raises(UsageError, match="colours"):
        ShapesConfig(colours=("red", "mauve"))
    with pytest.raises(UsageError, match="could not place"):
        list(generate_samples("refseg", 1, ShapesConfig(width=32, height=32, min_size=30, max_size=32,
                                                       min_objects=6, max_objects=6), seed=0))


def test_demo_world_asks_about_a_small_target_with_simple_or_superlative_descriptions():
    from seganswer_cli.data.shapes_language import RELATIONS
    from seganswer_cli.data.shapes_scenes import DEMO_COLOURS, DEMO_KINDS, world

    config = world("demo")
    types = set()
    for sample in generate_samples("vqa", 30, config, seed=3):
        scene = Scene.from_dict(sample.extra["scene"])
        target = scene.shapes[-1]
        assert sample.image.load().size == (640, 480)
        assert 20 <= target.size <= 32 and sample.extra["target_ids"] == [target.id]
        assert all(s.kind in DEMO_KINDS and s.colour in DEMO_COLOURS for s in scene.shapes)
        assert not any(rel in sample.question for rel in RELATIONS)
        assert answer_question(sample.question, scene) == sample.answer
        types.add(sample.extra["question_type"])
    assert types == {"colour", "shape"}
    assert all(not s.options for s in generate_samples("vqa", 30, config, seed=3))  # free text only
    assert world("demo", clutter=0).clutter == 0 and world("demo").clutter == 12  # overrides copy
    with pytest.raises(UsageError, match="unknown shapes world"):
        world("moon")


def test_question_types_and_expression_families_are_checked():
    with pytest.raises(UsageError, match="question_types"):
        ShapesConfig(question_types=("colour", "smell"))
    with pytest.raises(UsageError, match="expressions"):
        ShapesConfig(expressions=("relation",))


def test_qseg_pairs_a_question_with_the_mask_of_the_region_answering_it():
    from seganswer_cli.data.shapes_scenes import world

    for sample in generate_samples("qseg", 12, world("demo"), seed=4):
        assert isinstance(sample, SegSample) and sample.id.startswith("shapes:qseg:")
        scene = Scene.from_dict(sample.extra["scene"])
        answer_question(sample.expression, scene)  # a question of the world, answerable
        np.testing.assert_array_equal(sample.mask.decode(), visible_mask(scene, sample.extra["target_ids"]))


def test_near_target_puts_a_distractor_next_to_the_target():
    """``near_target``: the target's box lies within its own size of some distractor's box, so a
    box crop around it holds part of that distractor."""
    from seganswer_cli.data.shapes_scenes import world

    def gap(a, b):  # pixels between two boxes (0 when they overlap)
        dx = max(0, max(a["x"], b["x"]) - min(a["x"] + a["size"], b["x"] + b["size"]))
        dy = max(0, max(a["y"], b["y"]) - min(a["y"] + a["size"], b["y"] + b["size"]))
        return max(dx, dy)

    def near_share(config):
        near = 0
        for sample in generate_samples("vqa", 40, config, seed=8):
            *others, target = sample.extra["scene"]["shapes"]
            near += min(gap(target, o) for o in others) <= target["size"]
        return near / 40

    assert near_share(world("demo")) >= 0.75
    assert near_share(world("demo", near_target=0.0)) <= 0.4
    with pytest.raises(UsageError, match="near_target"):
        ShapesConfig(near_target=1.5)
