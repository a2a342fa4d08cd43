"""Stage 2, multimodal interleaved SFT (paper §3.2, §4.2): segmentation as an intermediate turn.

Algorithm. Each question-answer sample becomes the paper's Stage 2 conversation, laid out by
``conversation.reasoning_sequence``, whose turns the reasoning loop builds with the same calls:

    Prompt 1   image + "Question: ..." + the reasoning instruction
    Response 1 "To find the answer, it should first observe <|seg|>."
    Prompt 2   the segmented region: kept cells of the mask at the original image's positions
    Response 2 "<answer> ... </answer>."  (the ground-truth answer)

The mask is the model's **own**: pass 1 (no gradient, eval mode) runs Prompt 1 + Response 1 through
the model; the last-layer state at its ``<|seg|>`` goes through the frozen projector and SAM 2.1
(``SegAnswerModel.forward`` with the image), and the mask (logits > 0 at the image's size) becomes
the segmented view through ``SegAnswerModel.second_look``: the same function the reasoning loop
calls, so an empty mask falls back to the original image exactly as at inference (counted as
``empty_mask``). Pass 2 runs the whole conversation with gradients; the loss is next-token
cross-entropy on the model's turns only (``Sequence.target_mask``: Response 1, Response 2 and
their ``<|im_end|>``); the prompts, the image and the segmented region carry none. A share of the
samples (``direct_share``) answers at once (Response 1 is the answer) so that segmenting is a
choice the model makes. Projector and SAM 2.1 are frozen; every MLLM parameter trains (the vision
tower too, unless ``freeze_vision``). Boxes and region masks in the data are never read, unless
``region_share`` (ours, off by default) shows that share of the segmenting samples their annotated
region instead of the model's own mask, or ``seg_loss`` (ours, off by default) trains their
``<|seg|>`` masks towards it.

Question text and answer come from ``conversation.prompt_and_answer``, the function
``shapes-vqa`` asks its questions with (multiple choice answered by the letter, free text by the
answer), so what Stage 2 teaches is what the benchmark asks.

Where this departs from the paper (which gives the data, lr 2e-6 and 1 epoch):
- ``direct_share`` (default 0.1) and its seeded per-position draw are ours; the paper does not say
  how the model learns to answer without segmenting;
- ``region_share`` (default 0) is ours: views of the annotated region, so that the view keeps
  predicting the answer while the model's own masks are poor;
- ``seg_loss`` (default 0) is ours: SAM 2.1's mask losses on the ``<|seg|>`` mask against the
  annotated region, beside the answer loss (pass 2 then runs the frozen SAM on those rows), so that
  training on answers does not move the ``<|seg|>`` state off the questions' targets;
- ``masks: precomputed`` computes each planned sample's mask once, with the *starting* model, before
  step 1, and caches it in ``RUN_DIR/masks/``: no pass 1 per step (faster), but late in the run the
  model looks at masks an earlier model made rather than its own current ones. ``online`` (default)
  is the paper's "the model's own <|seg|>" at every step;
- AdamW, warmup 3 %, cosine decay, clipping at 1.0, and ``max_length`` with ``too_long`` are ours;
- the tiny CPU recipe (``configs/stage2-tiny.yaml``) starts from a random model through a short
  Stage 1, so it uses lr 1e-3 held constant: the paper's 2e-6 fine-tunes a pretrained 7B model and
  would not move a random tiny one in a few dozen steps.

Bad input never stops a run mid-way: a sample with a missing image file, an empty answer, an
image that cannot be read, or a conversation over ``max_length`` (skipped, or truncated with
``too_long: truncate``) is reported in one line (the first few of each kind), counted, and the run
goes on; the counts are in every metrics line, the final checkpoint and ``seganswer.json``. A missing
image or empty answer is detected when drawn (replaced by the next draw, the same on every process);
the rest while preparing a micro-batch (the sample is dropped from it).

Distributed: as Stage 1 (``train/engine.py``: DDP, or FSDP2 shards with ``strategy: fsdp``, what the
7B recipe uses; autocast, gradient accumulation); every process draws the same global batch and
trains on its slice; pass 1 runs on each process's own slice (under FSDP2 on weights gathered for
it, since the processes run it unevenly).

Run it::

    seganswer data synth --kind vqa --n 512 --size 96x96 --out data/shapes-vqa
    seganswer train-stage2 -c stage2-tiny --model runs/s1-lora/model --data shapes=data/shapes-vqa --out runs/s2
    seganswer train-stage2 -c stage2-7b --model runs/s1-merged --data visualcot=data/visualcot --out runs/s2-7b
    bash configs/launch/torchrun-1x8.sh train-stage2 -c stage2-7b ...     # 8 GPUs, FSDP2 (the recipe's strategy)

The run folder layout, checkpoints and resume are ``train/runs.py``'s (docs/training.md).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seganswer_cli.config import Stage2Config
from seganswer_cli.data import VQASample, open_mixture
from seganswer_cli.errors import ImageReadError, ModelFolderError, UsageError, read_json
from seganswer_cli.jsonl import JsonlAppender, read_records
from seganswer_cli.model.conversation import prompt_and_answer, reasoning_sequence, seg_request
from seganswer_cli.model.losses import total_loss
from seganswer_cli.train import engine, runs
from seganswer_cli.train.stage_setup import (
    data_specs,
    keep_frozen_parts_in_eval,
    load_starting_model,
    open_run,
    planned_steps,
    print_start,
    ready_to_train,
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
    reduce_mean,
    sample_stream,
    stop_if_not_finite,
)

STAGE = "stage2"
MASKS_DIR = "masks"
#: What is counted: samples replaced when drawn, dropped from a micro-batch, or changed.
PROBLEMS = ("missing_image", "empty_answer", "unreadable_image", "too_long_skipped", "too_long_truncated",
            "empty_mask")
#: Lines printed per kind of problem before only counting.
SHOWN_PER_PROBLEM = 3


def train_stage2(config: Stage2Config, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, stop_after_step: int | None = None) -> Path:
    """Run Stage 2 into the run folder ``out``; returns the final model folder.

    ``stop_after_step`` ends the process's work after that optimizer step as if it were killed
    (no final checkpoint, no model folder): how the tests interrupt a run before ``resume``.
    """
    # ---------------------------------------------------------------- setup: cheap checks first
    run, config = open_run(config, out, resume=resume, overwrite=overwrite, stage=STAGE, defaults=Stage2Config())
    specs = data_specs(config.data)
    check_starting_model(config)

    accelerator = start_accelerator(config, gradient_accumulation_steps=config.grad_accum)

    mixture, skipped = open_mixture(specs, on_error=config.on_error, seed=config.seed)
    for name, source in zip(mixture.names, mixture.sources):
        if not isinstance(source[0], VQASample):
            raise UsageError(f"--data {name}: Stage 2 needs question-answer samples, got {type(source[0]).__name__}")

    model = trainable_starting_model(config)

    world = accelerator.num_processes
    global_batch = config.batch_size * config.grad_accum * world
    dataset_size = sum(len(s) for s in mixture.sources)
    steps_per_epoch, total_steps = planned_steps(config, dataset_size, global_batch)
    model, optimizer, scheduler, warmup = engine.prepare_for_training(
        accelerator, model, config, param_groups=trainable_parameters, total_steps=total_steps)
    unwrapped = accelerator.unwrap_model(model)
    params = trainable_parameters(unwrapped)

    settings = run_settings(STAGE, config, accelerator, mixture, skipped, unwrapped,
                            steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=warmup,
                            global_batch=global_batch)
    state, log = start_or_resume(run, accelerator, settings, resume=resume, overwrite=overwrite, model=model,
                                 optimizer=optimizer, scheduler=scheduler, launch_key="global_batch")
    start_step, draws_done, counts = state.get("step", 0), state.get("draws", 0), Counter(state.get("problems", {}))
    show = accelerator.is_main_process and not quiet
    report = ProblemReport(counts, show=show)
    if show:
        c = settings["config"]
        print_start("train-stage2", settings, run, start_step, skipped, rows={
            "global batch": f"{global_batch} = {c['batch_size']} x {c['grad_accum']} accum x {world} proc",
            "masks": f"{c['masks']}, direct answers {c['direct_share']:.0%}"
                     + (f", annotated regions {c['region_share']:.0%}" if c["region_share"] else "")
                     + (f", mask loss x{c['seg_loss']:g} on annotated regions" if c["seg_loss"] else ""),
            "trainable": f"{settings['trainable_parameters']:,} parameters "
                         f"(MLLM{'' if not c['freeze_vision'] else ', vision frozen'})",
            "max length": f"{c['max_length']} tokens ({c['too_long']} longer ones)",
        })

    mask_cache = None
    if config.masks == "precomputed":
        planned = plan_samples(mixture, config, global_batch, total_steps)
        with engine.gathered(unwrapped):  # each process computes its own share
            mask_cache = precompute_masks(unwrapped, planned, run.path / MASKS_DIR, accelerator, config,
                                          resume=resume, show=show)

    # ---------------------------------------------------------------- train
    draws = Draws(sample_stream(mixture, skip=draws_done), config, start=draws_done, report=report)
    last_checkpoint = run.latest_checkpoint()
    model.train()
    keep_frozen_parts_in_eval(unwrapped)
    progress = TrainProgress(total_steps, start_step, enabled=show, label="stage 2")
    report.progress = progress
    seg_weights = segmentation_weights(config.seg_loss)
    sharded, spare = engine.uses_fsdp(config, accelerator), []
    step_started = time.perf_counter()
    for step in range(start_step + 1, total_steps + 1):
        batch = draws.take(global_batch)  # identical on every process
        sums = {"loss": 0.0, "target_tokens": 0.0, "sequence_tokens": 0.0, "direct": 0.0, "region": 0.0,
                "trained": 0.0, **({"seg": 0.0} if config.seg_loss > 0 else {})}
        pass1_seconds, grad_norm = 0.0, None
        for micro in range(config.grad_accum):
            start = (micro * world + accelerator.process_index) * config.batch_size
            local = batch[start : start + config.batch_size]  # this process's slice of the micro-step
            t0 = time.perf_counter()
            with accelerator.autocast(), engine.gathered(unwrapped):  # pass 1 runs where samples segment
                examples = prepare_examples(unwrapped, local, config, report, mask_cache)
            spare = spare or examples[:1]
            pass1_seconds += time.perf_counter() - t0
            model.train()
            keep_frozen_parts_in_eval(unwrapped)
            with accelerator.accumulate(model):
                if examples and config.seg_loss > 0:  # SAM runs on the rows with a region: their masks' losses
                    out = model([e.sequence for e in examples], [e.image for e in examples],  # None: no region
                                [[e.target] if e.target is not None else [] for e in examples], weights=seg_weights,
                                image_embeddings=[e.sam for e in examples])  # pass 1's, where it ran
                    loss = out.loss
                    sums["seg"] += total_loss(None, out.mask_loss_parts, seg_weights).detach().item() / config.grad_accum
                elif examples:
                    out = model([e.sequence for e in examples])  # no images: LM loss only, SAM not run
                    loss = out.loss
                elif sharded and spare:  # every sample of the slice was dropped: FSDP2 needs a forward on
                    loss = model([spare[0].sequence]).loss * 0.0  # every process (its gathers), zero-weighted
                else:  # every sample of the slice was dropped: a zero loss keeps the processes in step
                    loss = sum(p.sum() for p in params) * 0.0
                stop_if_not_finite(accelerator, loss.detach(), step, [d.sample for d in batch], last_checkpoint, "loss")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = clip_gradients(accelerator, model, config.optim.max_grad_norm)
                    stop_if_not_finite(accelerator, grad_norm, step, [d.sample for d in batch], last_checkpoint,
                                       "gradient norm")
                optimizer.step()
                optimizer.zero_grad()
            sums["loss"] += loss.detach().item() / config.grad_accum
            sums["target_tokens"] += sum(int(e.sequence.target_mask.sum()) for e in examples)
            sums["sequence_tokens"] += sum(len(e.sequence) for e in examples)
            sums["direct"] += sum(e.direct for e in examples)
            sums["region"] += sum(e.region for e in examples)
            sums["trained"] += len(examples)
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        scheduler.step()

        means = reduce_mean(accelerator, sums)  # averages over processes
        elapsed = time.perf_counter() - step_started
        if step % config.log_every == 0 or step == total_steps:
            record = {"kind": "train", "step": step, "epoch": round(step / steps_per_epoch, 4),
                      "samples": step * global_batch, "draws": draws.position, "lr": lr,
                      "grad_norm": float(grad_norm), **means, "problems": report.totals(),
                      "samples_per_s": global_batch / max(elapsed, 1e-9), "pass1_s": pass1_seconds}
            if accelerator.is_main_process:
                log.append(record)
        progress.update(step, means["loss"], global_batch / max(elapsed, 1e-9))

        if step == total_steps or (config.save_every and step % config.save_every == 0):
            last_checkpoint = runs.save_checkpoint(
                run, accelerator, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                trainer_state={"samples_seen": step * global_batch, "global_batch": global_batch,
                               "total_steps": total_steps, "draws": draws.position,
                               "problems": gathered_problems(accelerator, report)},
                keep=config.keep_checkpoints)
        if stop_after_step is not None and step == stop_after_step:
            progress.close()
            return run.path
        step_started = time.perf_counter()  # samples/s counts training only, not checkpoints
    progress.close()

    # ---------------------------------------------------------------- save
    problems = gathered_problems(accelerator, report)
    if show and accelerator.is_main_process:
        report.print_summary(problems, settings["records_skipped_reading"])
    final = engine.full_model(accelerator, unwrapped, lambda: trainable_starting_model(config))
    return save_trained_model(accelerator, run, final, config.dtype,
                              lambda: runs.training_record(final, settings, run, stage=STAGE, step=total_steps,
                                                           masks=config.masks, problems=problems), show=show)


# ---------------------------------------------------------------------- setup helpers


def trainable_starting_model(config: Stage2Config):
    """The starting model with what Stage 2 trains made trainable (float32; checkpointing when set)."""
    model = load_starting_model(config)
    train_the_mllm(model, freeze_vision=config.freeze_vision)
    ready_to_train(model, config)
    return model


def check_starting_model(config: Stage2Config) -> None:
    """Refuse, in one line, a starting model that is not a Stage 1 output (no ``stage1`` record in its
    ``seganswer.json``): its projector and mask decoder were never trained, so Stage 2 would look at
    meaningless masks. ``allow_untrained_start`` lets it through (and a preset name with it)."""
    from seganswer_cli.model.presets import PRESETS
    from seganswer_cli.model.seganswer import MODEL_CARD

    if not config.model:
        raise UsageError("no starting model: give --model, the model/ folder of a Stage 1 run")
    folder = Path(config.model)
    if not folder.exists():
        if config.model in PRESETS:
            if config.allow_untrained_start:
                return
            raise ModelFolderError(f"--model {config.model} is a preset with an untrained projector and mask decoder; "
                                   "Stage 2 starts from a Stage 1 model folder (--allow-untrained-start to use it anyway)")
        raise ModelFolderError(f"model folder not found: {config.model}")
    card = folder / MODEL_CARD
    if not card.is_file():
        raise ModelFolderError(f"{folder} is not a seganswer model folder (no {MODEL_CARD})")
    info = read_json(card, ModelFolderError)
    history = info.get("training_history") or ([info["training"]] if isinstance(info.get("training"), dict) else [])
    if not any(isinstance(h, dict) and h.get("stage") == "stage1" for h in history) and not config.allow_untrained_start:
        raise ModelFolderError(f"{folder} is not a Stage 1 output ({MODEL_CARD} has no stage1 training record): its "
                               "projector and mask decoder are untrained (--allow-untrained-start to use it anyway)")


def segmentation_weights(scale: float):
    """The loss weights of pass 2: next-token CE at 1, SAM 2.1's mask losses at Stage 1's weights
    times ``scale`` (``seg_loss``)."""
    from seganswer_cli.model import LossWeights

    return LossWeights(**{name: value * scale for name, value in asdict(LossWeights()).items() if name != "lm"})


# ---------------------------------------------------------------------- drawing samples


@dataclass
class Drawn:
    """One draw of the sample stream that passed the cheap checks."""

    index: int
    """Position in the stream (0-based): decides ``direct`` and is the run's data position."""
    sample: VQASample
    prompt: str
    answer: str
    direct: bool
    """Answer at once (no ``<|seg|>``): a seeded draw per stream position."""
    region: bool = False
    """Look at the annotated region instead of the model's own mask (``region_share``; segmenting
    samples that have a region only)."""


