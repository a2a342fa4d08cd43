"""Stage 3, reasoning with pixel grounding (paper §3.3, §4.2): DAPO on multi-turn segmented rollouts.

Algorithm, one step:

1. Rollouts. Draw prompts (questions with verifiable answers: ViRL39K, the shapes world's RL
   prompts; records with several images are left out and counted, see below) from the seeded
   mixture; every prompt is rolled out ``G = rollouts_per_prompt`` times
   (paper: 4) through ``reasoning.ReasoningLoop`` — the loop ``infer`` and ``eval`` use: sampled
   (temperature, top-p), batched, the KV cache continued, a ``<|seg|>`` answered by the sparse
   segmented view at the original image's M-RoPE positions. Each trajectory keeps its whole
   conversation (``Trajectory.sequence``) and the log-prob of every generated token.
2. Rewards (``train/rewards.py``): ``R = 0.8 * accuracy + 0.2 * format`` (weights configurable),
   accuracy by the eval package's scorers (maths by math_verify, options written inside the
   question read as multiple choice). Optional DAPO overlong shaping (off by default).
3. Dynamic sampling, on accuracy as DAPO does. A group whose ``G`` accuracies are all 0 or all 1
   is dropped, and more prompts are drawn and rolled out until ``prompts_per_step`` groups are
   kept (at most ``max_refills`` extra rounds; a step left with fewer trains on what it has; a step
   left with none stops the run with the count). That includes the "format-only" groups, equal in
   accuracy but not in format reward: their advantages are not zero, but they would teach format
   alone while taking a batch slot from a prompt the model sometimes gets right; DAPO filters on
   accuracy, so do we (their count is logged, ``groups_format_only``). A group whose total rewards
   are all equal is dropped too (zero advantage). ``dynamic_sampling: reward`` (the tiny CPU
   recipe, whose stand-in model is almost never right) and a run whose reward weights have no
   ``accuracy`` filter on the total reward alone, keeping format-only groups.
4. Advantages, per group: ``A_i = (R_i - mean(R)) / (std(R) + eps)`` (``std`` with Bessel's
   correction, as GRPO implementations use), the same for every token of trajectory ``i``.
5. Policy updates. The kept trajectories are split into ``mini_batches`` mini-batches, one
   optimizer step each. The training forward recomputes the log-probs of the generated tokens on
   exactly the rollout's sequences (ids, 3-D positions, segmented views; ``target_mask`` marks the
   tokens the model generated, so the prompt, the original image, every segmented-region turn and
   every template token the loop inserts carry no loss), with gradients. Per token, with
   ``r = exp(logp - logp_old)`` and ``logp_old`` recomputed by the same forward without gradient
   before the step's first update (``recompute_logprobs``; off: the rollout's own), so the first
   ratio of an on-policy step is exactly 1::

       loss_t = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)      (+ kl_coef * k3 KL to the start)

   and the loss is the sum over every generated token of the mini-batch divided by their number
   (DAPO's token-level mean: long trajectories weigh by their length). ``eps_low = 0.2``,
   ``eps_high = 0.28`` (clip-higher); no KL term by default.

What trains: the MLLM (language model, embeddings, LM head, and the vision tower unless
``freeze_vision``); the projector and SAM 2.1 are frozen (the ``<|seg|>`` state still learns
through the language model, the mask path does not). Paper: lr 2e-5, 1 epoch, 4 rollouts.

Prompts: the reasoning loop shows one image per question, so a record with several images (some
of ViRL39K's) cannot be asked whole; rather than ask it about its first image alone, Stage 3
leaves it out, prints the count per source and records it in ``settings.json``
(``prompts_left_out``), with the records that have no answer to verify.

Where this departs from the paper (which names DAPO, the two rewards, their weights, lr, epochs and
rollouts, nothing else): the batch size, temperature, clip range (DAPO's), refill cap, mini-batch
count, constant learning rate and the length limit are our choices; an "epoch" counts the prompts
whose groups train. The tiny CPU recipe (``configs/stage3-tiny.yaml``) uses a far higher learning
rate because its model is tiny and the run short, and dynamic sampling on the total reward because
its stand-in model is almost never right (DAPO's rule would drop nearly every group).

Distributed: every process draws the same prompts from the seeded stream and rolls out its own
slice (whole groups, so rewards and advantages are computed where the group lives); kept-group
counts are gathered so every process agrees on refills and on which groups fill the batch; the
token count of a mini-batch is summed over processes, so the loss is the token mean over the
global mini-batch. DDP (``accelerate``) or FSDP2 (``strategy: fsdp``, ``train/engine.py``) averages
gradients; processes with fewer trajectories run zero-weighted forwards so every process takes
part in every gradient reduction. Rollouts run under the update's autocast (the sampler's
log-probs in the trainer's precision); under FSDP2 on the weights gathered once per step.

Run it::

    seganswer data synth --kind rl --n 256 --out data/shapes-rl
    seganswer train-stage3 -c stage3-tiny --model runs/s2/model --data shapes=data/shapes-rl --out runs/s3
    bash configs/launch/torchrun-1x8.sh train-stage3 -c stage3-7b --model ... --data virl39k=...  # FSDP2

Design note: scaling rollouts further. Rollouts here run in the training processes with the
training weights: one stream per process through ``ReasoningLoop`` (``rollout_batch_size`` rows,
refilled as rollouts finish); on 7B they dominate the step. A serving engine (vLLM) fed the new
weights after each update is the next step; it cannot be dropped in as is, because a rollout is
not plain text generation (a segmented turn at original M-RoPE positions, the ``<|seg|>`` hidden
state, exact log-probs and sequence, weight sync). docs/serving.md holds the design; everything
after the rollout (rewards, dynamic sampling, the loss) stays as it is.

The run folder layout, checkpoints and resume are ``train/runs.py``'s (docs/training.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seganswer_cli.config import Stage3Config
from seganswer_cli.data import VQASample, open_mixture
from seganswer_cli.errors import SegAnswerError, UsageError
from seganswer_cli.model.conversation import prompt_and_answer
from seganswer_cli.train import engine, rewards, runs
from seganswer_cli.train.stage_setup import (
    data_specs,
    enable_activation_checkpointing,
    float32_trainables,
    keep_frozen_parts_in_eval,
    load_starting_model,
    open_run,
    planned_steps,
    print_start,
    run_settings,
    save_trained_model,
    start_accelerator,
    start_or_resume,
    train_the_mllm,
    trainable_parameters,
)
from seganswer_cli.train.steps import (
    TrainProgress,
    clip_gradients,
    gather_ints,
    progress_print,
    reduce_mean,
    sample_stream,
    stop_if_not_finite,
    sum_over_processes,
)

STAGE = "stage3"


class AllGroupsFilteredError(SegAnswerError):
    """Every group of a step had equal accuracy (or equal rewards), even after the refills: nothing
    to learn from."""


# ---------------------------------------------------------------------- the DAPO pieces (pure)


def group_advantages(rewards_: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(n_groups, G)`` rewards -> ``(n_groups, G)`` advantages ``(R - mean) / (std + eps)`` per group
    (``std`` with Bessel's correction).

    >>> [round(a, 4) for a in group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))[0].tolist()]  # std 0.577...
    [0.866, -0.866, -0.866, 0.866]
    """
    mean = rewards_.mean(dim=1, keepdim=True)  # (n_groups, 1)
    std = rewards_.std(dim=1, keepdim=True)  # (n_groups, 1)
    return (rewards_ - mean) / (std + eps)


