"""M-RoPE positions of the two-turn conversations, anchored to transformers' ``get_rope_index``,
on each backbone (Qwen2.5-VL and Qwen3-VL: each model's own ``get_rope_index``).

The box-crop second look (``bbox``) is a plain two-image conversation, so every position equals
``get_rope_index``'s. The mask view (the paper's, as the 7B preset builds it: no zoom) is not a
conversation transformers can lay out: its first turn equals ``get_rope_index``, each kept cell
carries exactly the position the first image gave that cell, and the text after it continues by
the rule of ``sequence.py``: from the largest position so far + 1, one per token.
"""

from dataclasses import asdict

import pytest
import torch

from seganswer_cli.model import tokens
from seganswer_cli.model.conversation import reasoning_sequence
from seganswer_cli.model.presets import get_preset

QUESTION, ANSWER = "What colour is the disc?", "red"


def _first_turn_text() -> str:
    return (tokens.system_turn() + tokens.user_turn_open() + tokens.image_placeholder()
            + tokens.reasoning_prompt(QUESTION) + tokens.turn_close() + tokens.assistant_turn_open()
            + tokens.SEG_RESPONSE + tokens.IM_END + "\n")


def _second_turn_text() -> str:
    return (tokens.user_turn_open() + tokens.image_placeholder() + tokens.turn_close()
            + tokens.assistant_turn_open() + tokens.answer_response(ANSWER) + tokens.IM_END + "\n")


def _rope_index(model, text: str, images):
    ref = model.processor(text=[text], images=images, return_tensors="pt")
    positions, _ = model.mllm.model.get_rope_index(
        ref["input_ids"], ref["mm_token_type_ids"], image_grid_thw=ref["image_grid_thw"],
        attention_mask=ref["attention_mask"],
    )
    return ref, positions[:, 0].float()  # (3, S)


@pytest.mark.parametrize("zoom", [False, True])
def test_box_crop_conversation_equals_get_rope_index(backbone_model, noise_image, blob_mask, zoom):
    model = backbone_model
    view = model.segmented_view(noise_image, blob_mask, mode="bbox", zoom=zoom)
    seq = reasoning_sequence(model, model.global_view(noise_image), QUESTION, ANSWER, view=view)
    ref, positions = _rope_index(model, _first_turn_text() + _second_turn_text(), [noise_image, view.segmented_image])

    assert torch.equal(seq.input_ids, ref["input_ids"][0])
    assert torch.equal(seq.position_ids, positions)
    # the crop is what the processor makes of the crop image: same grid, same pixels
    assert torch.equal(view.crop.grid_thw, ref["image_grid_thw"][1])
    first = model.global_view(noise_image).pixel_values.shape[0]
    assert torch.equal(view.crop.pixel_values, ref["pixel_values"][first:])


def test_mask_view_keeps_the_first_images_positions(backbone_model, noise_image, blob_mask):
    model = backbone_model
    settings = asdict(get_preset("qwen2.5-vl-7b").view)  # the paper's view: no zoom
    dense = model.global_view(noise_image)
    view = model.segmented_view(noise_image, blob_mask, **settings)
    seq = reasoning_sequence(model, dense, QUESTION, ANSWER, view=view)
    ref, positions = _rope_index(model, _first_turn_text(), [noise_image])

    # the first turn is exactly transformers' layout
    n = ref["input_ids"].shape[1]
    assert torch.equal(seq.input_ids[:n], ref["input_ids"][0])
    assert torch.equal(seq.position_ids[:, :n], positions)

    # each kept cell carries the position of the same cell in the first image
    pads = torch.nonzero(seq.input_ids == model.token_ids.image_pad).flatten()
    first, kept = pads[: dense.num_tokens], pads[dense.num_tokens :]
    rows, cols = dense.grid
    r0, c0, _, _ = view.cell_box
    crop_cols = view.crop.grid[1]
    cells = (r0 + view.keep // crop_cols) * cols + (c0 + view.keep % crop_cols)  # index in the first image
    assert kept.numel() == view.num_tokens > 0
    assert torch.equal(seq.position_ids[:, kept], positions[:, first[cells]])
    # ... and the mask's own cells: every cell the mask touches, no other (the first image's grid)
    touched = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(blob_mask)[None, None].float(), (rows, cols))[0, 0] > 0
    assert sorted(cells.tolist()) == torch.nonzero(touched.flatten()).flatten().tolist()
    # a cell the mask covers fully is the first image's cell, pixel for pixel (4 patch rows per cell)
    full = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(blob_mask)[None, None].float(), (rows, cols))[0, 0] == 1
    k = next(i for i, c in enumerate(cells.tolist()) if full.flatten()[c])
    crop_rows = view.crop.pixel_values.view(-1, 4, view.crop.pixel_values.shape[-1])  # (crop cells, 4, C * 2 * patch * patch)
    dense_rows = dense.pixel_values.view(-1, 4, dense.pixel_values.shape[-1])  # (cells, 4, C * 2 * patch * patch)
    assert torch.equal(crop_rows[int(view.keep[k])], dense_rows[int(cells[k])])

    # the text after it: <|vision_end|> at the largest position so far + 1, then one per token
    end = int(kept[-1]) + 1
    assert seq.input_ids[end] == model.token_ids.vision_end
    after = seq.position_ids[:, end:]
    expected = seq.position_ids[:, :end].max() + 1 + torch.arange(after.shape[1]).float()
    assert torch.equal(after, expected.expand(3, -1))
    tail = model.tokenizer(tokens.turn_close() + tokens.assistant_turn_open() + tokens.answer_response(ANSWER)
                           + tokens.IM_END + "\n", add_special_tokens=False)["input_ids"]
    assert seq.input_ids[end + 1 :].tolist() == tail


def test_mask_view_positions_are_integers_without_zoom(backbone_model, noise_image, blob_mask):
    view = backbone_model.segmented_view(noise_image, blob_mask, **asdict(get_preset("qwen2.5-vl-7b").view))
    assert torch.equal(view.positions, view.positions.round())
    # zoomed to 4x the cells (a crop at native size may happen to fall on the global grid's cells)
    processor = backbone_model.image_processor
    cell = processor.patch_size * processor.merge_size
    pixels = 4 * view.crop.num_tokens * cell * cell
    zoom = {**asdict(get_preset("qwen2.5-vl-7b-zoom").view), "zoom_min_pixels": pixels, "zoom_max_pixels": pixels}
    zoomed = backbone_model.segmented_view(noise_image, blob_mask, **zoom)
    assert not torch.equal(zoomed.positions, zoomed.positions.round())  # the departure: fractional positions