class Draws:
    """The seeded sample stream, with the checks that need no image decoding: a sample whose image
    file is missing or whose answer is empty is reported, counted and replaced by the next draw.
    The same on every process (each sees the same stream), so processes stay in step."""

    def __init__(self, stream: Iterator[VQASample], config: Stage2Config, *, start: int, report: ProblemReport):
        self.stream, self.config, self.position, self.report = stream, config, start, report

    def take(self, n: int) -> list[Drawn]:
        out = []
        while len(out) < n:
            index, sample = self.position, next(self.stream)
            self.position += 1
            problem = draw_problem(sample)
            if problem is not None:
                self.report.add(problem[0], sample, problem[1])
                continue
            prompt, answer = prompt_and_answer(sample)
            direct = seeded_coin(self.config, "direct", index, self.config.direct_share)
            region = not direct and has_region(sample) and seeded_coin(self.config, "region", index,
                                                                        self.config.region_share)
            out.append(Drawn(index, sample, prompt, answer, direct, region))
        return out


def draw_problem(sample: VQASample) -> tuple[str, str] | None:
    """``(kind, message)`` when the sample cannot be trained on, found without reading the image."""
    if sample.image.path is not None and not sample.image.path.is_file():
        return "missing_image", f"image file not found: {sample.image.path}"
    _, answer = prompt_and_answer(sample)
    if not answer or not answer.strip() or answer == "None" or not sample.question.strip():
        return "empty_answer", "empty answer" if sample.question.strip() else "empty question"
    return None


