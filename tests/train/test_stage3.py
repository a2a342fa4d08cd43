"""Stage 3 (DAPO on segmented rollouts) on CPU.

- the DAPO pieces against hand computations (asymmetric clip, token mean over the batch,
  group-normalised advantages, dynamic sampling on accuracy with format-only groups counted,
  overlong shaping);
- the loss mask of a hand-built two-turn conversation is exactly the model's tokens;
- the training forward recomputes the rollout's log-probs (greedy and sampled, segmented turn included);
- short runs from a stand-in Stage 2 model (the ``patterned_model`` recipe): the mean reward rises,
  kill + ``--resume`` equals an uninterrupted run, and the bad inputs stop with one clear line;
- multi-image ViRL39K records are left out of the prompt set and counted.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stage1_helpers import assert_resume_refused

from seganswer_cli.config import OptimizerConfig, Stage3Config, load_config
from seganswer_cli.errors import UsageError
from seganswer_cli.model import tokens
from seganswer_cli.train import rewards, runs, stage3
from seganswer_cli.train.stage3 import (
    AllGroupsFilteredError,
    Policy,
    dapo_policy_loss,
    differs_within,
    group_advantages,
    informative_groups,
    overlong_penalty,
    pad_rows,
    train_stage3,
)

# ---------------------------------------------------------------------- DAPO against hand computations


def test_policy_loss_matches_a_hand_computation():
    # two trajectories: 3 and 2 generated tokens (padded to 3); advantages +1 and -0.5
    new = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.1, 0.0]])
    old = torch.tensor([[-0.5, -1.0, -1.5], [0.0, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5])
    out = dapo_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28, token_total=5)
    # by hand, r = exp(new - old):
    # row 0 (A = +1): r = e^0.5 = 1.6487 -> clipped at 1.28 (clip-higher); r = 1 -> 1; r = e^-0.5 = 0.6065 -> min(0.6065, 0.8) = 0.6065
    # row 1 (A = -0.5): r = e^-0.5 = 0.6065 -> min(-0.3033, -0.4) = -0.4 (clipped at 0.8); r = e^0.4 = 1.4918 -> min(-0.7459, -0.64) = -0.7459
    per_token = [-1.28, -1.0, -math.exp(-0.5), 0.4, 0.5 * math.exp(0.4)]
    assert out.loss.item() == pytest.approx(sum(per_token) / 5, abs=1e-6)
    assert (out.clipped_high, out.clipped_low) == (1, 1)
    # the token mean runs over the whole batch: the same call with token_total 10 halves the loss
    half = dapo_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28, token_total=10)
    assert half.loss.item() == pytest.approx(out.loss.item() / 2, abs=1e-7)
    # a symmetric clip (PPO's 0.2/0.2) would have clipped row 0's first token at 1.2 instead
    sym = dapo_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.2, token_total=5)
    assert (out.loss - sym.loss).item() == pytest.approx((-1.28 + 1.2) / 5, abs=1e-6)


def test_policy_gradient_is_token_level():
    """Under token-mean a long trajectory gets more weight than under GRPO's per-sample mean."""
    new = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    out = dapo_policy_loss(new, new.detach(), torch.tensor([1.0, 1.0]), mask, clip_low=0.2, clip_high=0.28,
                           token_total=5)
    out.loss.backward()
    # d/dlogp of -r*A at r = 1 is -A: every generated token gets -1/5, padding 0
    expected = -mask.float() / 5
    torch.testing.assert_close(new.grad, expected)


def test_kl_term_is_optional_and_k3():
    new = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    plain = dapo_policy_loss(new, new, torch.tensor([0.0]), mask, clip_low=0.2, clip_high=0.28, token_total=2)
    with_kl = dapo_policy_loss(new, new, torch.tensor([0.0]), mask, clip_low=0.2, clip_high=0.28, token_total=2,
                               ref_logprobs=ref, kl_coef=0.1)
    k3 = [math.exp(d) - d - 1 for d in (-0.5, 1.0)]
    assert plain.loss.item() == 0.0 and plain.kl == 0.0
    assert with_kl.loss.item() == pytest.approx(0.1 * sum(k3) / 2, abs=1e-6)