def differs_within(values: torch.Tensor) -> torch.Tensor:
    """``(n_groups, G)`` -> ``(n_groups,)`` bool: the groups whose values are not all equal.

    >>> differs_within(torch.tensor([[1.0, 1.0], [0.2, 1.0]])).tolist()
    [False, True]
    """
    return (values.max(dim=1).values - values.min(dim=1).values) > 1e-9


def informative_groups(rewards_: torch.Tensor, accuracy: torch.Tensor | None = None) -> torch.Tensor:
    """``(n_groups,)`` bool: the groups dynamic sampling keeps, from ``(n_groups, G)`` total rewards
    and accuracies: accuracy neither all 0 nor all 1 (DAPO's rule; not all equal, were accuracy ever
    fractional), and rewards not all equal (else every advantage is 0). Without ``accuracy`` (no
    accuracy reward in the weights) the rewards alone decide.

    >>> rewards_ = torch.tensor([[1.0, 0.2], [0.2, 0.0], [0.0, 0.0]])  # 0.8 * accuracy + 0.2 * format
    >>> informative_groups(rewards_, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])).tolist()
    [True, False, False]
    >>> informative_groups(rewards_).tolist()
    [True, True, False]
    """
    keep = differs_within(rewards_)
    return keep if accuracy is None else keep & differs_within(accuracy)