def seeded_coin(config: Stage2Config, what: str, index: int, share: float) -> bool:
    """A coin per stream position and purpose (``direct``: a direct-answer conversation; ``region``: a
    look at the annotated region) that lands true with probability ``share``, seeded by the run's seed."""
    if share <= 0:
        return False
    return random.Random(f"{config.seed}:{what}:{index}").random() < share


def has_region(sample: VQASample) -> bool:
    return bool(sample.region_masks or sample.region_boxes)


def annotated_region(sample: VQASample, height: int, width: int) -> np.ndarray:
    """Bool ``(H, W)``: the union of the sample's region masks, else of its boxes (pixels, clamped)."""
    region = sample.region()
    if region is not None:
        return region
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in sample.region_boxes:
        mask[max(0, int(y0)) : min(height, math.ceil(y1)), max(0, int(x0)) : min(width, math.ceil(x1))] = True
    return mask


def plan_samples(mixture, config: Stage2Config, global_batch: int, total_steps: int) -> list[Drawn]:
    """Every draw the run will train on, in order (the draws are cheap: no image is decoded)."""
    draws = Draws(sample_stream(mixture, skip=0), config, start=0, report=ProblemReport(Counter(), show=False))
    return draws.take(global_batch * total_steps)


# ---------------------------------------------------------------------- pass 1 and the conversation


