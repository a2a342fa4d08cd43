"""Stage 1, pixel grounding (paper §3.1, §4.2): teach the model to segment through ``<|seg|>``.

Algorithm. Each sample is the paper's Prompt 1 / Response 1 pair: the image and ``Segment the
"<expression>" in the image.``, answered ``It is <|seg|>.``. One forward of ``SegAnswerModel``
gives the next-token cross-entropy on the response and, from the last-layer hidden state at the
``<|seg|>`` token (the state after reading it; inference reads the same position when the
generated token is fed back), the projector's sparse prompt, SAM 2.1's mask and SAM 2.1's mask
losses. Loss = 1·CE + 20·focal + 1·dice + 1·IoU-L1 + 1·object-BCE (``Stage1Config.loss_weights``).
Two phases, one run each:

- ``projector``: MLLM and SAM 2.1 frozen, only the projector trains (paper: lr 1e-3, 5 epochs);
- ``lora``: LoRA on the language model's linear layers + the projector + SAM's prompt encoder and
  mask decoder; the ``<|seg|>`` rows of the input embedding and LM head train too (peft trainable
  tokens), every other embedding row stays frozen (paper: lr 2e-5, 3 epochs). SAM's image encoder
  stays frozen in both phases. The run ends with LoRA merged into ``RUN_DIR/model/``; ``seganswer
  merge-lora`` does the same for any checkpoint.

Two more phases are not the paper's: the shipped demo model's stand-in for pretrained weights
(``seganswer pretrain-standin``, docs/training.md): ``points``, SAM 2.1 alone learning to segment
the shape under one click (its promptable pretraining), then ``standin``, every weight on
segmentation and questions.

Where this departs from the paper (which gives only the learning rates, epochs and datasets):
AdamW with linear warmup (3 %) then cosine decay, weight decay 0, gradient clipping at 1.0, LoRA
r=8, alpha=16, dropout 0.05 on q/k/v/o/gate/up/down, are our choices (LISA-style); an "epoch" is
as many samples as the mixture holds, drawn at the sources' weights (``data.Mixture``), not a pass
over each set. The tiny CPU recipe (``configs/stage1-tiny.yaml``) starts from a random model, not
a pretrained one: it uses a lora learning rate of 3e-3 held constant after warmup and runs ~100
steps (SAM's random decoder first collapses to empty masks and needs those steps to recover).

Distributed: ``train/engine.py`` spreads the model over the processes: DDP (``accelerate``), or
FSDP2 shards with ``strategy: fsdp`` (LoRA's frozen base weights sharded too; phases projector and
lora); ``accelerate`` runs autocast (``mixed_precision``) and gradient accumulation.
Every process draws the same global batch from the seeded sample stream and trains on its own
slice, so N processes with batch b equal one process with batch N·b.

Run it::

    seganswer train-stage1 --model tiny --data shapes=data/shapes-ref --val-data data/shapes-val \\
        --phase projector --out runs/s1-projector --config stage1-tiny
    seganswer train-stage1 --model runs/s1-projector/model --data shapes=data/shapes-ref \\
        --phase lora --out runs/s1-lora --config stage1-tiny
    torchrun --nproc_per_node 8 -m seganswer_cli train-stage1 ...      # or: configs/launch/torchrun-1x8.sh

The run folder layout, checkpoints and resume are ``train/runs.py``'s (docs/training.md).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from seganswer_cli.config import Stage1Config
from seganswer_cli.data import (
    SegSample,
    VQASample,
    open_dataset,
    open_mixture,
    parse_data_spec,
)
from seganswer_cli.errors import UsageError
from seganswer_cli.model import conversation
from seganswer_cli.train import engine, runs
from seganswer_cli.train.lora import apply_lora, merge_lora
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
)
from seganswer_cli.train.steps import (
    TrainProgress,
    clip_gradients,
    progress_print,
    reduce_mean,
    sample_stream,
    stop_if_not_finite,
)

STAGE = "stage1"
LOSS_PARTS = ("focal", "dice", "iou", "object_score")


def train_stage1(config: Stage1Config, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, stop_after_step: int | None = None) -> Path:
    """Run one Stage 1 phase into the run folder ``out``; returns the final model folder.

    ``stop_after_step`` ends the process's work after that optimizer step as if it were killed
    (no final checkpoint, no model folder): how the tests interrupt a run before ``resume``.
    """
    from accelerate.utils import DistributedDataParallelKwargs

    # ---------------------------------------------------------------- setup: cheap checks first
    run, config = open_run(config, out, resume=resume, overwrite=overwrite, stage=config.stage,
                           defaults=Stage1Config(phase=config.phase))
    specs = data_specs(config.data)
    val_spec = parse_data_spec(config.val_data) if config.val_data else None
    if val_spec is not None and not val_spec.path.exists():
        raise UsageError(f"validation dataset path not found: {val_spec.path}")

    accelerator = start_accelerator(
        config, gradient_accumulation_steps=config.grad_accum,
        # LoRA phase: SAM's prompt encoder has point/box/mask-prompt parts the <|seg|> prompt never uses
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.phase != "projector")],
    )

    if config.phase in ("points", "standin") and engine.uses_fsdp(config, accelerator):
        raise UsageError(f"phase {config.phase} runs with strategy ddp (it calls SAM 2.1 outside the model's "
                         "forward, which FSDP2 units do not gather); drop --strategy fsdp")
    if config.phase == "points" and accelerator.num_processes > 1:
        raise UsageError("phase points (SAM 2.1 alone, from clicks) runs in one process; launch it without "
                         "accelerate/torchrun")

    mixture, skipped = open_mixture(specs, on_error=config.on_error, seed=config.seed)
    for name, source in zip(mixture.names, mixture.sources):
        if not isinstance(source[0], SegSample) and not (config.phase == "standin" and isinstance(source[0], VQASample)):
            raise UsageError(f"--data {name}: Stage 1 needs referring-segmentation samples, got {type(source[0]).__name__}"
                             + ("" if config.phase == "standin" else " (questions train in phase standin only)"))
    val_samples = []
    if val_spec is not None:
        val_samples = open_dataset(val_spec.path, val_spec.format, on_error=config.on_error).take(config.val_limit)
        val_samples = [s for s in val_samples if isinstance(s, SegSample)]
        if not val_samples:
            raise UsageError(f"validation set {val_spec.path} has no referring-segmentation samples")

    model, peft_model = trainable_starting_model(config)

    world = accelerator.num_processes
    global_batch = config.batch_size * config.grad_accum * world
    dataset_size = sum(len(s) for s in mixture.sources)
    steps_per_epoch, total_steps = planned_steps(config, dataset_size, global_batch)
    model, optimizer, scheduler, warmup = engine.prepare_for_training(
        accelerator, model, config, param_groups=lambda m: param_groups(m, config), total_steps=total_steps)
    unwrapped = accelerator.unwrap_model(model)

    settings = run_settings(config.stage, config, accelerator, mixture, skipped, model,
                            steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=warmup,
                            global_batch=global_batch)
    state, log = start_or_resume(run, accelerator, settings, resume=resume, overwrite=overwrite, model=model,
                                 optimizer=optimizer, scheduler=scheduler, launch_key="global_batch")
    start_step = state.get("step", 0)
    show = accelerator.is_main_process and not quiet
    if show:
        c = settings["config"]
        print_start(f"train-stage1 · phase {c['phase']}", settings, run, start_step, skipped, rows={
            "validation": c["val_data"] or "none",
            "global batch": f"{global_batch} = {c['batch_size']} x {c['grad_accum']} accum x {world} proc",
            "lr": f"{c['optim']['lr']:g} ({c['optim']['schedule']})" + (f", SAM 2.1 {c['sam_lr']:g}" if c["sam_lr"] else ""),
        })

    # ---------------------------------------------------------------- train
    weights = loss_weights(config)
    from seganswer_cli.model.losses import total_loss
    standin, points_only = config.phase == "standin", config.phase == "points"
    clicks_train = standin and config.standin_points
    stream = sample_stream(mixture, skip=start_step * global_batch)
    last_checkpoint = run.latest_checkpoint()
    if start_step == 0 and val_samples:
        validate_and_log(unwrapped, val_samples, config, accelerator, log, step=0, show=show)
    model.train()
    keep_frozen_parts_in_eval(unwrapped)
    progress = TrainProgress(total_steps, start_step, enabled=show, label="stage 1" if config.stage == STAGE else "stand-in")
    step_started = time.perf_counter()
    for step in range(start_step + 1, total_steps + 1):
        batch = [next(stream) for _ in range(global_batch)]  # identical on every process
        sums = {k: 0.0 for k in ("loss", "lm", *LOSS_PARTS, *(("points",) if clicks_train else ()))}
        grad_norm = None
        for micro in range(config.grad_accum):
            start = (micro * world + accelerator.process_index) * config.batch_size
            local = batch[start : start + config.batch_size]  # this process's slice of the micro-step
            with accelerator.accumulate(model):
                sequences, images, masks = stage1_inputs(
                    unwrapped, local, config.standin_expressions if standin or points_only else 0,
                    echo=standin and config.standin_echo, looks=config.standin_looks if standin else 0.0,
                    look_modes=tuple(config.standin_look_modes))
                rng = np.random.default_rng([config.seed, step, micro, accelerator.process_index])
                if points_only:
                    # SAM 2.1 alone: the language model and projector do not run
                    parts = unwrapped.point_prompt_losses(unwrapped.encode_for_masks(images), list(range(len(images))),
                                                          masks, click_points(masks, rng))
                    loss, lm = total_loss(None, parts, weights), None
                else:
                    out = model(sequences, images, masks, weights=weights)
                    loss, lm, parts = out.loss, out.lm_loss, out.mask_loss_parts
                if clicks_train:
                    point_parts = unwrapped.point_prompt_losses(out.image_embeddings, out.mask_rows, masks,
                                                                click_points(masks, rng))
                    point_loss = total_loss(None, point_parts, weights)
                    loss = loss + point_loss
                    sums["points"] += point_loss.detach().item() / config.grad_accum
                stop_if_not_finite(accelerator, loss.detach(), step, batch, last_checkpoint, "loss")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = clip_gradients(accelerator, model, config.optim.max_grad_norm)
                    stop_if_not_finite(accelerator, grad_norm, step, batch, last_checkpoint, "gradient norm")
                optimizer.step()
                optimizer.zero_grad()
            for key, value in loss_components(loss, lm, parts).items():
                sums[key] += value / config.grad_accum
        rates = scheduler.get_last_lr()  # the rates this step used, one per AdamW group
        lr = rates[0]
        scheduler.step()

        means = reduce_mean(accelerator, sums)  # averages over processes
        elapsed = time.perf_counter() - step_started
        if step % config.log_every == 0 or step == total_steps:
            record = {"kind": "train", "step": step, "epoch": round(step / steps_per_epoch, 4),
                      "samples": step * global_batch, "lr": lr, **({"lr_sam": rates[1]} if len(rates) > 1 else {}),
                      "grad_norm": float(grad_norm), **means, "samples_per_s": global_batch / max(elapsed, 1e-9)}
            if accelerator.is_main_process:
                log.append(record)
        progress.update(step, means["loss"], global_batch / max(elapsed, 1e-9))

        if step == total_steps or (config.save_every and step % config.save_every == 0):
            last_checkpoint = runs.save_checkpoint(
                run, accelerator, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                trainer_state={"samples_seen": step * global_batch, "global_batch": global_batch,
                               "total_steps": total_steps, "phase": config.phase},
                keep=config.keep_checkpoints)
        if val_samples and (step == total_steps or (config.eval_every and step % config.eval_every == 0)):
            validate_and_log(unwrapped, val_samples, config, accelerator, log, step=step, show=show, progress=progress)
        if stop_after_step is not None and step == stop_after_step:
            progress.close()
            return run.path
        step_started = time.perf_counter()  # samples/s counts training only, not checkpoints or validation
    progress.close()

    # ---------------------------------------------------------------- save
    final = unwrapped
    if engine.uses_fsdp(config, accelerator):  # the shards gathered into a plain copy on the main process
        rebuilt = {}

        def rebuild():
            plain, rebuilt["peft"] = trainable_starting_model(config)
            return plain

        final = engine.full_model(accelerator, unwrapped, rebuild)
        peft_model = rebuilt.get("peft")
    if accelerator.is_main_process and peft_model is not None:
        merge_lora(final, peft_model)
    return save_trained_model(accelerator, run, final, config.dtype,
                              lambda: training_record(final, settings, run, total_steps), show=show)


# ---------------------------------------------------------------------- setup helpers


def trainable_starting_model(config: Stage1Config):
    """The starting model with the phase's parts made trainable (float32; checkpointing when set),
    and its peft model in phase lora (None otherwise)."""
    model = load_starting_model(config)
    peft_model = setup_trainable(model, config)
    ready_to_train(model, config)
    return model, peft_model


def setup_trainable(model, config: Stage1Config):
    """Freeze what the phase freezes; apply LoRA in phase ``lora``. Returns the peft model
    (``lora.merge_lora`` folds it into ``model.mllm``) or None in the other phases."""
    model.requires_grad_(config.phase == "standin")
    model.projector.requires_grad_(config.phase != "points")
    if config.phase == "points":
        model.mask_decoder.requires_grad_(True)
    peft_model = None
    if config.phase == "lora":
        peft_model = apply_lora(model, config.lora)
        model.mask_decoder.sam.prompt_encoder.requires_grad_(True)
        model.mask_decoder.sam.mask_decoder.requires_grad_(True)
    return peft_model


def param_groups(model, config: Stage1Config) -> list[dict]:
    """The trainable parameters as AdamW groups: SAM 2.1's at ``config.sam_lr`` when it is set,
    everything else at the phase's rate (``config.optim.lr``)."""
    sam = {id(p) for p in model.mask_decoder.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.sam_lr is None:
        return [{"params": trainable}]
    groups = [{"params": [p for p in trainable if id(p) not in sam]},
              {"params": [p for p in trainable if id(p) in sam], "lr": config.sam_lr}]
    return [g for g in groups if g["params"]]


def loss_weights(config: Stage1Config):
    from seganswer_cli.model import LossWeights

    return LossWeights(**config.loss_weights)


# ---------------------------------------------------------------------- train helpers


def stage1_inputs(model, samples: list[SegSample | VQASample], extra_expressions: int = 0, echo: bool = False,
                  looks: float = 0.0, look_modes: tuple[str, ...] = ("mask",)):
    """Prompt 1 / Response 1 sequences, the images and one ground-truth mask per ``<|seg|>``.

    Phase ``standin`` only: a question becomes a plain exchange, image + question -> answer, with
    no ``<|seg|>`` and no mask (the stand-in's vision-language pretraining), or, for a ``looks``
    share of the questions that have a region mask, the whole reasoning conversation of the question
    with its annotated region as the ``<|seg|>`` target and that region's view (one of
    ``look_modes``, drawn per sample) as Prompt 2; a shapes-world scene is asked about
    ``extra_expressions`` more of its shapes in further turns of the same conversation; ``echo``
    answers with ``conversation.echo_response``.
    """
    from seganswer_cli.data.shapes_language import more_expressions
    from seganswer_cli.model import tokens

    def response(expression: str) -> str:
        return conversation.echo_response(expression) if echo else tokens.STAGE1_RESPONSE

    images = [s.image.load() for s in samples]
    sequences, masks = [], []
    for image, sample in zip(images, samples):
        if isinstance(sample, VQASample):
            draw = random.Random(f"look:{sample.id}")
            prompt, answer = conversation.prompt_and_answer(sample)
            if sample.region_masks and draw.random() < looks:
                region = sample.region()
                view, _ = model.second_look(image, region, mode=look_modes[draw.randrange(len(look_modes))])
                sequences.append(conversation.reasoning_sequence(model, model.global_view(image), prompt, answer,
                                                                 view=view))
                masks.append([region])
                continue
            sequences.append(conversation.exchange_sequence(model, model.global_view(image), [(prompt, answer)]))
            masks.append([])
        elif extra_expressions and "scene" in sample.extra:
            pairs = [(sample.expression, sample.mask.decode())] + more_expressions(
                sample.extra["scene"], extra_expressions, seed=sample.id, exclude=sample.extra.get("target_ids"))
            turns = [(tokens.stage1_prompt(expression), response(expression)) for expression, _ in pairs]
            sequences.append(conversation.exchange_sequence(model, model.global_view(image), turns))
            masks.append([mask for _, mask in pairs])
        else:
            sequences.append(conversation.stage1_sequence(model, model.global_view(image), sample.expression,
                                                          response(sample.expression)))
            masks.append([sample.mask.decode()])
    return sequences, images, masks


def click_points(masks: list[list], rng) -> list[list[tuple[float, float]]]:
    """One click per ground-truth mask: a random foreground pixel's centre ``(x, y)`` (SAM's point
    prompt, as its interactive training samples them); an empty mask gets none, and the row's
    clicks stop there (``point_prompt_losses`` pairs clicks with the row's first masks)."""
    clicks = []
    for row in masks:
        picked = []
        for mask in row:
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                break
            i = int(rng.integers(len(xs)))
            picked.append((float(xs[i]), float(ys[i])))
        clicks.append(picked)
    return clicks


def loss_components(loss, lm, parts: dict) -> dict[str, float]:
    """Every logged loss term of one step (unweighted SAM terms; ``loss`` is the weighted total)."""
    values = {"loss": loss.detach().item(), "lm": lm.detach().item() if lm is not None else 0.0}
    for name in LOSS_PARTS:
        part = parts.get(name)
        values[name] = part.detach().item() if part is not None else 0.0
    return values


def validate(model, samples: list[SegSample], batch_size: int, *, clicks: bool = False) -> dict[str, float]:
    """gIoU and cIoU on held-out samples of the teacher-forced Stage 1 masks or, with ``clicks``
    (phase ``points``, where the ``<|seg|>`` pathway is not trained), of SAM 2.1's masks from one
    click on each target (its pixel nearest the centroid; logged with ``"prompt": "click"``)."""
    from seganswer_cli.eval.metrics import MaskIoU

    was_training = model.training
    model.eval()
    acc = MaskIoU()
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        images = [s.image.load() for s in chunk]
        targets = [s.mask.decode().astype(bool) for s in chunk]
        if clicks:
            masks = model.clicked_masks(images, targets)
        else:
            masks = [mask for mask, _, _ in model.segment_batch(images, [s.expression for s in chunk])]
        for sample, mask, target in zip(chunk, masks, targets):
            acc.update(mask, target, sample.ignore_mask.decode() if sample.ignore_mask is not None else None)
    if was_training:
        model.train()
        keep_frozen_parts_in_eval(model)
    return {"val_giou": acc.giou, "val_ciou": acc.ciou, "val_samples": acc.count, **({"prompt": "click"} if clicks else {})}


def validate_and_log(model, samples, config, accelerator, log, *, step: int, show: bool, progress=None) -> None:
    """Validation runs on the main process; the others wait for it (under FSDP2 every process first
    gathers the weights, so the main process's forwards need no one else)."""
    with engine.gathered(model):
        result = validate(model, samples, config.val_batch_size, clicks=config.phase == "points") \
            if accelerator.is_main_process else None
    if accelerator.is_main_process:
        log.append({"kind": "eval", "step": step, **result})
        if show:
            line = f"step {step}: val gIoU {result['val_giou']:.4f} cIoU {result['val_ciou']:.4f} ({result['val_samples']} samples)"
            progress_print(progress, line)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------- output helpers


def training_record(model, settings: dict, run: runs.RunFolder, step: int) -> dict:
    """``runs.training_record`` of a Stage 1 run, its phase in the summary (also ``merge-lora``'s)."""
    return runs.training_record(model, settings, run, stage=STAGE, step=step, phase=settings["config"]["phase"])