def filters_on_accuracy(config: Stage3Config) -> bool:
    """Whether dynamic sampling drops groups by accuracy (DAPO) rather than by total reward."""
    return config.dynamic_sampling == "accuracy" and "accuracy" in config.reward_weights


def overlong_penalty(lengths: list[int], max_tokens: int, buffer: int, penalty: float = 1.0) -> list[float]:
    """DAPO's soft overlong punishment: 0 up to ``max_tokens - buffer`` generated tokens, then
    falling linearly to ``-penalty`` at ``max_tokens``; 0 everywhere when ``buffer`` is 0.

    >>> overlong_penalty([10, 14, 16], max_tokens=16, buffer=4)
    [0.0, -0.5, -1.0]
    """
    if buffer <= 0:
        return [0.0] * len(lengths)
    start = max_tokens - buffer
    return [0.0 - penalty * min(1.0, max(0, n - start) / buffer) for n in lengths]  # 0.0, not -0.0


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    """Summed per-token loss divided by ``token_total`` (a scalar with grad)."""
    clipped_low: int
    """Tokens whose ratio was clipped at ``1 - eps_low`` (negative advantage, ratio below it)."""
    clipped_high: int
    """Tokens whose ratio was clipped at ``1 + eps_high`` (positive advantage, ratio above it)."""
    kl: float
    """Summed k3 KL estimate (0 without a reference)."""