@dataclass
class Example:
    """One training conversation, ready for pass 2."""

    sequence: Any
    """``model.sequence.Sequence``: ids, 3-D positions, target mask (the model's turns), visual slots."""
    direct: bool
    mask: np.ndarray | None
    """The mask of the segmented turn (None for a direct answer)."""
    region: bool = False
    """The mask is the sample's annotated region (``region_share``), not the model's."""
    fallback: str | None = None
    """``empty_mask`` when the mask was empty and the original image was shown again."""
    image: Any = None
    """The PIL image, set with ``target`` only (SAM 2.1 runs on it in pass 2 when ``seg_loss`` is on)."""
    sam: Any = None
    """SAM 2.1's embedding of ``image`` from pass 1 (``ImageEmbeddings``), reused by pass 2; None when
    pass 1 did not run on it (an annotated region, precomputed masks)."""
    target: np.ndarray | None = None
    """The annotated region the ``<|seg|>`` mask is trained towards (``seg_loss``; None: no mask loss)."""


@torch.no_grad()
def own_masks(model, images: list, prefixes: list) -> tuple[list[np.ndarray], list]:
    """Pass 1: the model's own masks, bool ``(H, W)`` per image, from its ``<|seg|>`` states through
    the frozen projector and SAM 2.1 (eval mode: the inference path), and SAM's embedding of each image
    (``ImageEmbeddings`` of one image), which pass 2 reuses instead of running the encoder again."""
    from seganswer_cli.model.mask_decoder import binary_masks

    was_training = model.training
    model.eval()
    out = model(prefixes, images)
    masks = binary_masks([pred.low_res_logits[0] for pred in out.masks], [(im.height, im.width) for im in images])
    embeddings = [out.image_embeddings.select(i) for i in range(len(out.mask_rows))]  # every row asks: rows in order
    model.train(was_training)
    return masks, embeddings