def test_group_advantages_and_dynamic_sampling_filter():
    r = torch.tensor([[1.0, 0.2, 0.2, 1.0], [0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.8, 0.0], [1.0, 1.0, 1.0, 1.0]])
    keep = informative_groups(r)
    assert keep.tolist() == [True, False, True, False]
    adv = group_advantages(r[keep])
    # group 0: mean 0.6, sample std sqrt(4 * 0.16 / 3)
    std0 = math.sqrt(4 * 0.16 / 3)
    assert adv[0].tolist() == pytest.approx([0.4 / std0, -0.4 / std0, -0.4 / std0, 0.4 / std0], abs=1e-5)
    # group 2: mean 0.2, std sqrt((3 * 0.04 + 0.36) / 3) = 0.4
    assert adv[1].tolist() == pytest.approx([-0.5, -0.5, 1.5, -0.5], abs=1e-5)
    assert group_advantages(r[1:2]).abs().max().item() == 0.0  # all-equal: zero advantage, nothing to learn


def test_dynamic_sampling_is_on_accuracy_as_in_dapo():
    # R = 0.8 * accuracy + 0.2 * format, per rollout of four groups
    accuracy = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    format_ = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    r = 0.8 * accuracy + 0.2 * format_
    # group 0 is format-only (all wrong, format differs), group 2 all right: DAPO drops both
    assert informative_groups(r, accuracy).tolist() == [False, True, False, True]
    assert informative_groups(r).tolist() == [True, True, True, True]  # the total-reward rule keeps them
    assert (differs_within(r) & ~differs_within(accuracy)).tolist() == [True, False, True, False]
    # equal accuracy and equal reward (weights 0.5/0.5 make right-unformatted = wrong-formatted): zero advantage
    tied = torch.tensor([[0.5, 0.5]])
    assert informative_groups(tied, torch.tensor([[1.0, 0.0]])).tolist() == [False]


def fake_group(prompt, accuracy: list[float], format_: list[float]) -> list[stage3.Rollout]:
    from types import SimpleNamespace

    return [stage3.Rollout(prompt, SimpleNamespace(steps=[], generated_tokens=3), 0.8 * a + 0.2 * f,
                           {"accuracy": a, "format": f}) for a, f in zip(accuracy, format_)]


@pytest.mark.parametrize(("rule", "kept_first"), [("accuracy", False), ("reward", True)])
def test_collect_step_batch_drops_and_counts_format_only_groups(monkeypatch, rule, kept_first):
    from types import SimpleNamespace

    from seganswer_cli.data import VQASample
    from seganswer_cli.data.samples import ImageRef

    prompts = iter([VQASample(f"p{i}", ImageRef(path="x.png"), "q?", "4", "x") for i in range(4)])
    rounds = [
        [fake_group("format-only", [0, 0, 0, 0], [1, 0, 1, 0])],  # all wrong, format differs
        [fake_group("mixed", [1, 0, 0, 0], [1, 1, 0, 0])],
    ]
    seen = []

    def roll_out(model, mine, config, *, seed_parts):
        seen.append(seed_parts)
        return rounds[len(seen) - 1], rewards.RewardScores(total=[], parts={}, counts={"math_unparsed": 1})

    monkeypatch.setattr(stage3, "roll_out", roll_out)
    config = Stage3Config(prompts_per_step=1, max_refills=1, dynamic_sampling=rule, seed=7)
    accelerator = SimpleNamespace(num_processes=1, process_index=0)
    kept, stats, _, drawn, _ = stage3.collect_step_batch(None, prompts, config, accelerator, step=3)
    assert stats.format_only == 1  # counted under either rule
    if kept_first:  # the total-reward rule keeps it and the step is full after one round
        assert [g[0].prompt for g in kept] == ["format-only"] and stats.rounds == 1 and drawn == 1
        assert [r.advantage for r in kept[0]] == pytest.approx([0.866, -0.866, 0.866, -0.866], abs=1e-3)
    else:  # DAPO's rule drops it and refills
        assert [g[0].prompt for g in kept] == ["mixed"] and stats.rounds == 2 and drawn == 2
        # mixed: R = [1.0, 0.2, 0.0, 0.0], mean 0.3, sample std sqrt((0.49 + 0.01 + 0.09 + 0.09) / 3)
        std = math.sqrt(0.68 / 3)
        assert [r.advantage for r in kept[0]] == pytest.approx([0.7 / std, -0.1 / std, -0.3 / std, -0.3 / std], abs=1e-5)
        assert stats.counts == {"math_unparsed": 2}
    assert seen[0] == (7, 3, 0, 0)  # seeded by (seed, step, round, rank)
    assert stats.groups == stats.rounds and stats.kept_groups == 1