def dapo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                     mask: torch.Tensor, *, clip_low: float, clip_high: float, token_total: float,
                     ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0) -> PolicyLoss:
    """DAPO's clipped surrogate, token-level: ``sum_t -min(r A, clip(r, 1-lo, 1+hi) A) / token_total``.

    ``logprobs``/``old_logprobs``/``mask``: ``(N, T)`` (padded tokens masked out); ``advantages``:
    ``(N,)``, one per trajectory. ``token_total`` is the number of generated tokens the mean runs
    over (the whole mini-batch, over every process), not of this call alone.
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)  # (N, T)
    adv = advantages[:, None].to(logprobs.dtype)  # (N, 1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)  # (N, T)
    kl = torch.zeros((), dtype=logprobs.dtype)
    if ref_logprobs is not None and kl_coef > 0:
        delta = ref_logprobs - logprobs  # k3: exp(d) - d - 1 >= 0
        k3 = torch.exp(delta) - delta - 1.0
        per_token = per_token + kl_coef * k3
        kl = (k3 * mask).sum().detach()
    loss = (per_token * mask).sum() / token_total
    with torch.no_grad():
        on = mask > 0
        low = int(((ratio < 1.0 - clip_low) & (adv < 0) & on).sum())
        high = int(((ratio > 1.0 + clip_high) & (adv > 0) & on).sum())
    return PolicyLoss(loss, low, high, float(kl))


def pad_rows(rows: list[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(n_b,)]`` -> padded ``(N, T)`` values and their bool ``(N, T)`` mask."""
    width = max((int(r.numel()) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype if rows else torch.float32)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
        mask[i, : r.numel()] = True
    return out, mask


class Policy(nn.Module):
    """What DDP wraps: the training forward of Stage 3 (``forward`` -> per-sequence log-probs of the
    generated tokens, with gradients), so gradient reduction hooks fire as in any module forward."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, sequences, temperature: float) -> list[torch.Tensor]:
        return self.model.token_logprobs(sequences, temperature=temperature)


# ---------------------------------------------------------------------- rollouts and rewards


@dataclass
class Rollout:
    """One trajectory with its reward, in a group of ``G`` rollouts of one prompt."""

    prompt: VQASample
    trajectory: Any
    reward: float
    parts: dict[str, float]
    advantage: float = 0.0


@dataclass
class RolloutStats:
    """What one step's rollouts looked like (over every rollout sampled, kept or not)."""

    rewards: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    segmented: list[float] = field(default_factory=list)
    view_tokens: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    groups: int = 0
    kept_groups: int = 0
    format_only: int = 0
    """This process's groups equal in accuracy but not in total reward, of every round (dropped
    under ``dynamic_sampling: accuracy``, kept under ``reward``)."""
    counts: dict[str, int] = field(default_factory=dict)
    """This process's reward counts (``rewards.COUNTS``)."""
    rounds: int = 0
    reward_errors: int = 0
    reward_messages: list[str] = field(default_factory=list)
    seconds: float = 0.0


def reward_columns(samples: list[VQASample]) -> dict[str, list]:
    """The prompt set's fields the reward functions take, one value per completion."""
    return {
        "answer": [s.answer for s in samples],
        "answer_type": [s.answer_type for s in samples],
        "options": [list(s.options) for s in samples],
        "answer_letter": [s.answer_letter for s in samples],
        "question": [s.question for s in samples],
    }


def rollout_seed(*parts: int) -> int:
    """A sampling seed from (run seed, step, round, process): rollouts do not depend on any global RNG,
    so a resumed run samples what the uninterrupted one sampled (each rollout then draws from its own
    generator, ``reasoning.row_seed``, so neither do they depend on ``rollout_batch_size``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def roll_out(model, prompts: list[VQASample], config: Stage3Config, *,
             seed_parts: tuple[int, ...]) -> tuple[list[list[Rollout]], rewards.RewardScores]:
    """``G`` sampled trajectories per prompt through the reasoning loop, scored: one group per
    prompt, and the reward scores (with the count of reward functions that raised)."""
    from seganswer_cli.reasoning import ReasoningLoop, ReasoningSettings

    G = config.rollouts_per_prompt
    images = [p.image.load() for p in prompts]
    flat = [(i, images[i], prompt_and_answer(p)[0]) for i, p in enumerate(prompts) for _ in range(G)]
    # one stream, rollout_batch_size rows at a time, a finished rollout's slot taken by the next; each
    # rollout samples from its own generator (reasoning.row_seed), whatever batch it ran in
    settings = ReasoningSettings(
        sample=True, temperature=config.temperature, top_p=config.top_p, seed=rollout_seed(*seed_parts),
        max_new_tokens=config.max_new_tokens, max_seg_steps=config.max_seg_steps, roi=config.roi)
    trajectories = ReasoningLoop(model, settings).run([c[1] for c in flat], [c[2] for c in flat],
                                                      batch_size=config.rollout_batch_size)
    samples = [prompts[i] for i, _, _ in flat]
    scores = rewards.score_completions([t.text for t in trajectories], config.reward_weights,
                                       **reward_columns(samples))
    shaping = overlong_penalty([t.generated_tokens for t in trajectories], config.max_new_tokens,
                               config.overlong_buffer, config.overlong_penalty)
    rollouts = [Rollout(s, t, scores.total[k] + shaping[k], {n: v[k] for n, v in scores.parts.items()})
                for k, (s, t) in enumerate(zip(samples, trajectories))]
    groups = [rollouts[i * G : (i + 1) * G] for i in range(len(prompts))]
    return groups, scores


def collect_step_batch(model, stream, config: Stage3Config, accelerator, *, step: int):
    """Rollouts of one step with dynamic sampling. Returns this process's kept groups (advantages
    set), the step's statistics, the prompts drawn (for messages), how many were drawn, and one
    rollout of this process (kept or not) for zero-weighted forwards.

    Every process draws the same prompts and rolls out ``prompts[rank::world]``; the kept counts are
    gathered so that all processes agree which groups fill the batch (rank order, then draw order).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    stats = RolloutStats(parts={k: [] for k in config.reward_weights})
    kept: list[list[Rollout]] = []
    kept_total, drawn, all_prompts, spare = 0, 0, [], None
    started = time.perf_counter()
    for round_index in range(config.max_refills + 1):
        need = config.prompts_per_step - kept_total
        n = math.ceil(max(need, 1) / world) * world  # every process gets the same number of prompts
        prompts = [next(stream) for _ in range(n)]
        drawn += n
        all_prompts += prompts
        mine = prompts[rank::world]
        groups, scores = roll_out(model, mine, config, seed_parts=(config.seed, step, round_index, rank))
        spare = spare or groups[0][0]
        stats.rounds += 1
        stats.reward_errors += scores.error_count
        stats.reward_messages += [m for m in scores.messages if m not in stats.reward_messages]
        for name, value in scores.counts.items():
            stats.counts[name] = stats.counts.get(name, 0) + value
        informative = []
        for group in groups:
            for r in group:
                stats.rewards.append(r.reward)
                for name, value in r.parts.items():
                    stats.parts[name].append(value)
                t = r.trajectory
                stats.segmented.append(1.0 if t.steps else 0.0)
                stats.view_tokens += [s.kept_tokens for s in t.steps]
                stats.generated.append(t.generated_tokens)
            values = torch.tensor([[r.reward for r in group]], dtype=torch.float64)  # (1, G)
            accuracy = None
            if "accuracy" in config.reward_weights:
                accuracy = torch.tensor([[r.parts["accuracy"] for r in group]], dtype=torch.float64)  # (1, G)
                stats.format_only += int(differs_within(values)[0] and not differs_within(accuracy)[0])
            on_accuracy = accuracy if filters_on_accuracy(config) else None
            if bool(informative_groups(values, on_accuracy)[0]):
                for r, a in zip(group, group_advantages(values, config.advantage_eps)[0].tolist()):
                    r.advantage = a
                informative.append(group)
        stats.groups += n
        # how many of each process's informative groups fill the batch, in rank order
        counts = gather_ints(accelerator, len(informative))
        take = 0
        for r_index, count in enumerate(counts):
            share = min(count, config.prompts_per_step - kept_total)
            if r_index == rank:
                take = share
            kept_total += share
        kept += informative[:take]
        if kept_total >= config.prompts_per_step:
            break
    stats.kept_groups = kept_total
    stats.seconds = time.perf_counter() - started
    if kept_total == 0:
        mean = float(np.mean(stats.rewards)) if stats.rewards else float("nan")
        filtered_on = "accuracy" if filters_on_accuracy(config) else "rewards"
        raise AllGroupsFilteredError(
            f"step {step}: all {stats.groups} prompt groups ({config.rollouts_per_prompt} rollouts each, "
            f"{stats.rounds} rounds: 1 + {stats.rounds - 1} refills) had equal {filtered_on} within the group "
            f"(mean reward {mean:.3f}); nothing to learn from. Use prompts the model sometimes gets right, "
            f"a higher temperature, or more max_refills")
    return kept, stats, all_prompts, drawn, spare