def prepare_examples(model, drawn: list[Drawn], config: Stage2Config, report: ProblemReport,
                     mask_cache: dict[str, np.ndarray] | None = None) -> list[Example]:
    """The training conversations of a micro-batch: images read, pass 1 for the samples that segment
    (or their cached masks), segmented views built, length guard applied. Bad samples are dropped."""
    loaded = []
    for d in drawn:
        try:
            image = d.sample.image.load()
        except ImageReadError as e:
            report.add("unreadable_image", d.sample, str(e))
            continue
        dense = model.global_view(image)
        if not d.direct and len(seg_request(model, dense, d.prompt)) > config.max_length:
            # even Prompt 1 + Response 1 does not fit: nothing sensible to truncate to
            report.add("too_long_skipped", d.sample, f"the prompt alone is over max_length {config.max_length}")
            continue
        loaded.append((d, image, dense))
    seg = [(d, image, dense) for d, image, dense in loaded if not d.direct and not d.region]
    embeddings = []  # SAM's embeddings from pass 1, for pass 2's mask losses (seg_loss)
    if mask_cache is not None:
        masks = [mask_cache[sample_key(d.sample)] for d, _, _ in seg]
    elif seg:
        masks, embeddings = own_masks(model, [image for _, image, _ in seg],
                                      [seg_request(model, dense, d.prompt) for d, _, dense in seg])
    else:
        masks = []
    mask_of = {id(d): m for (d, _, _), m in zip(seg, masks)}
    # reused only while SAM's encoder path is frozen (every paper stage): then they are what pass 2 computes
    sam_of = {id(d): e for (d, _, _), e in zip(seg, embeddings)} if model.mask_decoder.encoder_frozen else {}
    mask_of.update({id(d): annotated_region(d.sample, image.height, image.width) for d, image, _ in loaded if d.region})

    examples = []
    for d, image, dense in loaded:
        example = build_example(model, d, image, dense, mask_of.get(id(d)))
        if config.seg_loss > 0 and not d.direct and has_region(d.sample):
            example.image = image
            example.sam = sam_of.get(id(d))
            example.target = mask_of[id(d)] if d.region else annotated_region(d.sample, image.height, image.width)
        if example.fallback is not None:
            report.add("empty_mask", d.sample, "empty mask: the original image is shown again", quiet=True)
        if len(example.sequence) > config.max_length:
            if config.too_long == "truncate":
                cut = truncate_sequence(example.sequence, config.max_length)
                if cut is not None:
                    report.add("too_long_truncated", d.sample,
                               f"{len(example.sequence)} tokens truncated to {len(cut)} (max_length {config.max_length})")
                    example.sequence = cut
                    examples.append(example)
                    continue
            report.add("too_long_skipped", d.sample, f"{len(example.sequence)} tokens > max_length {config.max_length}")
            continue
        examples.append(example)
    return examples


