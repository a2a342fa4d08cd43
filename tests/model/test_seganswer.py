"""SegAnswerModel: masks from <|seg|>, gradients, save/load, errors."""

import json

import numpy as np
import pytest
import torch

from seganswer_cli.errors import ModelFolderError, SegTokenError, UsageError
from seganswer_cli.model import SegAnswerModel, tokens
from seganswer_cli.model.conversation import exchange_sequence, stage1_sequence


def test_seg_token_maps_to_masks_of_the_image_size(tiny_model, noise_image, blob_mask):
    mask, iou, obj = tiny_model.segment(noise_image, "the disc")
    assert mask.shape == (180, 240) and mask.dtype == bool
    assert 0.0 <= obj <= 1.0 and np.isfinite(iou)


def test_several_seg_tokens_give_several_masks(tiny_model, noise_image, blob_mask):
    seq = stage1_sequence(tiny_model, tiny_model.global_view(noise_image), "the disc and the bar",
                                     response=f"It is {tokens.SEG_TOKEN} and {tokens.SEG_TOKEN}.")
    other = np.zeros_like(blob_mask)
    other[10:20, 10:20] = True
    out = tiny_model([seq], [noise_image], [[blob_mask, other]])
    assert out.masks[0].low_res_logits.shape[0] == 2
    assert set(out.mask_loss_parts) == {"focal", "dice", "iou", "object_score"}


def test_gradients_reach_projector_and_decoder_not_the_frozen_encoder(noise_image, blob_mask):
    model = SegAnswerModel.from_preset("tiny").train()
    seq = stage1_sequence(model, model.global_view(noise_image), "the disc")
    out = model([seq], [noise_image], [[blob_mask]])
    out.loss.backward()
    sam = model.mask_decoder.sam
    assert model.projector.fc1.weight.grad.abs().sum() > 0
    assert sam.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad.abs().sum() > 0
    assert sam.mask_decoder.conv_s0.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in sam.vision_encoder.parameters())
    assert model.mllm.get_input_embeddings().weight.grad[model.token_ids.seg].abs().sum() > 0


def test_mask_losses_fall_when_training_projector_and_decoder(noise_image, blob_mask):
    model = SegAnswerModel.from_preset("tiny").train()
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    model.mask_decoder.sam.mask_decoder.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    seq = stage1_sequence(model, model.global_view(noise_image), "the disc")
    losses = []
    for _ in range(15):
        out = model([seq], [noise_image], [[blob_mask]])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append((out.loss - out.lm_loss).item())  # the projector cannot move the LM term
    assert losses[-1] < 0.7 * losses[0]


def test_save_then_load_gives_identical_outputs(tiny_model, noise_image, blob_mask, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "m", extra_info={"training": {"stage": "test"}})
    card = json.loads((folder / "seganswer.json").read_text())
    assert card["preset"] == "tiny" and card["format"] == "seganswer" and card["training"] == {"stage": "test"}
    assert "transformers" in card["versions"]
    loaded = SegAnswerModel.from_pretrained(folder)
    seq = stage1_sequence(tiny_model, tiny_model.global_view(noise_image), "the disc")
    with torch.no_grad():
        a = tiny_model([seq], [noise_image], [[blob_mask]])
        b = loaded([seq], [noise_image], [[blob_mask]])
    assert torch.equal(a.hidden_states, b.hidden_states)
    assert torch.equal(a.masks[0].low_res_logits, b.masks[0].low_res_logits)
    assert a.loss.item() == b.loss.item()
    assert loaded.token_ids == tiny_model.token_ids
    assert loaded.view_config == tiny_model.view_config