# ---------------------------------------------------------------------- the training entry point


def train_stage3(config: Stage3Config, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, stop_after_step: int | None = None) -> Path:
    """Run Stage 3 into the run folder ``out``; returns the final model folder.

    ``stop_after_step`` ends the process's work after that step as if it were killed (no final
    checkpoint, no model folder): how the tests interrupt a run before ``resume``.
    """
    # ---------------------------------------------------------------- setup: cheap checks first
    run, config = open_run(config, out, resume=resume, overwrite=overwrite, stage=STAGE, defaults=Stage3Config())
    unknown = sorted(set(config.reward_weights) - set(rewards.REWARDS))
    if unknown:
        raise UsageError(f"unknown reward(s) {unknown} in reward_weights; known: {', '.join(sorted(rewards.REWARDS))}")
    specs = data_specs(config.data, "prompt data")

    accelerator = start_accelerator(config)
    mixture, skipped = open_mixture(specs, on_error=config.on_error, seed=config.seed)
    prompt_sets = [verifiable_prompts(name, source) for name, source in zip(mixture.names, mixture.sources)]
    mixture.sources = [kept for kept, _ in prompt_sets]
    left_out = {name: counts for name, (_, counts) in zip(mixture.names, prompt_sets) if any(counts.values())}

    model = load_starting_model(config)
    train_the_mllm(model, freeze_vision=config.freeze_vision)
    float32_trainables(model)
    reference = reference_model(model) if config.kl_coef > 0 else None  # copied before checkpointing is on
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model.mllm)
    world = accelerator.num_processes
    dataset_size = sum(len(s) for s in mixture.sources)
    steps_per_epoch, total_steps = planned_steps(config, dataset_size, config.prompts_per_step)
    total_updates = total_steps * config.mini_batches
    policy, optimizer, scheduler, warmup = engine.prepare_for_training(
        accelerator, model, config, param_groups=trainable_parameters, total_steps=total_updates, wrap=Policy)
    unwrapped = accelerator.unwrap_model(policy).model

    settings = run_settings(STAGE, config, accelerator, mixture, skipped, unwrapped,
                            steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=warmup,
                            optimizer_steps=total_updates, prompts_left_out=left_out)
    state, log = start_or_resume(run, accelerator, settings, resume=resume, overwrite=overwrite, model=policy,
                                 optimizer=optimizer, scheduler=scheduler, launch_key="processes")
    start_step, prompts_drawn = state.get("step", 0), state.get("prompts_drawn", 0)
    show = accelerator.is_main_process and not quiet
    if show:
        c = settings["config"]
        print_start("train-stage3 · DAPO", settings, run, start_step, skipped, rows={
            "prompts": f"{settings['dataset_size']} verifiable ({settings['sources']})",
            "steps": f"{total_steps} ({steps_per_epoch}/epoch), {c['mini_batches']} update(s) per step",
            "per step": f"{c['prompts_per_step']} groups x {c['rollouts_per_prompt']} rollouts over "
                        f"{world} proc (up to {c['max_refills']} refills)",
            "rollouts": f"T={c['temperature']} top-p={c['top_p']}, max {c['max_new_tokens']} tokens, "
                        f"{c['max_seg_steps']} seg round(s), roi {c['roi']}",
            "DAPO": f"clip [{1 - c['clip_low']:g}, {1 + c['clip_high']:g}], kl {c['kl_coef']:g}, "
                    f"overlong buffer {c['overlong_buffer']}",
            "reward": " + ".join(f"{w:g}*{k}" for k, w in c["reward_weights"].items()),
        })
        for name, counts in left_out.items():
            print_left_out(name, counts)

    # ---------------------------------------------------------------- train
    stream = sample_stream(mixture, skip=prompts_drawn)
    last_checkpoint = run.latest_checkpoint()
    progress = TrainProgress(total_steps, start_step, enabled=show, label="stage 3")
    for step in range(start_step + 1, total_steps + 1):
        unwrapped.eval()  # rollouts: no dropout, no grad, the update's precision (its autocast, FSDP2's bf16 weights)
        with engine.gathered(unwrapped), accelerator.autocast():  # decodes end at different lengths per process
            groups, stats, prompts, drawn, spare = collect_step_batch(unwrapped, stream, config, accelerator, step=step)
        prompts_drawn += drawn
        if stats.reward_messages and show:
            progress_print(progress, f"step {step}: {stats.reward_errors} reward error(s), scored 0: "
                           + "; ".join(stats.reward_messages[:3]))
        policy.train()
        keep_frozen_parts_in_eval(unwrapped)
        update_started = time.perf_counter()
        trajectories = [r for group in groups for r in group]  # this process's kept rollouts
        sums = {"loss": 0.0, "clipped_low": 0.0, "clipped_high": 0.0, "kl": 0.0, "loss_tokens": 0.0}
        grad_norms, lrs = [], []
        chunks = split_even(trajectories, config.mini_batches)
        if config.recompute_logprobs:  # logp_old from the trainer's forward: the first ratio is exactly 1
            recompute_old_logprobs(policy, accelerator, chunks, spare, config)
        for chunk in chunks:
            lrs.append(scheduler.get_last_lr()[0])
            result = policy_update(policy, optimizer, accelerator, chunk, spare, config, reference,
                                   step=step, prompts=prompts, last_checkpoint=last_checkpoint)
            grad_norms.append(result.pop("grad_norm"))
            for key, value in result.items():
                sums[key] += value
            scheduler.step()
        update_seconds = time.perf_counter() - update_started

        rollout = reduce_mean(accelerator, rollout_means(stats))
        totals = {k: sum_over_processes(accelerator, v) for k, v in sums.items()}
        record = {"kind": "train", "step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lrs[0],
                  **rollout, "loss": totals["loss"] / config.mini_batches, "loss_tokens": int(totals["loss_tokens"]),
                  "clip_low_fraction": totals["clipped_low"] / max(totals["loss_tokens"], 1),
                  "clip_high_fraction": totals["clipped_high"] / max(totals["loss_tokens"], 1),
                  "kl": totals["kl"] / max(totals["loss_tokens"], 1),
                  "grad_norm": float(np.mean(grad_norms)), "groups_sampled": stats.groups,
                  "groups_kept": stats.kept_groups,
                  "groups_format_only": int(sum_over_processes(accelerator, stats.format_only)),
                  "refills": stats.rounds - 1, "prompts_drawn": prompts_drawn,
                  "reward_errors": int(sum_over_processes(accelerator, stats.reward_errors)),
                  **{name: int(sum_over_processes(accelerator, stats.counts.get(name, 0))) for name in rewards.COUNTS},
                  "rollout_seconds": stats.seconds, "update_seconds": update_seconds}
        if accelerator.is_main_process and (step % config.log_every == 0 or step == total_steps):
            log.append(record)
        progress.update(step, record["loss"], stats.groups * config.rollouts_per_prompt / max(stats.seconds, 1e-9),
                        extra=(f"reward {record['reward']:.3f} · acc {record.get('accuracy', float('nan')):.2f} · "
                               f"fmt {record.get('format', float('nan')):.2f} · seg {record['segment_rate']:.2f} · "
                               f"kept tok {record['loss_tokens']}"))

        if step == total_steps or (config.save_every and step % config.save_every == 0):
            last_checkpoint = runs.save_checkpoint(
                run, accelerator, step=step, model=policy, optimizer=optimizer, scheduler=scheduler,
                trainer_state={"prompts_drawn": prompts_drawn, "total_steps": total_steps},
                keep=config.keep_checkpoints)
        if stop_after_step is not None and step == stop_after_step:
            progress.close()
            return run.path
    progress.close()

    # ---------------------------------------------------------------- save
    final = engine.full_model(accelerator, unwrapped, lambda: trainable_starting_model(config))
    return save_trained_model(accelerator, run, final, config.dtype,
                              lambda: runs.training_record(final, settings, run, stage=STAGE, step=total_steps),
                              show=show)