def build_example(model, drawn: Drawn, image, dense, mask: np.ndarray | None) -> Example:
    """The Stage 2 conversation of one sample: direct, or through the segmented view of ``mask``
    (``second_look``: an empty mask shows the original image again, as in the reasoning loop)."""
    if drawn.direct:
        return Example(reasoning_sequence(model, dense, drawn.prompt, drawn.answer), direct=True, mask=None)
    view, fallback = model.second_look(image, mask, mode="mask")
    sequence = reasoning_sequence(model, dense, drawn.prompt, drawn.answer, view=view)
    return Example(sequence, direct=False, mask=mask, region=drawn.region, fallback=fallback)


def truncate_sequence(sequence, length: int):
    """The first ``length`` tokens of ``sequence``, cut earlier when the cut would split an image
    (``<|vision_start|>`` ... ``<|vision_end|>`` are kept or dropped whole); None when no target
    token is left to train on."""
    from seganswer_cli.model.sequence import Sequence

    cut = length
    for slot in sequence.visuals:  # slot tokens are [start, start + length); its tags sit either side
        if slot.start - 1 < cut <= slot.start + slot.length:
            cut = slot.start - 1
            break
    if not bool(sequence.target_mask[1:cut].any()):
        return None
    return Sequence(
        input_ids=sequence.input_ids[:cut],
        position_ids=sequence.position_ids[:, :cut],  # (3, cut)
        target_mask=sequence.target_mask[:cut],
        visuals=[v for v in sequence.visuals if v.start + v.length < cut],
        image_bases=sequence.image_bases,
        next_position=float(sequence.position_ids[:, :cut].max()) + 1,
    )


