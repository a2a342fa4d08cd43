"""The wide shapes world: many canvases and backgrounds, every prompt format, answers re-derived,
the POPE layout read by ``eval pope``, and questions written the way people write them parsed."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from seganswer_cli.data.shapes_datasets import POPE_SETTINGS, generate_samples, write_pope_layout
from seganswer_cli.data.shapes_language import QUESTION_TEMPLATES, answer_question, resolve
from seganswer_cli.data.shapes_scenes import (
    BACKGROUND,
    COLOURS,
    MIN_CONTRAST,
    Scene,
    Shape,
    local_visible_masks,
    visible_mask,
    world,
)
from seganswer_cli.errors import UsageError
from seganswer_cli.model.conversation import (
    LLAVA_INSTRUCTION,
    VLMEVALKIT_INSTRUCTION,
    YES_NO_INSTRUCTION,
    prompt_and_answer,
)

# the wide world on smaller canvases, so that many samples are made in a second or two
WIDE = world("wide", canvas_sides=(120, 320), max_canvas_pixels=320 * 240, max_size=48, target_max_size=30)


@pytest.fixture(scope="module")
def wide_samples():
    return list(generate_samples("vqa", 240, WIDE, seed=11))


def test_canvases_and_backgrounds_vary_within_their_bounds(wide_samples):
    sizes, backgrounds = set(), set()
    for sample in wide_samples[:80]:
        scene = Scene.from_dict(sample.extra["scene"])
        image = np.asarray(sample.image.load())
        assert image.shape == (scene.height, scene.width, 3)
        assert 120 <= scene.width <= 320 and 120 <= scene.height <= 320
        assert scene.width * scene.height <= 320 * 240
        assert max(scene.width, scene.height) <= 2.5 * min(scene.width, scene.height)
        assert all(np.linalg.norm(np.subtract(scene.background, c)) >= MIN_CONTRAST for c in COLOURS.values())
        sizes.add((scene.width, scene.height))
        backgrounds.add(scene.background)
        # every visible shape pixel is exactly its colour, whatever the background and its noise
        for shape, local in zip(scene.shapes, local_visible_masks(scene.shapes), strict=True):
            window = image[shape.y:shape.y + shape.size, shape.x:shape.x + shape.size]
            assert (window[local] == COLOURS[shape.colour]).all()
    assert len(sizes) > 60 and len(backgrounds) > 60
    noises = [Scene.from_dict(x.extra["scene"]).noise for x in wide_samples]
    assert 0.6 < np.mean([n == 0 for n in noises]) < 0.9 and max(noises) > 6  # plain in ~3 of 4, else noisy
    assert any(s.width > s.height for s in map(Scene.from_dict, (x.extra["scene"] for x in wide_samples[:80])))
    assert any(s.width < s.height for s in map(Scene.from_dict, (x.extra["scene"] for x in wide_samples[:80])))


def test_every_format_and_phrasing_is_asked_and_answered_right(wide_samples):
    formats, phrasings, counts = Counter(), set(), Counter()
    for sample in wide_samples:
        scene = Scene.from_dict(sample.extra["scene"])
        assert answer_question(sample.question, scene) == sample.answer
        prompt, answer = prompt_and_answer(sample)
        layout = sample.extra.get("prompt_format", "free")
        formats[layout] += 1
        counts[len(scene.shapes)] += 1
        if layout == "yesno":
            assert prompt == f"{sample.question}\n{YES_NO_INSTRUCTION}" and answer in ("yes", "no")
        elif layout == "vstar":
            assert prompt.endswith(LLAVA_INSTRUCTION) and "\n(A) " in prompt and answer == sample.answer_letter
        elif layout == "mmbench":
            assert prompt.startswith("Question: ") and "\nOptions:\nA. " in prompt
            assert prompt.endswith(VLMEVALKIT_INSTRUCTION) and answer == sample.answer_letter
        else:
            assert prompt == sample.question and answer == sample.answer
        if sample.options:
            assert sample.options[ord(sample.answer_letter) - ord("A")] == sample.answer
        for mask, shape_id in zip(sample.region_masks, sample.extra["target_ids"], strict=True):
            np.testing.assert_array_equal(mask.decode(), visible_mask(scene, [shape_id]))
        phrasings.add(next(t for qtype, ts in QUESTION_TEMPLATES.items() for t in ts
                           if answer_question_matches(t, sample.question)))
    n = len(wide_samples)
    # the mix the world states: 20 % yes/no, 35 % multiple choice in two layouts, the rest free text
    assert abs(formats["yesno"] / n - 0.20) < 0.07
    assert abs((formats["vstar"] + formats["mmbench"]) / n - 0.35) < 0.08
    assert min(formats["vstar"], formats["mmbench"]) > 0.1 * n
    yes = [s.answer for s in wide_samples if s.extra.get("prompt_format") == "yesno"]
    assert 0.3 < yes.count("yes") / len(yes) < 0.7
    assert len(phrasings) >= 12
    assert min(counts) == 1 and max(counts) >= 9


def answer_question_matches(template: str, question: str) -> bool:
    from seganswer_cli.data.shapes_language import _pattern

    return _pattern(template).match(question) is not None


def test_questions_written_by_people_are_parsed():
    # a plain picture: a red circle and a small blue square (not a generated scene)
    scene = Scene(width=640, height=480, background=(220, 220, 220), shapes=[
        Shape(id=0, kind="circle", colour="red", size=120, x=100, y=150),
        Shape(id=1, kind="square", colour="blue", size=30, x=450, y=300)])
    assert answer_question("What colour is the small square?", scene) == "blue"
    assert answer_question("what color is the tiny object?", scene) == "blue"
    assert answer_question("The big shape is what shape?", scene) == "circle"
    assert answer_question("Is there a red circle in the image?", scene) == "yes"
    assert answer_question("Is there a blue circle in the image?", scene) == "no"
    assert answer_question("Is the small shape a square?", scene) == "yes"
    assert answer_question("Is the square left or right of the circle?", scene) == "right"
    assert resolve("the large object", scene) == [0]


def test_pope_layout_is_read_by_eval_pope_and_follows_its_settings(tmp_path):
    from seganswer_cli.eval import get_benchmark

    out = write_pope_layout(tmp_path / "pope", 12, WIDE, seed=4)
    data = get_benchmark("pope").read(out)
    assert not data.missing and len(data.items) == 3 * 2 * 12
    assert Counter(i.answer for i in data.items) == {"yes": 36, "no": 36}
    for setting in POPE_SETTINGS:
        for line in (out / f"coco_pope_{setting}.json").read_text().splitlines():
            record = json.loads(line)
            assert record["text"].startswith("Is there a ") and record["text"].endswith(" in the image?")
    # each "no" is absent from its scene, and adversarial ones name colours and kinds the scene has
    from seganswer_cli.data.shapes_datasets import _absent, _sample_rng
    from seganswer_cli.data.shapes_scenes import generate_scene

    for index in range(12):
        scene = generate_scene(WIDE, _sample_rng(4, "pope", index), small_target=True)
        rng = np.random.default_rng(index)
        colour, kind = _absent(scene, WIDE, "adversarial", rng)
        assert not any(s.colour == colour and s.kind == kind for s in scene.shapes)
        colours, kinds = {s.colour for s in scene.shapes}, {s.kind for s in scene.shapes}
        present = {(s.colour, s.kind) for s in scene.shapes}
        if any((c, k) not in present for c in colours for k in kinds):  # a binding error is possible
            assert colour in colours and kind in kinds


def test_the_older_worlds_are_unchanged():
    # the demo world draws nothing new: one canvas, the mid grey, the original wordings, no yes/no
    for sample in generate_samples("vqa", 20, world("demo"), seed=3):
        scene = Scene.from_dict(sample.extra["scene"])
        assert (scene.width, scene.height, scene.background, scene.noise) == (640, 480, BACKGROUND, 0.0)
        assert answer_question_matches(QUESTION_TEMPLATES[sample.extra["question_type"]][0], sample.question)
        assert "prompt_format" not in sample.extra


def test_wide_settings_are_checked():
    with pytest.raises(UsageError, match="multiple_choice \\+ yes_no"):
        replace(WIDE, multiple_choice=0.9, yes_no=0.2)
    with pytest.raises(UsageError, match="mc_layouts"):
        replace(WIDE, mc_layouts=("vstar", "seedbench"))
    with pytest.raises(UsageError, match="canvas_sides"):
        replace(WIDE, canvas_sides=(8, 100))
    with pytest.raises(UsageError, match="min_size"):
        replace(WIDE, canvas_sides=(40, 100))