def trainable_starting_model(config: Stage3Config):
    """The starting model with what Stage 3 trains made trainable (float32), as the run built it."""
    model = load_starting_model(config)
    train_the_mllm(model, freeze_vision=config.freeze_vision)
    float32_trainables(model)
    return model


# ---------------------------------------------------------------------- setup helpers


def verifiable_prompts(name: str, source: list) -> tuple[list[VQASample], dict[str, int]]:
    """The source's question-answer samples that carry an answer to check and have one image, and
    how many records were left out, by reason (``no_answer``, ``several_images``: the reasoning loop
    shows one image per question, and asking about the first alone would reward guesses about
    images the model never saw); none left is an error.

    >>> from seganswer_cli.data.samples import ImageRef
    >>> one, two = [ImageRef(path="a.png")], [ImageRef(path="b.png")]
    >>> kept, left_out = verifiable_prompts("x", [VQASample("1", one[0], "q?", "4", "x"),
    ...                                           VQASample("2", one[0], "q?", "4", "x", extra_images=two)])
    >>> [s.id for s in kept], left_out
    (['1'], {'no_answer': 0, 'several_images': 1})
    """
    answered = [s for s in source if isinstance(s, VQASample) and str(s.answer or "").strip()
                and (not s.options or s.answer_letter or s.answer in s.options)]
    kept = [s for s in answered if not s.extra_images]
    left_out = {"no_answer": len(source) - len(answered), "several_images": len(answered) - len(kept)}
    if not kept:
        kinds = sorted({type(s).__name__ for s in source})
        several = (f", {left_out['several_images']} answered but with several images"
                   if left_out["several_images"] else "")
        raise UsageError(f"--data {name}: no prompt with a verifiable answer among its {len(source)} records "
                         f"({', '.join(kinds)}{several}); Stage 3 needs question-answer samples with "
                         f"ground-truth answers and one image each")
    return kept, left_out