# ---------------------------------------------------------------------- precomputed masks


def sample_key(sample: VQASample) -> str:
    """Cache key of a sample's mask: its id and its image (ids are unique within a source only)."""
    return f"{sample.id}|{sample.image.describe()}"


def precompute_masks(model, planned: list[Drawn], folder: Path, accelerator, config: Stage2Config, *,
                     resume: bool, show: bool) -> dict[str, np.ndarray]:
    """Masks of every planned sample that segments, by the model as it is now (the starting model),
    cached as COCO RLE in ``folder/masks-rank<N>.jsonl`` (each process computes a share). A resumed
    run reads the cache; it never recomputes with a trained model."""
    from seganswer_cli.masks import decode_rle, encode_rle

    wanted = {}
    for d in planned:
        if not d.direct and not d.region:
            wanted.setdefault(sample_key(d.sample), d)
    cache = read_mask_cache(folder)
    if resume:
        missing = [k for k in wanted if k not in cache]
        if missing:
            raise UsageError(f"--resume: the mask cache in {folder} lacks {len(missing)} planned sample(s) "
                             f"(first: {missing[0]}); start the run again with --overwrite")
        return {k: decode_rle(cache[k]) for k in wanted}
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    todo = [d for k, d in wanted.items() if k not in cache][accelerator.process_index :: accelerator.num_processes]
    progress = TrainProgress(len(todo), 0, enabled=show, label="masks (starting model)")
    with JsonlAppender(folder / f"masks-rank{accelerator.process_index}.jsonl") as sink:
        for i in range(0, len(todo), config.batch_size):
            chunk, images, prefixes, kept = todo[i : i + config.batch_size], [], [], []
            for d in chunk:
                try:
                    image = d.sample.image.load()
                except ImageReadError:
                    continue  # counted when the training step meets it
                prefix = seg_request(model, model.global_view(image), d.prompt)
                if len(prefix) > config.max_length:
                    continue  # skipped (and counted) when the training step meets it
                images.append(image)
                prefixes.append(prefix)
                kept.append(d)
            with accelerator.autocast():
                masks = own_masks(model, images, prefixes)[0] if images else []
            for d, mask in zip(kept, masks):
                sink.write({"key": sample_key(d.sample), "mask": encode_rle(mask)})
            progress.update(min(i + config.batch_size, len(todo)), float("nan"), 0.0)
    progress.close()
    accelerator.wait_for_everyone()
    cache = read_mask_cache(folder)
    return {k: decode_rle(cache[k]) for k in wanted if k in cache}


