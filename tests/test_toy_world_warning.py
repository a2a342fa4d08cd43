"""A toy-world model (the shipped ``shapes``) shown a picture that is not a shapes scene says so:
``images.flat_colour_share`` tells flat-coloured drawings from photos, ``reasoning.world_warning``
turns it into the warning ``infer`` prints (``warning`` in ``--json`` and in ``--batch`` records)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cli_helpers import run_cli
from seganswer_cli.data.shapes_scenes import WORLDS, generate_scene, render
from seganswer_cli.images import flat_colour_share
from seganswer_cli.reasoning import TOY_WORLD_SHARE, world_warning


def _jpeg(image: Image.Image, quality: int = 85) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _photo_like(seed: int, size=(480, 360)) -> Image.Image:
    """Smooth random colour fields at three scales plus sensor grain, saved as a JPEG: what a photo's
    colour statistics look like (no flat regions, thousands of colours)."""
    rng = np.random.default_rng(seed)
    w, h = size
    field = np.zeros((h, w, 3))
    for cells, weight in ((4, 90.0), (16, 45.0), (64, 20.0)):
        coarse = Image.fromarray(rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8))
        field += weight / 155 * (np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float64) - 128)
    pixels = np.clip(128 + field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
    return _jpeg(Image.fromarray(pixels))


def _colour_gradient(size=(400, 300)) -> Image.Image:
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    return Image.fromarray(np.stack([x, y, 255 - (x + y) / 2], axis=-1).astype(np.uint8))


def _drawn_shapes() -> Image.Image:
    """Shapes drawn with Pillow in other shades than the generator's, on white."""
    image = Image.new("RGB", (500, 400), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 160, 160), fill=(255, 0, 0))
    draw.rectangle((300, 200, 340, 240), fill=(0, 0, 255))
    draw.polygon([(200, 350), (260, 250), (320, 350)], fill=(0, 200, 0), outline="black")
    return image


@pytest.mark.parametrize("name", ["demo", "wide", "closeup", "vstar-like", "default"])
def test_every_shapes_world_scene_is_flat_coloured_even_as_a_jpeg(name):
    config = WORLDS[name]
    rng = np.random.default_rng(7)
    shares = []
    for _ in range(12):
        image = Image.fromarray(render(generate_scene(config, rng), config, rng))
        shares += [flat_colour_share(image), flat_colour_share(_jpeg(image, 75))]
    assert min(shares) >= 0.95, (name, min(shares))


def test_drawings_are_flat_and_photos_and_colour_gradients_are_not():
    assert flat_colour_share(_drawn_shapes()) >= 0.99
    assert flat_colour_share(_jpeg(_drawn_shapes(), 60)) >= 0.95
    photos = [flat_colour_share(_photo_like(seed)) for seed in range(6)]
    assert max(photos) < 0.75, photos  # the warning below 0.9
    assert flat_colour_share(_colour_gradient()) < 0.5
    # a few pixels or a 1x1 picture: measured, no error
    assert flat_colour_share(Image.new("RGB", (1, 1), "red")) == 1.0


def test_the_warning_is_the_toy_world_models_only():
    toy, general = SimpleNamespace(info={"preset": "shapes-base"}), SimpleNamespace(info={"preset": "qwen2.5-vl-7b"})
    photo, scene = _photo_like(0), _drawn_shapes()
    warning = world_warning(toy, photo)
    assert warning is not None and "toy-world model" in warning and "%" in warning
    assert world_warning(toy, scene) is None
    assert world_warning(general, photo) is None and world_warning(SimpleNamespace(info={}), photo) is None
    assert world_warning(SimpleNamespace(info={"preset": "shapes-base-qwen3-vl"}), photo) is not None
    assert 0.5 < TOY_WORLD_SHARE < 1


def test_infer_with_the_shipped_model_warns_on_a_photo_and_not_on_a_scene(monkeypatch, capsys, tmp_path):
    photo, scene = tmp_path / "photo.jpg", tmp_path / "scene.png"
    _photo_like(3).save(photo)
    _drawn_shapes().save(scene)
    records = {}
    for path in (photo, scene):
        code, out, err = run_cli(monkeypatch, capsys, "infer", path, "What colour is the circle?", "--json")
        assert code in (0, 3), err  # 3: no answer (a result, not a failure)
        records[path.name] = json.loads(out)
    assert "toy-world model" in records["photo.jpg"]["warning"]
    assert "warning" not in records["scene.png"]

    batch = tmp_path / "questions.jsonl"
    batch.write_text("".join(json.dumps({"id": p.stem, "image": str(p), "question": "Is there a red circle?"}) + "\n"
                             for p in (photo, scene)))
    code, out, err = run_cli(monkeypatch, capsys, "infer", "--batch", batch, "--out", tmp_path / "answers.jsonl", "-q")
    assert code == 0, err
    answers = {r["id"]: r for r in map(json.loads, (tmp_path / "answers.jsonl").read_text().splitlines())}
    assert "toy-world model" in answers["photo"]["warning"] and "warning" not in answers["scene"]


@pytest.mark.parametrize("as_json", [True, False])
def test_a_question_outside_the_shipped_models_vocabulary_is_a_result(monkeypatch, capsys, tmp_path, as_json):
    scene = tmp_path / "scene.png"
    _drawn_shapes().save(scene)
    code, out, err = run_cli(monkeypatch, capsys, "infer", scene, "What is the capital of France?",
                             *(["--json"] if as_json else []))
    assert code in (0, 3) and "Traceback" not in err, err  # an answer, or "no answer" (exit 3)
    if as_json:
        record = json.loads(out)
        assert (record["answer"] is None) == (code == 3)
        assert record["answer"] is not None or record["answer_reason"]
        assert "the question names no colour, shape or count" in record["warning"]
        assert "pixels" not in record["warning"]  # the picture itself is of its world
    else:
        assert "warning: this is a toy-world model" in " ".join(err.split())
        if code == 3:
            assert "no answer: " in err


def test_questions_of_the_world_are_recognised_in_their_phrasings():
    from seganswer_cli.data.shapes_language import about_the_world

    for question in ["What colour is the small square?", "What color is the star?", "How many circles are there?",
                     "Is there a blue triangle in the image?", "Which object is biggest?", "what's the tiny thing's colour"]:
        assert about_the_world(question), question
    for question in ["What is the capital of France?", "Describe this picture.", "Who painted it?"]:
        assert not about_the_world(question), question
