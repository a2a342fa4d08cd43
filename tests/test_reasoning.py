"""The reasoning loop: seg path, KV-cache continuation, batching, stopping, bad input."""

import numpy as np
import pytest
import torch

from seganswer_cli.errors import UsageError
from seganswer_cli.model import tokens
from seganswer_cli.model.conversation import Answer, answer_of, reasoning_sequence
from seganswer_cli.reasoning import ReasoningLoop, ReasoningSettings, run


def test_the_patterned_model_segments_then_answers(patterned_backbone_model):
    model, cases = patterned_backbone_model
    for image, question, _, answer in cases:
        traj = run(model, image, question, ReasoningSettings(max_new_tokens=80))
        assert traj.stop_reason == "answer"
        assert traj.answer == answer and traj.answer_source == "tag"
        assert tokens.SEG_TOKEN in traj.turns[0]
        (step,) = traj.steps
        assert step.mask.shape == (180, 240) and step.kept_tokens > 0
        pads = int((traj.sequence.input_ids == model.token_ids.image_pad).sum())
        assert pads == model.global_view(image).num_tokens + step.kept_tokens  # original image fed once


def test_cached_multi_turn_equals_rerunning_the_whole_conversation(patterned_backbone_model):
    """Greedy tokens and their log-probs from the cached loop equal one uncached forward over the
    final conversation (same ids, same 3-D positions, same segmented turn; on Qwen3-VL the same
    DeepStack features, which the cached turn adds to its own visual tokens only)."""
    model, cases = patterned_backbone_model
    image, question, _, _ = cases[0]
    traj = run(model, image, question, ReasoningSettings(max_new_tokens=80))
    seq = traj.sequence
    with torch.no_grad():
        (recomputed,) = model.token_logprobs([seq])
        batch = model.collate([seq])
        hidden = model.language_model(model.embed(batch), batch.position_ids).last_hidden_state
        logits = model.logits(hidden[0, :-1])
    torch.testing.assert_close(recomputed, traj.logprobs, atol=1e-4, rtol=1e-4)
    generated = torch.nonzero(seq.target_mask).flatten()
    assert torch.equal(logits[generated - 1].argmax(-1), seq.input_ids[generated])


def test_sampled_logprobs_are_recomputed_exactly(patterned_model):
    model, cases = patterned_model
    image, question, _, _ = cases[1]
    settings = ReasoningSettings(sample=True, temperature=1.3, top_p=0.95, seed=3, max_new_tokens=40)
    traj = run(model, image, question, settings)
    (recomputed,) = model.token_logprobs([traj.sequence], temperature=1.3)
    torch.testing.assert_close(recomputed, traj.logprobs, atol=1e-4, rtol=1e-4)
    again = run(model, image, question, settings)
    assert torch.equal(again.sequence.input_ids, traj.sequence.input_ids)  # seeded


def test_inference_reads_the_seg_state_training_reads(patterned_model):
    model, cases = patterned_model
    image, question, _, _ = cases[0]
    traj = run(model, image, question, ReasoningSettings(max_new_tokens=80))
    with torch.no_grad():
        out = model([traj.sequence], [image])  # training forward: <|seg|> states of target tokens
    pred = out.masks[0]
    assert pred.low_res_logits.shape[0] == 1
    from seganswer_cli.model.mask_decoder import upsample_logits

    mask = (upsample_logits(pred.low_res_logits, (180, 240))[0] > 0).numpy()
    assert np.array_equal(mask, traj.steps[0].mask)


def test_batched_greedy_equals_one_by_one(patterned_backbone_model):
    model, cases = patterned_backbone_model
    settings = ReasoningSettings(max_new_tokens=80)
    images = [c[0] for c in cases] + [cases[0][0]]
    questions = [c[1] for c in cases] + ["Is there anything?"]
    batched = ReasoningLoop(model, settings).run(images, questions)
    for image, question, traj in zip(images, questions, batched):
        alone = run(model, image, question, settings)
        assert torch.equal(alone.sequence.input_ids, traj.sequence.input_ids)
        assert alone.answer == traj.answer and alone.stop_reason == traj.stop_reason
        torch.testing.assert_close(alone.logprobs, traj.logprobs, atol=1e-4, rtol=1e-4)