def read_mask_cache(folder: Path) -> dict[str, Any]:
    """key -> RLE of every cached mask (a line cut by a kill is skipped, and cut off before the
    next append: ``jsonl``'s rules)."""
    cache = {}
    for path in sorted(folder.glob("masks-rank*.jsonl")) if folder.is_dir() else []:
        for record in read_records(path, require=("key", "mask")):
            cache[record["key"]] = record["mask"]
    return cache


# ---------------------------------------------------------------------- reporting


class ProblemReport:
    """Counts of bad samples; the first few of each kind are printed as one line each."""

    def __init__(self, counts: Counter, *, show: bool) -> None:
        self.counts = Counter({k: int(counts.get(k, 0)) for k in PROBLEMS})
        self.shown: Counter = Counter()
        self.show = show
        self.progress = None

    def add(self, kind: str, sample: VQASample, message: str, *, quiet: bool = False) -> None:
        self.counts[kind] += 1
        if self.show and not quiet and self.shown[kind] < SHOWN_PER_PROBLEM:
            self.shown[kind] += 1
            more = " (further ones are only counted)" if self.shown[kind] == SHOWN_PER_PROBLEM else ""
            line = f"stage 2: sample {sample.id}: {message}; {'skipped' if kind != 'too_long_truncated' else 'truncated'}{more}"
            console = self.progress.console if self.progress is not None and self.progress.enabled else None
            if console is not None:
                console.print(line, highlight=False, markup=False)
            else:
                from rich.console import Console

                Console(stderr=True).print(line, highlight=False, markup=False)

    def totals(self) -> dict[str, int]:
        return {k: int(self.counts[k]) for k in PROBLEMS}

    def print_summary(self, totals: dict[str, int], read_skipped: dict[str, int]) -> None:
        """One line at the end of the run: what the readers left out and what training skipped or changed."""
        from rich.console import Console

        found = {k: v for k, v in totals.items() if v}
        text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in found.items()) if found else "none"
        read = ", ".join(f"{n} {v}" for n, v in read_skipped.items() if v) or "none"
        Console(stderr=True).print(f"stage 2: records skipped while reading: {read}; samples skipped, truncated "
                                   f"or shown the original image: {text}", highlight=False, soft_wrap=True)


def gathered_problems(accelerator, report: ProblemReport) -> dict[str, int]:
    """Counts over all processes. Draw-time problems (missing image, empty answer) are seen by every
    process alike and counted once; the rest are per process and summed."""
    local = report.totals()
    if accelerator.num_processes == 1:
        return local
    shared = ("missing_image", "empty_answer")
    t = torch.tensor([local[k] for k in PROBLEMS], dtype=torch.float64, device=accelerator.device)
    summed = accelerator.reduce(t, reduction="sum").tolist()
    return {k: int(local[k] if k in shared else v) for k, v in zip(PROBLEMS, summed)}