def print_left_out(name: str, counts: dict[str, int]) -> None:
    """One line on stderr: the records of a prompt source that Stage 3 does not use, and why."""
    from rich.console import Console

    reasons = {"no_answer": "without a verifiable answer",
               "several_images": "with several images (the reasoning loop takes one per question)"}
    parts = [f"{n} {reasons[k]}" for k, n in counts.items() if n]
    Console(stderr=True).print(f"{name}: left out {'; '.join(parts)}", highlight=False)


def reference_model(model):
    """A frozen copy of the starting policy for the optional KL term."""
    import copy

    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


# ---------------------------------------------------------------------- update helpers


def split_even(items: list, parts: int) -> list[list]:
    """``items`` cut into ``parts`` consecutive chunks of near-equal size (some may be empty).

    >>> split_even([1, 2, 3, 4, 5], 2)
    [[1, 2, 3], [4, 5]]
    """
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def micro_batches(chunk: list[Rollout], size: int) -> list[list[Rollout]]:
    """A mini-batch's training forwards, ``size`` trajectories each (the last may be smaller)."""
    return [chunk[i : i + size] for i in range(0, len(chunk), size)]


@torch.no_grad()
def recompute_old_logprobs(policy, accelerator, chunks: list[list[Rollout]], spare: Rollout,
                           config: Stage3Config) -> None:
    """Set every kept trajectory's ``logprobs`` to the training forward's, before any update of the
    step: the same micro-batches and autocast as ``policy_update``, so its first forward computes
    the same numbers and the first ratio is exactly 1. Processes with fewer micro-batches run the
    spare (their sharded forwards gather with the others)."""
    for chunk in chunks:
        micro = micro_batches(chunk, config.micro_batch_size)
        n_micro = max(gather_ints(accelerator, len(micro))) if accelerator.num_processes > 1 else len(micro)
        for index in range(n_micro):
            part = micro[index] if index < len(micro) else []
            with accelerator.autocast():
                logprobs = policy([r.trajectory.sequence for r in part] or [spare.trajectory.sequence],
                                  config.temperature)
            for r, values in zip(part, logprobs):
                r.trajectory.logprobs = values.detach()


