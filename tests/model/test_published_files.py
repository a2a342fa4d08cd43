"""On the real published non-weight files of ``Qwen/Qwen2.5-VL-7B-Instruct``
(tests/fixtures/qwen2.5-vl-7b-instruct: tokenizer, chat template, processor, configs): our prompts
are what the published chat template and processor make of the same conversation, the M-RoPE
positions of a model built from the published config are ``get_rope_index``'s (box crop) or the
first image's cells (mask view), and ``<|seg|>`` sits on a spare embedding row.

The reference is the published processor itself (``AutoProcessor`` on the fixture folder), not the
one our model loaded; the model is the shrunk random-weight folder built from the published config
(``published_mllm.py``) through ``seganswer model init qwen2.5-vl-7b``.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from published_mllm import REAL_DIR, embedding_rows, real_files_present
from seganswer_cli.model import SegAnswerModel, tokens
from seganswer_cli.model.conversation import reasoning_sequence, reasoning_start
from seganswer_cli.model.presets import get_preset

pytestmark = pytest.mark.skipif(not real_files_present(), reason=f"the published files are not in {REAL_DIR}")

QUESTION, ANSWER = "What is the colour of the umbrella?", "red"


@pytest.fixture(scope="module")
def real(published_model):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(REAL_DIR)
    published_length = len(processor.tokenizer)
    # the one token the paper adds (the reasoning instruction names it, so prompts hold it too)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [tokens.SEG_TOKEN]})
    return SegAnswerModel.from_pretrained(published_model), processor, published_length


def _conversation(second_image: bool) -> list[dict]:
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": tokens.reasoning_prompt(QUESTION)}]}]
    if second_image:
        turns += [{"role": "assistant", "content": [{"type": "text", "text": tokens.SEG_RESPONSE}]},
                  {"role": "user", "content": [{"type": "image"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": tokens.answer_response(ANSWER)}]}]
    return turns


def _rope_index(model, ref) -> torch.Tensor:
    positions, _ = model.mllm.model.get_rope_index(
        ref["input_ids"], ref["mm_token_type_ids"], image_grid_thw=ref["image_grid_thw"],
        attention_mask=ref["attention_mask"])
    return positions[:, 0].float()


def test_the_fixture_holds_the_published_tokenizer(real, published_mllm):
    model, processor, published_length = real
    published = processor.tokenizer
    assert published_length == 151665 and published("Hello world")["input_ids"] == [9707, 1879]
    for token, expected in [(tokens.END_OF_TEXT, 151643), (tokens.IM_START, 151644), (tokens.IM_END, 151645),
                            (tokens.VISION_START, 151652), (tokens.VISION_END, 151653), (tokens.IMAGE_PAD, 151655)]:
        assert published.convert_tokens_to_ids(token) == expected == model.tokenizer.convert_tokens_to_ids(token)
    # ours is the published one plus <|seg|>, on the first spare row of the 152064
    assert len(model.tokenizer) == 151666 and model.token_ids.seg == 151665 == published.convert_tokens_to_ids(tokens.SEG_TOKEN)
    assert embedding_rows(published_mllm) == 152064 == model.mllm.get_input_embeddings().weight.shape[0]


def test_prompt_1_is_the_published_chat_template_and_processor(real, noise_image):
    model, processor, _ = real
    text = processor.apply_chat_template(_conversation(False), add_generation_prompt=True)
    ref = processor(text=[text], images=[noise_image], return_tensors="pt")
    dense = model.global_view(noise_image)
    seq = reasoning_start(model, dense, QUESTION).build()

    assert torch.equal(seq.input_ids, ref["input_ids"][0])
    assert torch.equal(dense.grid_thw, ref["image_grid_thw"][0])
    assert torch.equal(dense.pixel_values.float(), ref["pixel_values"].float())
    assert torch.equal(seq.position_ids, _rope_index(model, ref))


def test_box_crop_conversation_is_the_published_layout(real, noise_image, blob_mask):
    model, processor, _ = real
    view = model.segmented_view(noise_image, blob_mask, mode="bbox", zoom=False)
    seq = reasoning_sequence(model, model.global_view(noise_image), QUESTION, ANSWER, view=view)
    text = processor.apply_chat_template(_conversation(True))
    ref = processor(text=[text], images=[noise_image, view.segmented_image], return_tensors="pt")

    assert torch.equal(seq.input_ids, ref["input_ids"][0])
    assert torch.equal(seq.position_ids, _rope_index(model, ref))
    assert torch.equal(view.crop.grid_thw, ref["image_grid_thw"][1])


def test_mask_view_keeps_the_first_images_positions_on_the_published_processor(real, noise_image, blob_mask):
    model, processor, _ = real
    dense = model.global_view(noise_image)
    view = model.segmented_view(noise_image, blob_mask, **asdict(get_preset("qwen2.5-vl-7b").view))  # no zoom
    seq = reasoning_sequence(model, dense, QUESTION, ANSWER, view=view)
    first_turn = processor.apply_chat_template(_conversation(False), add_generation_prompt=True) + tokens.SEG_RESPONSE
    ref = processor(text=[first_turn], images=[noise_image], return_tensors="pt")
    n = ref["input_ids"].shape[1]
    assert torch.equal(seq.input_ids[:n], ref["input_ids"][0])
    positions = _rope_index(model, ref)
    assert torch.equal(seq.position_ids[:, :n], positions)

    pads = torch.nonzero(seq.input_ids == model.token_ids.image_pad).flatten()
    first, kept = pads[: dense.num_tokens], pads[dense.num_tokens:]
    cols = dense.grid[1]
    r0, c0, _, _ = view.cell_box
    crop_cols = view.crop.grid[1]
    cells = (r0 + view.keep // crop_cols) * cols + (c0 + view.keep % crop_cols)
    assert kept.numel() == view.num_tokens > 0
    assert torch.equal(seq.position_ids[:, kept], positions[:, first[cells]])
