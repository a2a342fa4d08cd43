"""Sequence layout: ids, 3-D positions across dense and sparse images, loss mask, padding."""

import numpy as np
import torch

from seganswer_cli.model import tokens
from seganswer_cli.model.conversation import stage1_sequence
from seganswer_cli.model.sequence import IGNORE_INDEX


def test_reasoning_conversation_positions_and_targets(tiny_model, noise_image, blob_mask):
    model = tiny_model
    dense = model.global_view(noise_image)
    view = model.segmented_view(noise_image, blob_mask, zoom=True)
    b = model.builder().system()
    b.user(tokens.reasoning_prompt("What colour is the disc?"), image=dense)
    b.assistant(tokens.SEG_RESPONSE)
    b.user("", view=view)
    b.assistant(tokens.answer_response("red"))
    seq = b.build()

    ids = seq.input_ids
    pads = torch.nonzero(ids == model.token_ids.image_pad).flatten()
    assert pads.numel() == dense.num_tokens + view.num_tokens
    first, second = pads[: dense.num_tokens], pads[dense.num_tokens :]
    base = seq.image_bases[0]
    # Dense image: (base, base + r, base + c).
    torch.testing.assert_close(seq.position_ids[:, first], dense.relative_positions() + base)
    # Segmented view: the same base, original-grid coordinates.
    torch.testing.assert_close(seq.position_ids[:, second], view.positions + base)
    # Text after the segmented view continues from the largest position so far + 1.
    after = int(second[-1]) + 1  # <|vision_end|>
    assert seq.position_ids[0, after] == seq.position_ids[:, : after].max() + 1
    # Positions of text tokens are equal on all three axes and strictly increasing.
    text = ids != model.token_ids.image_pad
    p = seq.position_ids[:, text]
    assert torch.equal(p[0], p[1]) and torch.equal(p[1], p[2])
    assert (p[0][1:] > p[0][:-1]).all()

    # Targets: exactly the two assistant replies and their <|im_end|>.
    target_text = model.tokenizer.decode(ids[seq.target_mask])
    assert target_text == tokens.SEG_RESPONSE + tokens.IM_END + tokens.answer_response("red") + tokens.IM_END
    assert seq.seg_positions(model.token_ids.seg).numel() == 1
    labels = seq.labels()
    assert (labels[~seq.target_mask] == IGNORE_INDEX).all()


def test_bbox_view_gets_fresh_positions(tiny_model, noise_image, blob_mask):
    model = tiny_model
    dense = model.global_view(noise_image)
    view = model.segmented_view(noise_image, blob_mask, mode="bbox")
    b = model.builder().user("q", image=dense)
    before = b.next_position
    seq = b.user("", view=view).build()
    pads = torch.nonzero(seq.input_ids == model.token_ids.image_pad).flatten()[dense.num_tokens :]
    assert float(seq.position_ids[0, pads].min()) > before  # after everything so far


def test_left_and_right_padding(tiny_model, noise_image):
    model = tiny_model
    dense = model.global_view(noise_image)
    long = stage1_sequence(model, dense, "the largest red circle on the left")
    short = stage1_sequence(model, dense, "it")
    for side in ("left", "right"):
        batch = model.collate([long, short], padding_side=side)
        n = len(short)
        row = batch.attention_mask[1]
        assert int(row.sum()) == n
        real = row.bool()
        assert torch.equal(batch.input_ids[1, real], short.input_ids)
        assert torch.equal(batch.position_ids[:, 1, real], short.position_ids)
        start = batch.visuals[1][0].start
        assert (batch.input_ids[1, start : start + dense.num_tokens] == model.token_ids.image_pad).all()
    # Same logits for the short sequence alone and inside a left-padded batch.
    with torch.no_grad():
        alone = model.collate([short])
        h1 = model.language_model(model.embed(alone), alone.position_ids, alone.attention_mask).last_hidden_state
        both = model.collate([long, short], padding_side="left")
        h2 = model.language_model(model.embed(both), both.position_ids, both.attention_mask).last_hidden_state
    torch.testing.assert_close(h2[1, -len(short) :], h1[0], atol=1e-5, rtol=1e-4)
    assert np.isfinite(h2.numpy()).all()


def test_builder_tail_equals_the_built_sequence_tail(tiny_model, noise_image, blob_mask):
    model = tiny_model
    b = model.builder().system()
    b.user(tokens.reasoning_prompt("q"), image=model.global_view(noise_image))
    b.token_ids([5, 6, 7], target=True)
    b.text("\n").user("", view=model.segmented_view(noise_image, blob_mask))
    b.token_ids([8], target=True)
    whole = b.build()
    for start in (0, 1, len(whole) - 30, len(whole) - 1, whole.visuals[1].start - 3):
        a, c = b.tail(start), whole.tail(start)
        assert torch.equal(a.input_ids, c.input_ids) and torch.equal(a.position_ids, c.position_ids)
        assert torch.equal(a.target_mask, c.target_mask)
        assert [(v.start, v.length) for v in a.visuals] == [(v.start, v.length) for v in c.visuals]
    assert b.ids_from(len(whole) - 1) == [8]