def policy_update(policy, optimizer, accelerator, chunk: list[Rollout], spare: Rollout,
                  config: Stage3Config, reference, *, step: int, prompts: list, last_checkpoint) -> dict[str, float]:
    """One optimizer step on a mini-batch: forwards of ``micro_batch_size`` trajectories, the DAPO
    loss over the mini-batch's generated tokens (summed over processes), one clipped update."""
    from contextlib import nullcontext

    local_tokens = sum(r.trajectory.generated_tokens for r in chunk)
    token_total = sum_over_processes(accelerator, local_tokens)
    micro = micro_batches(chunk, config.micro_batch_size)
    n_micro = max(gather_ints(accelerator, len(micro))) if accelerator.num_processes > 1 else len(micro)
    # DDP averages gradients over processes; the loss is a token sum over the global mini-batch
    scale = float(accelerator.num_processes)
    out = {"loss": 0.0, "clipped_low": 0.0, "clipped_high": 0.0, "kl": 0.0, "loss_tokens": float(local_tokens),
           "grad_norm": 0.0}
    if token_total == 0:  # an empty mini-batch on every process (more mini-batches than trajectories)
        return out
    for index in range(max(n_micro, 1)):
        part = micro[index] if index < len(micro) else []
        sync = index == max(n_micro, 1) - 1
        context = nullcontext() if sync or accelerator.num_processes == 1 else accelerator.no_sync(policy)
        with context, accelerator.autocast():
            if part:
                sequences = [r.trajectory.sequence for r in part]
                logprobs = policy(sequences, config.temperature)
                new, mask = pad_rows(logprobs)
                old, _ = pad_rows([r.trajectory.logprobs.to(new.device) for r in part])
                ref = None
                if reference is not None:
                    with torch.no_grad():
                        ref, _ = pad_rows(reference.token_logprobs(sequences, temperature=config.temperature))
                advantages = torch.tensor([r.advantage for r in part], dtype=new.dtype, device=new.device)
                result = dapo_policy_loss(new, old.to(new.dtype), advantages, mask.to(new.device),
                                          clip_low=config.clip_low, clip_high=config.clip_high,
                                          token_total=max(token_total, 1.0), ref_logprobs=ref, kl_coef=config.kl_coef)
                loss = result.loss
                out["clipped_low"] += result.clipped_low
                out["clipped_high"] += result.clipped_high
                out["kl"] += result.kl
            else:
                # nothing (left) on this process: a zero-weighted forward keeps DDP's reductions in step
                loss = policy([spare.trajectory.sequence], config.temperature)[0].sum() * 0.0
            stop_if_not_finite(accelerator, loss.detach(), step, prompts, last_checkpoint, "loss")
            accelerator.backward(loss * scale)
            out["loss"] += float(loss.detach())
    grad_norm = clip_gradients(accelerator, policy, config.optim.max_grad_norm)
    stop_if_not_finite(accelerator, grad_norm, step, prompts, last_checkpoint, "gradient norm")
    optimizer.step()
    optimizer.zero_grad()
    out["grad_norm"] = float(grad_norm)
    return out


def rollout_means(stats: RolloutStats) -> dict[str, float]:
    """Per-step rollout metrics: mean total reward, each reward part, segment rate, segmented-view
    tokens kept per look, generated tokens per rollout."""
    out = {"reward": float(np.mean(stats.rewards)),
           "segment_rate": float(np.mean(stats.segmented)),
           "view_tokens": float(np.mean(stats.view_tokens)) if stats.view_tokens else 0.0,
           "generated_tokens": float(np.mean(stats.generated))}
    for name, values in stats.parts.items():
        out[name] = float(np.mean(values))
    return out


