"""The 7B presets: the paper's view (no zoom) by default, the zoom a named preset, the pixel budget
stated; the built-in presets and the shipped model keep their own view."""

import json
from dataclasses import asdict

from seganswer_cli.model.presets import QWEN_7B_PIXELS, SHAPES_VIEW, get_preset, packaged_folder


def test_7b_preset_keeps_original_positions_and_zoom_is_named():
    assert get_preset("qwen2.5-vl-7b").view.zoom is False
    zoom = get_preset("qwen2.5-vl-7b-zoom")
    assert zoom.view.zoom is True
    assert (zoom.mllm, zoom.sam) == (get_preset("qwen2.5-vl-7b").mllm, get_preset("qwen2.5-vl-7b").sam)


def test_other_presets_and_the_shipped_model_keep_their_view():
    assert get_preset("tiny").view.zoom is True
    assert get_preset("shapes-base").view == SHAPES_VIEW and get_preset("shapes").view == SHAPES_VIEW
    card = json.loads((packaged_folder("shapes") / "seganswer.json").read_text())
    assert card["view"] == json.loads(json.dumps(asdict(SHAPES_VIEW)))


def test_7b_pixel_budget_of_a_full_hd_photo():
    """Qwen2.5-VL-7B-Instruct's own processor budget: a 1920x1080 photo is 2,691 visual tokens."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    min_pixels, max_pixels = QWEN_7B_PIXELS
    assert (min_pixels, max_pixels) == (3136, 12845056)
    h, w = smart_resize(1080, 1920, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    assert (h, w) == (1092, 1932) and (h // 28) * (w // 28) == 2691