def test_a_click_is_encoded_in_the_image_positions_basis(tiny_model, tmp_path):
    """SAM 2.1 encodes prompt points and image positions with one random Fourier layer; a model
    built from random weights must too, and keep it through save and load."""
    for model in (tiny_model, SegAnswerModel.from_pretrained(tiny_model.save_pretrained(tmp_path / "m"))):
        decoder = model.mask_decoder
        pos = decoder.sam.get_image_wide_positional_embeddings()[0]  # (256, g, g)
        g, S = pos.shape[-1], decoder.image_size
        for i, j in ((0, 0), (g - 1, 2), (g // 2, g - 1)):
            xy = torch.tensor([[(j + 0.5) * S / g - 0.5, (i + 0.5) * S / g - 0.5]])  # cell (i, j)'s centre
            with torch.no_grad():
                click = decoder.point_prompts(xy)[0, 0] - decoder.sam.prompt_encoder.point_embed.weight[1]
            torch.testing.assert_close(click, pos[:, i, j], atol=1e-4, rtol=0)


def test_bad_model_folders_and_presets(tmp_path, tiny_model):
    with pytest.raises(UsageError, match="known presets"):
        SegAnswerModel.from_preset("huge")
    with pytest.raises(ModelFolderError, match="not found"):
        SegAnswerModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="seganswer.json"):
        SegAnswerModel.from_pretrained(tmp_path / "empty")
    folder = tiny_model.save_pretrained(tmp_path / "m")
    (folder / "projector.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="projector.safetensors"):
        SegAnswerModel.from_pretrained(folder)


def test_mask_count_must_match_seg_tokens(tiny_model, noise_image, blob_mask):
    seq = stage1_sequence(tiny_model, tiny_model.global_view(noise_image), "the disc", response="It is nothing.")
    with pytest.raises(SegTokenError, match="0 <\\|seg\\|> token"):
        tiny_model([seq], [noise_image], [[blob_mask]])


def test_prompt_mentions_of_seg_are_not_segmentation_requests(tiny_model, noise_image):
    b = tiny_model.builder().system()
    b.user(tokens.reasoning_prompt("What is it?"), image=tiny_model.global_view(noise_image))
    seq = b.assistant(tokens.answer_response("a disc")).build()
    assert (seq.input_ids == tiny_model.token_ids.seg).sum() >= 2  # the instruction names the tag
    out = tiny_model([seq], [noise_image])
    assert out.masks == [None]  # no mask asked for, none decoded


def test_mixed_batch_trains_masks_only_where_asked(tiny_model, noise_image):
    """A plain question next to a Stage 1 sample (the stand-in's mixture): the LM loss covers both,
    the mask losses only the <|seg|> row, equal to that row alone."""
    import torch

    dense = tiny_model.global_view(noise_image)
    seg = stage1_sequence(tiny_model, dense, "the disc")
    qa = exchange_sequence(tiny_model, dense, [("What colour is the disc?", "red")])
    gt = np.zeros((noise_image.height, noise_image.width), bool)
    gt[10:40, 20:60] = True
    with torch.no_grad():
        mixed = tiny_model([qa, seg], [noise_image, noise_image], [[], [gt]])
        alone = tiny_model([seg], [noise_image], [[gt]])
    assert mixed.masks[0] is None and mixed.masks[1] is not None
    assert torch.allclose(mixed.masks[1].low_res_logits, alone.masks[0].low_res_logits, atol=1e-5)
    for name, value in alone.mask_loss_parts.items():
        assert torch.allclose(mixed.mask_loss_parts[name], value, atol=1e-5), name
    assert not torch.allclose(mixed.lm_loss, alone.lm_loss)  # the question's answer counts too


def test_segment_batch_equals_one_by_one(tiny_model, noise_image):
    small = noise_image.resize((120, 200))
    batched = tiny_model.segment_batch([noise_image, small], ["the disc", "the largest red square"])
    for (mask, iou, obj), image, expr in zip(batched, [noise_image, small], ["the disc", "the largest red square"]):
        alone, iou1, obj1 = tiny_model.segment(image, expr)
        assert mask.shape == (image.height, image.width)
        assert np.array_equal(mask, alone)
        assert abs(iou - iou1) < 1e-4 and abs(obj - obj1) < 1e-4