def test_box_crop_second_look(patterned_model):
    model, cases = patterned_model
    image, question, _, _ = cases[0]
    traj = run(model, image, question, ReasoningSettings(roi="bbox", max_new_tokens=80))
    (step,) = traj.steps
    pads = int((traj.sequence.input_ids == model.token_ids.image_pad).sum())
    assert step.kept_tokens > 0 and pads == model.global_view(image).num_tokens + step.kept_tokens
    (recomputed,) = model.token_logprobs([traj.sequence])
    torch.testing.assert_close(recomputed, traj.logprobs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sample", [False, True])
def test_no_second_look_answers_directly_from_the_first_look(patterned_model, sample):
    """``--roi none``: the turn opens with ``<answer>`` (given, not generated) and ``<|seg|>`` is never
    chosen, though this model always asks for it; log-probs are those of the unmasked distribution."""
    model, cases = patterned_model
    image, question, _, _ = cases[0]
    settings = ReasoningSettings(roi="none", max_new_tokens=30, sample=sample, temperature=1.5, seed=0)
    free = run(model, image, question, ReasoningSettings(max_new_tokens=30, sample=sample, temperature=1.5, seed=0))
    assert tokens.SEG_TOKEN in free.text  # left alone, it segments
    traj = run(model, image, question, settings)
    seq = traj.sequence
    assert traj.steps == [] and tokens.SEG_TOKEN not in traj.text and traj.text.startswith(tokens.ANSWER_OPEN)
    assert int((seq.input_ids == model.token_ids.image_pad).sum()) == model.global_view(image).num_tokens
    prompt = model.builder().system().user(tokens.reasoning_prompt(question), image=model.global_view(image))
    given = prompt.text(tokens.ANSWER_OPEN).build()
    assert torch.equal(seq.input_ids[: len(given)], given.input_ids) and not seq.target_mask[: len(given)].any()
    assert seq.target_mask[len(given):].all()
    (recomputed,) = model.token_logprobs([seq], temperature=1.5 if sample else 1.0)
    torch.testing.assert_close(recomputed, traj.logprobs, atol=1e-4, rtol=1e-4)
    if not sample:  # greedy: the best token other than <|seg|>
        with torch.no_grad():
            batch = model.collate([seq])
            logits = model.logits(model.language_model(model.embed(batch), batch.position_ids).last_hidden_state[0, :-1])
        logits[:, model.token_ids.seg] = float("-inf")
        generated = torch.nonzero(seq.target_mask).flatten()
        assert torch.equal(logits[generated - 1].argmax(-1), seq.input_ids[generated])


def test_token_limit_and_missing_answer(tiny_model, noise_image):
    traj = run(tiny_model, noise_image, "What is it?", ReasoningSettings(max_new_tokens=5))
    assert traj.stop_reason in ("length", "eos", "end_of_turn") and traj.generated_tokens <= 5
    assert traj.answer_source in ("untagged", "missing")


def test_bad_settings_and_questions(tiny_model, noise_image):
    with pytest.raises(UsageError, match="roi"):
        ReasoningSettings(roi="box")
    with pytest.raises(UsageError, match="empty"):
        run(tiny_model, noise_image, "  ")
    with pytest.raises(UsageError):
        ReasoningSettings(sample=True, temperature=0)


def test_answer_of_fallbacks():
    assert answer_of("<answer> B </answer>.") == Answer("B", "tag")
    assert answer_of("observe <|seg|>.<|im_end|>(B)<|im_end|>") == Answer("(B)", "untagged")
    assert answer_of("It is <|seg|>. (B)<|im_end|>") == Answer(None, "missing", "asks_for_region")  # asked for a region
    assert answer_of("") == Answer(None, "missing", "empty")


def test_training_conversation_equals_what_the_loop_builds(patterned_model):
    """Stage 2 trains on ``reasoning_sequence``; inference builds the same tokens and 3-D positions."""
    model, cases = patterned_model
    image, question, _, answer = cases[0]
    traj = run(model, image, question, ReasoningSettings(max_new_tokens=80))
    built = reasoning_sequence(model, model.global_view(image), question, answer, view=traj.steps[0].view)
    n = len(traj.sequence)  # the loop stops at </answer>; training goes on to ".<|im_end|>\n"
    assert torch.equal(built.input_ids[:n], traj.sequence.input_ids)
    assert torch.equal(built.position_ids[:, :n], traj.sequence.position_ids)
    assert torch.equal(built.target_mask[:n], traj.sequence.target_mask)
    (dense_a, sparse_a), (dense_b, sparse_b) = built.visuals, traj.sequence.visuals
    assert dense_a.keep is None and dense_b.keep is None and dense_a.start == dense_b.start
    assert sparse_a.start == sparse_b.start and torch.equal(sparse_a.keep, sparse_b.keep)


def test_empty_mask_falls_back_to_the_original_image(patterned_model, monkeypatch):
    model, cases = patterned_model
    image, question, _, _ = cases[0]
    real_decode = model.decode_masks

    def empty_masks(embeddings, states):
        preds = real_decode(embeddings, states)
        for p in preds:
            p.low_res_logits.fill_(-10.0)
        return preds

    monkeypatch.setattr(model, "decode_masks", empty_masks)
    traj = run(model, image, question, ReasoningSettings(max_new_tokens=80))
    (step,) = traj.steps
    assert step.fallback == "empty_mask" and not step.mask.any()
    dense = model.global_view(image)
    assert step.kept_tokens == dense.num_tokens
    pads = torch.nonzero(traj.sequence.input_ids == model.token_ids.image_pad).flatten()
    first, second = pads[: dense.num_tokens], pads[dense.num_tokens :]
    assert torch.equal(traj.sequence.position_ids[:, first], traj.sequence.position_ids[:, second])


def test_given_regions_replace_the_decoded_masks(patterned_model, monkeypatch):
    """``run(..., regions=...)`` (``eval --masks gt``): the second look shows the given region, SAM 2.1
    is not run for it, and the step says where its mask came from; rows without one decode as usual."""
    from seganswer_cli.reasoning import trajectory_record

    model, cases = patterned_model
    (image, question, _, _), (image2, question2, _, _) = cases[:2]
    region = np.zeros((image.height, image.width), dtype=bool)
    region[40:90, 100:170] = True
    expected = model.second_look(image, region)[0]
    calls = []
    real_encode = model.encode_for_masks
    monkeypatch.setattr(model, "encode_for_masks", lambda images: calls.append(len(images)) or real_encode(images))
    loop = ReasoningLoop(model, ReasoningSettings(max_new_tokens=80))
    given, decoded = loop.run([image, image2], [question, question2], [region, None])
    (step,) = given.steps
    assert step.given and np.array_equal(step.mask, region) and (step.iou, step.object_score) == (1.0, 1.0)
    assert step.kept_tokens == expected.num_tokens and step.box == expected.crop_box
    assert calls == [1]  # only the row without a region ran SAM 2.1
    assert not decoded.steps[0].given
    assert [s["source"] for t in (given, decoded) for s in trajectory_record(t)["steps"]] == ["given", "model"]
    with pytest.raises(ValueError, match="region mask has shape"):
        loop.run([image], [question], [region[:-1]])


@pytest.mark.parametrize("sample", [False, True])
def test_visual_placeholders_are_never_generated(tiny_model, noise_image, monkeypatch, sample):
    """A model whose most likely token is ``<|image_pad|>`` (a barely trained one can be) still runs:
    the loop never picks a visual placeholder, whose pad would have no features to embed."""
    ids = tiny_model.token_ids
    real_logits = tiny_model.logits

    def favour_placeholders(hidden):
        logits = real_logits(hidden).clone()
        logits[..., list(ids.visual_placeholders)] += 1e4
        return logits

    monkeypatch.setattr(tiny_model, "logits", favour_placeholders)
    traj = run(tiny_model, noise_image, "What colour is it?",
               ReasoningSettings(max_new_tokens=6, sample=sample, temperature=1.0, seed=0))
    generated = traj.sequence.input_ids[traj.sequence.target_mask]
    assert traj.stop_reason in ("length", "eos", "answer", "end_of_turn", "max_seg_steps")
    assert not set(generated.tolist()) & set(ids.visual_placeholders)


def test_answer_likelihood_is_the_training_conversations_final_turn(patterned_model):
    """``answer_nll`` scores an answer as the final turn after the model's own seg turn and second look:
    the same tokens Stage 2 trains on (``reasoning_sequence``), so its value is the mean of that
    sequence's last-turn log-probs; the taught answer scores best."""
    from seganswer_cli.reasoning import answer_nll

    model, cases = patterned_model
    image, question, _, answer = cases[0]
    traj = run(model, image, question, ReasoningSettings(max_new_tokens=80))
    assert traj.steps and tokens.SEG_TOKEN in traj.turns[0]
    candidates = [answer, "blue", "square"]
    nll = answer_nll(model, image, traj, candidates)
    final_turn = model.tokenizer(tokens.answer_response(answer) + tokens.IM_END, add_special_tokens=False)["input_ids"]
    built = reasoning_sequence(model, model.global_view(image), question, answer, view=traj.steps[0].view)
    with torch.no_grad():
        (logprobs,) = model.token_logprobs([built])
    assert nll[0] == pytest.approx(-float(logprobs[-len(final_turn):].mean()), abs=1e-5)
    assert min(range(3), key=nll.__getitem__) == 0 and nll[0] < 0.5 < min(nll[1:])


def test_forced_opening_gives_response_1_and_reads_its_seg_state(patterned_model):
    """``opening="forced"``: the same conversation the model writes when it decides to segment (this
    model always does), the mask from the given ``<|seg|>``'s state, and only the answer generated."""
    model, cases = patterned_model
    image, question, _, answer = cases[0]
    free = run(model, image, question, ReasoningSettings(max_new_tokens=80))
    forced = run(model, image, question, ReasoningSettings(opening="forced", max_new_tokens=80))
    assert torch.equal(forced.sequence.input_ids, free.sequence.input_ids)
    assert forced.answer == free.answer == answer and forced.stop_reason == "answer"
    assert forced.turns[0] == free.turns[0] == tokens.SEG_RESPONSE + tokens.IM_END
    assert np.array_equal(forced.steps[0].mask, free.steps[0].mask)
    assert forced.steps[0].iou == pytest.approx(free.steps[0].iou, abs=1e-5)
    # generated: only what follows the <answer> that opens the turn after the view
    generated = model.tokenizer.decode(forced.sequence.input_ids[forced.sequence.target_mask].tolist())
    assert generated.strip().startswith(answer) and tokens.ANSWER_OPEN not in generated
    assert forced.turns[1].startswith(tokens.ANSWER_OPEN)
    (recomputed,) = model.token_logprobs([forced.sequence])
    torch.testing.assert_close(recomputed, forced.logprobs, atol=1e-4, rtol=1e-4)
    # the box crop, forced, is asked the same way: the same mask, cropped
    boxed = run(model, image, question, ReasoningSettings(roi="bbox", opening="forced", max_new_tokens=80))
    assert np.array_equal(boxed.steps[0].mask, free.steps[0].mask) and boxed.turns[1].startswith(tokens.ANSWER_OPEN)
    assert boxed.steps[0].view.positions is None  # a new image at fresh positions


def test_forced_opening_looks_even_when_the_model_would_not(tiny_model, noise_image):
    """A random model never asks for a region; forced, every question gets the look, batched or alone."""
    settings = ReasoningSettings(opening="forced", max_new_tokens=6)
    batched = ReasoningLoop(tiny_model, settings).run([noise_image, noise_image], ["What is it?", "Colour?"])
    for question, traj in zip(["What is it?", "Colour?"], batched):
        assert len(traj.steps) == 1 and traj.turns[0] == tokens.SEG_RESPONSE + tokens.IM_END
        assert traj.turns[1].startswith(tokens.ANSWER_OPEN)
        alone = run(tiny_model, noise_image, question, settings)
        assert torch.equal(alone.sequence.input_ids, traj.sequence.input_ids)
    with pytest.raises(UsageError, match="--opening"):
        ReasoningSettings(opening="given")


def _refill_asks(cases):
    from PIL import Image

    from seganswer_cli.reasoning import Ask

    (image_a, question_a, _, _), (image_b, question_b, _, _) = cases[:2]
    plain = Image.new("RGB", (240, 180), (200, 30, 30))
    # on the plain image this model answers at once (4 tokens); on the noise images it segments first
    # (27-36 tokens, two turns): rows finish at different steps, and queued questions take their slots
    # while the others decode
    return [Ask(image_a, question_a), Ask(plain, "Count."), Ask(image_a, "x"), Ask(plain, question_a),
            Ask(image_b, question_b), Ask(image_a, "Describe everything you see in this picture in great detail."),
            Ask(plain, "x")]


def test_batched_with_refill_equals_one_by_one_greedy(patterned_model):
    """``stream``: rows leave as they finish and queued questions take their slots (prefilled beside the
    others' decoding, the cache compacted); every trajectory is the one the question gets alone."""
    model, cases = patterned_model
    settings = ReasoningSettings(max_new_tokens=60)
    asks = _refill_asks(cases)
    loop = ReasoningLoop(model, settings)
    streamed = list(loop.stream(asks, batch_size=3))
    order = [i for i, _ in streamed]
    assert sorted(order) == list(range(len(asks))) and order != sorted(order)  # finished out of order: refilled
    lengths = {traj.generated_tokens for _, traj in streamed}
    assert len(lengths) > 1 and any(traj.steps for _, traj in streamed)
    for i, traj in streamed:
        alone = run(model, asks[i].image, asks[i].question, settings)
        assert torch.equal(alone.sequence.input_ids, traj.sequence.input_ids)
        assert torch.equal(alone.sequence.position_ids, traj.sequence.position_ids)
        assert (alone.answer, alone.stop_reason, alone.turns) == (traj.answer, traj.stop_reason, traj.turns)
        torch.testing.assert_close(alone.logprobs, traj.logprobs, atol=1e-4, rtol=1e-4)
        assert len(alone.steps) == len(traj.steps)
        for a, b in zip(alone.steps, traj.steps):
            assert np.array_equal(a.mask, b.mask) and a.kept_tokens == b.kept_tokens
        assert traj.timings["total"] >= traj.timings["prefill"] > 0


def test_sampled_rows_do_not_depend_on_their_batch(patterned_model):
    """Each row samples from its own generator (``row_seed``): the same seed gives the same trajectories
    one at a time as three at a time with refills."""
    model, cases = patterned_model
    settings = ReasoningSettings(sample=True, temperature=1.2, top_p=0.9, seed=5, max_new_tokens=40)
    asks = _refill_asks(cases)
    one = dict(ReasoningLoop(model, settings).stream(asks, batch_size=1))
    three = dict(ReasoningLoop(model, settings).stream(asks, batch_size=3))
    for i in range(len(asks)):
        assert torch.equal(one[i].sequence.input_ids, three[i].sequence.input_ids)