def test_overlong_shaping_and_padding():
    assert overlong_penalty([5, 12, 14, 16], max_tokens=16, buffer=4, penalty=0.5) == [0.0, 0.0, -0.25, -0.5]
    assert overlong_penalty([16], max_tokens=16, buffer=0) == [0.0]
    values, mask = pad_rows([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
    assert values.tolist() == [[1.0, 2.0], [3.0, 0.0]] and mask.tolist() == [[True, True], [True, False]]


# ---------------------------------------------------------------------- loss mask and log-probs


def test_loss_mask_is_exactly_the_generated_tokens_of_a_two_turn_conversation(patterned_model):
    model, cases = patterned_model
    image, question, mask, _ = cases[0]
    b = model.builder().system()
    b.user(tokens.reasoning_prompt(question), image=model.global_view(image))
    first = len(b)
    b.assistant(tokens.SEG_RESPONSE)
    b.user("", view=model.segmented_view(image, mask))
    second = len(b)
    b.assistant("<answer> red </answer>.")
    seq = b.build()
    ids, target = seq.input_ids, seq.target_mask
    turn1 = model.tokenizer(tokens.SEG_RESPONSE + tokens.IM_END, add_special_tokens=False)["input_ids"]
    turn2 = model.tokenizer("<answer> red </answer>." + tokens.IM_END, add_special_tokens=False)["input_ids"]
    where = torch.nonzero(target).flatten().tolist()
    # the generated tokens are the two turns' contents and their <|im_end|>: nothing of the prompt,
    # the image, the segmented turn or the "<|im_start|>assistant\n" template the loop inserts
    assert ids[where].tolist() == turn1 + turn2
    opener = model.tokenizer(tokens.assistant_turn_open(), add_special_tokens=False)["input_ids"]
    runs_ = [where[: len(turn1)], where[len(turn1):]]
    for run_, after in zip(runs_, (first, second)):
        assert run_ == list(range(run_[0], run_[0] + len(run_)))  # one contiguous run per model turn
        assert ids[run_[0] - len(opener) : run_[0]].tolist() == opener and run_[0] >= after  # right after the opener
    assert runs_[0][-1] < second <= runs_[1][0]  # the segmented turn lies between them, unmasked
    assert not target[ids == model.token_ids.image_pad].any()
    # the policy forward returns one log-prob per generated token, in order
    with torch.no_grad():
        (logprobs,) = Policy(model)([seq], 1.0)
    assert logprobs.shape == (len(turn1) + len(turn2),)


@pytest.mark.parametrize("sample", [False, True])
def test_training_forward_recomputes_the_rollout_logprobs(patterned_model, sample):
    """The DAPO ratio's old log-probs (rollout) and new ones (training forward, with grad, train
    mode) agree for the same weights: positions, segmented turns and masks are the same in both."""
    from seganswer_cli.reasoning import ReasoningLoop, ReasoningSettings

    model, cases = patterned_model
    temperature = 1.2 if sample else 1.0
    settings = ReasoningSettings(sample=sample, temperature=temperature, top_p=0.9, seed=5, max_new_tokens=60)
    images, questions = [c[0] for c in cases] * 2, [c[1] for c in cases] * 2
    trajectories = ReasoningLoop(model, settings).run(images, questions)
    assert any(t.steps for t in trajectories)  # the segmented turn is part of what is checked
    policy = Policy(model).train()
    try:
        recomputed = policy([t.sequence for t in trajectories], temperature)
        assert all(r.requires_grad for r in recomputed)
        for t, r in zip(trajectories, recomputed):
            torch.testing.assert_close(r.detach(), t.logprobs, atol=1e-4, rtol=1e-4)
    finally:
        model.eval()


# ---------------------------------------------------------------------- short runs


@pytest.fixture(scope="module")
def stage3_setup(patterned_model, tmp_path_factory):
    """``(model_dir, data_dir)``: the patterned model (the stand-in Stage 2 model: it segments, then
    answers in tags) saved as a folder, and shapes-world RL prompts (one or two shapes, two colours,
    two kinds, 96 px)."""
    from seganswer_cli.data import ShapesConfig, write_synthetic

    root = tmp_path_factory.mktemp("stage3")
    model, _ = patterned_model
    model.save_pretrained(root / "stage2")
    config = ShapesConfig(width=96, height=96, min_size=24, max_size=48, min_objects=1, max_objects=2,
                          colours=("red", "blue"), kinds=("circle", "square"))
    write_synthetic(root / "rl", "rl", 32, config, seed=0)
    return root / "stage2", root / "rl"


def tiny_config(model_dir, data_dir, **overrides) -> Stage3Config:
    data = {"model": str(model_dir), "data": [f"shapes={data_dir}"], **overrides}
    return load_config(Stage3Config, "stage3-tiny", data)


def train_records(run_dir):
    timing = ("rollout_seconds", "update_seconds")
    return [{k: v for k, v in r.items() if k not in timing}
            for r in runs.MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "train"]


def test_resume_after_a_kill_equals_an_uninterrupted_run(stage3_setup, tmp_path):
    model_dir, data_dir = stage3_setup
    config = tiny_config(model_dir, data_dir, max_steps=2, save_every=1, prompts_per_step=2, mini_batches=2)
    train_stage3(config, tmp_path / "full", quiet=True)
    train_stage3(config, tmp_path / "killed", quiet=True, stop_after_step=1)
    assert not (tmp_path / "killed" / "model").exists()
    assert_resume_refused(train_stage3, config, tmp_path / "killed", "the run used a process count of 2; this "
                          "launch gives 1 ", processes=2)
    train_stage3(config, tmp_path / "killed", resume=True, quiet=True)
    full = load_file(runs.RunFolder(tmp_path / "full").latest_checkpoint() / runs.TRAINABLE)
    resumed = load_file(runs.RunFolder(tmp_path / "killed").latest_checkpoint() / runs.TRAINABLE)
    start = load_file(model_dir / "mllm" / "model.safetensors")
    assert full.keys() == resumed.keys()
    changed = 0
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
        original = start.get(name.removeprefix("model.mllm."))
        changed += original is not None and not torch.equal(original, full[name])
    assert changed > 0  # the policy moved
    assert train_records(tmp_path / "full") == train_records(tmp_path / "killed")
    records = train_records(tmp_path / "full")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert 0 < r["groups_kept"] <= 2 and r["groups_sampled"] >= 2 and r["loss_tokens"] > 0
        assert {"reward", "accuracy", "format", "segment_rate", "view_tokens", "clip_high_fraction",
                "groups_format_only", "math_unparsed", "math_timeout", "math_error"} <= r.keys()
        assert 0 <= r["groups_format_only"] <= r["groups_sampled"] and r["math_unparsed"] == 0
    settings = runs.RunFolder(tmp_path / "full").read_settings()
    assert settings["stage"] == "stage3" and settings["config"]["clip_high"] == 0.28
    from seganswer_cli.model import SegAnswerModel

    final = SegAnswerModel.from_pretrained(tmp_path / "full" / "model")
    assert final.info["training"]["stage"] == "stage3"
    # the projector and SAM stay frozen
    assert not any(k.startswith(("model.projector", "model.mask_decoder")) for k in full)


def test_everything_filtered_stops_with_the_count(stage3_setup, tmp_path, monkeypatch):
    model_dir, data_dir = stage3_setup
    monkeypatch.setitem(rewards.REWARDS, "constant", lambda completions, **_: [0.5] * len(completions))
    config = tiny_config(model_dir, data_dir, max_steps=1, prompts_per_step=1, max_refills=1,
                         reward_weights={"constant": 1.0})
    with pytest.raises(AllGroupsFilteredError, match=r"step 1: all 2 prompt groups \(4 rollouts each, 2 rounds: 1 \+ 1 refills\)"):
        train_stage3(config, tmp_path / "run", quiet=True)


def test_a_raising_reward_is_counted_and_the_run_goes_on(stage3_setup, tmp_path, monkeypatch):
    model_dir, data_dir = stage3_setup

    def picky(completions, answer, **columns):
        if any(a in ("1", "2") for a in answer):
            raise ValueError("cannot score counts")  # raises for the count questions' records only
        return rewards.format_reward(completions)

    monkeypatch.setitem(rewards.REWARDS, "picky", picky)
    config = tiny_config(model_dir, data_dir, max_steps=1, prompts_per_step=2,
                         reward_weights={"picky": 0.5, "format": 0.5})
    train_stage3(config, tmp_path / "run", quiet=True)
    (record,) = train_records(tmp_path / "run")
    # every rollout of a count prompt raised (scored 0, counted); the others were scored
    assert record["reward_errors"] > 0 and record["reward_errors"] % config.rollouts_per_prompt == 0
    assert record["reward_errors"] < record["groups_sampled"] * config.rollouts_per_prompt


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(stage3_setup, tmp_path, monkeypatch):
    model_dir, data_dir = stage3_setup
    real = stage3.dapo_policy_loss
    seen = {"calls": 0}

    def nan_on_step_two(*args, **kwargs):
        out = real(*args, **kwargs)
        seen["calls"] += 1
        if seen["calls"] > 1:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(stage3, "dapo_policy_loss", nan_on_step_two)
    # rewards that differ within every group, so no step hangs on what the rollouts happened to sample
    monkeypatch.setitem(rewards.REWARDS, "alternating", lambda completions, **_: [i % 2 for i in range(len(completions))])
    config = tiny_config(model_dir, data_dir, max_steps=3, save_every=1, prompts_per_step=1, micro_batch_size=8,
                         reward_weights={"alternating": 1.0})
    with pytest.raises(runs.NonFiniteLossError, match="loss is nan at step 2; .*last good checkpoint kept: .*step-00000001"):
        train_stage3(config, tmp_path / "run", quiet=True)
    assert [p.name for p in runs.RunFolder(tmp_path / "run").checkpoints()] == ["step-00000001"]


def test_prompts_without_verifiable_answers_are_refused(stage3_setup, tmp_path):
    from seganswer_cli.data import ShapesConfig, write_synthetic

    model_dir, _ = stage3_setup
    write_synthetic(tmp_path / "refseg", "refseg", 4, ShapesConfig(width=64, height=64, min_size=16, max_size=32), seed=0)
    with pytest.raises(UsageError, match="no prompt with a verifiable answer among its 4 records"):
        train_stage3(tiny_config(model_dir, tmp_path / "refseg", max_steps=1), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # nothing written


def write_virl39k_jsonl(root):
    """A ViRL39K export (JSONL + images/): two one-image questions and one with two images."""
    import json

    from PIL import Image

    (root / "images").mkdir(parents=True)
    for name, colour in (("q1", (200, 30, 30)), ("q2", (30, 30, 200)), ("q3a", (30, 200, 30)), ("q3b", (9, 9, 9))):
        Image.new("RGB", (96, 96), colour).save(root / "images" / f"{name}.png")
    rows = [
        {"qid": "q1", "question": "<image>What colour is the image?", "answer": "\\boxed{red}",
         "image": ["images/q1.png"]},
        {"qid": "q2", "question": "<image>What is x?\n(A) 12\n(B) 15", "answer": "\\boxed{A}",
         "image": ["images/q2.png"]},
        {"qid": "q3", "question": "<image><image>Which is darker? A. left B. right", "answer": "\\boxed{B}",
         "image": ["images/q3a.png", "images/q3b.png"]},
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_multi_image_prompts_are_left_out_and_counted(stage3_setup, tmp_path, capsys):
    from seganswer_cli.data import open_dataset

    model_dir, _ = stage3_setup
    root = write_virl39k_jsonl(tmp_path / "virl")
    samples = open_dataset(root, "virl39k").take()
    assert [len(s.extra_images) for s in samples] == [0, 0, 1]
    kept, left_out = stage3.verifiable_prompts("virl", samples)
    assert [s.id for s in kept] == ["virl39k:q1", "virl39k:q2"]
    assert left_out == {"no_answer": 0, "several_images": 1}
    with pytest.raises(UsageError, match=r"no prompt with a verifiable answer among its 1 records \(VQASample, "
                                         r"1 answered but with several images\)"):
        stage3.verifiable_prompts("virl", samples[2:])

    # a run: the count is printed, recorded in settings.json, and the two-image record never drawn
    config = tiny_config(model_dir, None, data=[f"virl={root}"], max_steps=1, prompts_per_step=1,
                         reward_weights={"format": 1.0}, max_refills=8)
    train_stage3(config, tmp_path / "run", quiet=False)
    assert "virl: left out 1 with several images (the reasoning loop takes one per question)" in capsys.readouterr().err
    settings = runs.RunFolder(tmp_path / "run").read_settings()
    assert settings["prompts_left_out"] == {"virl": {"no_answer": 0, "several_images": 1}}
    assert settings["dataset_size"] == 2 and settings["sources"] == {"virl": 2}


def test_configs_parse_and_bad_values_are_refused():
    tiny = load_config(Stage3Config, "stage3-tiny")
    big = load_config(Stage3Config, "stage3-7b")
    assert big.rollouts_per_prompt == 4 and big.optim.lr == 2e-5 and big.epochs == 1
    assert big.reward_weights == {"accuracy": 0.8, "format": 0.2} and (big.clip_low, big.clip_high) == (0.2, 0.28)
    assert big.kl_coef == 0 and big.overlong_buffer == 0
    assert tiny.rollouts_per_prompt == 4 and tiny.dynamic_sampling == "reward" and big.dynamic_sampling == "accuracy"
    assert Stage3Config().optim == OptimizerConfig(lr=2e-5, schedule="constant", warmup_ratio=0.0)
    for bad in ({"rollouts_per_prompt": 1}, {"roi": "box"}, {"clip_low": 1.0}, {"overlong_buffer": 600},
                {"reward_weights": {}}, {"temperature": 0}, {"dynamic_sampling": "format"}):
        with pytest.raises(UsageError):
            Stage3Config(**bad)


def test_unknown_reward_is_refused(stage3_setup, tmp_path):
    model_dir, data_dir = stage3_setup
    with pytest.raises(UsageError, match="unknown reward"):
        train_stage3(tiny_config(model_dir, data_dir, reward_weights={"length": 1.0}), tmp_path / "run", quiet=True)


def test_mean_reward_rises_on_the_shapes_world(stage3_setup, tmp_path):
    """A short seeded run from the stand-in Stage 2 model: the mean training reward of the last
    steps is above that of the first steps (numbers printed; docs/training.md has a longer curve)."""
    model_dir, data_dir = stage3_setup
    config = tiny_config(model_dir, data_dir, max_steps=8)
    train_stage3(config, tmp_path / "run", quiet=True)
    records = train_records(tmp_path / "run")
    rewards_ = [r["reward"] for r in records]
    print("\nstage 3 mean reward per step:", [round(x, 3) for x in rewards_],
          "\naccuracy:", [round(r["accuracy"], 3) for r in records], "\nformat:", [round(r["format"], 3) for r in records])
    assert np.mean(rewards_[-3:]) > np.mean(rewards_[:3]) + 0.05


@pytest.mark.slow
def test_two_process_data_parallel_runs_and_checkpoints(stage3_setup, tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo, CPU): rollouts split across processes, every step
    checkpointed with both processes' RNG states, the final model written. (Rollout sampling is
    seeded per process, so the numbers differ from a one-process run by design.)"""
    import os
    import shutil
    import subprocess
    import sys

    model_dir, data_dir = stage3_setup
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = tmp_path / "two"
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29531", "-m", "seganswer_cli",
                           "train-stage3", "-c", "stage3-tiny", "--model", str(model_dir), "--data", f"shapes={data_dir}",
                           "--max-steps", "2", "--save-every", "1", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run = runs.RunFolder(out)
    assert run.read_settings()["processes"] == 2 and run.is_finished
    for checkpoint in run.checkpoints():
        assert {p.name for p in checkpoint.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    assert [r["step"] for r in train_records(out)] == [1, 2]
