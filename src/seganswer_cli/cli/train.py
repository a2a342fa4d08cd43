"""``seganswer train-stage1`` (pixel grounding, one phase per run), ``seganswer merge-lora``,
``seganswer train-stage2`` (interleaved SFT) and ``seganswer train-stage3`` (DAPO).

Thin: the flags people type daily and any other setting through ``--set KEY=VALUE`` become config
overrides (flags and ``--set`` > ``--config`` YAML > defaults, one validation for all), the run
folder policy is checked before anything heavy loads (``--continue`` lets the folder decide: skip a
finished run, resume a checkpointed one, start otherwise), then ``seganswer_cli.train`` does the work.
"""

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from seganswer_cli.cli.options import QuietOpt, folder_output

Opt = typer.Option

#: Choices of config settings with a flag of their own: ``config.py``'s ``MIXED_PRECISION``,
#: ``STRATEGIES``, ``STAGE2_MASKS``, ``STAGE2_TOO_LONG`` and ``STAGE1_PHASES`` (spelled here so
#: that --help need not import the config; tests/test_cli_help.py checks they agree).
MixedPrecision = Literal["no", "bf16", "fp16"]
Strategy = Literal["ddp", "fsdp"]
Stage2Masks = Literal["online", "precomputed"]
TooLong = Literal["skip", "truncate"]
Stage1Phase = Literal["projector", "lora"]
StandinPhase = Literal["standin", "points"]
#: The shipped recipes each command's ``-c`` names (checked against ``configs/`` by the same test).
SHIPPED = {"stage1": "stage1-tiny, stage1-shapes, stage1-7b, stage1-qwen3-vl-8b", "standin": "standin-shapes",
           "stage2": "stage2-tiny, stage2-shapes, stage2-7b, stage2-qwen3-vl-8b",
           "stage3": "stage3-tiny, stage3-shapes, stage3-7b, stage3-qwen3-vl-8b"}

# Options every training command shares, defined once.
RunOutOpt = Annotated[Path, Opt("--out", "-o", callback=folder_output, show_default=False,
                                help="Run folder (settings, metrics.jsonl, checkpoints/, model/).")]
ResumeOpt = Annotated[bool, Opt("--resume", help="Continue the run in --out from its latest checkpoint.")]
OverwriteOpt = Annotated[bool, Opt("--overwrite", help="Replace a run already in --out.")]
ContinueOpt = Annotated[bool, Opt("--continue", help="Let --out decide: a finished run is left as it is (exit 0), "
                                  "a checkpointed one resumes, an empty or unstarted one starts.")]
SetOpt = Annotated[list[str] | None, Opt("--set", metavar="KEY=VALUE",
                                         help="Any setting of the stage's config, dotted (optim.weight_decay=0.01, "
                                              "lora.rank=16); repeat. Checked like the YAML.")]
SamLrOpt = Annotated[float | None, Opt("--sam-lr", help="Peak learning rate of SAM 2.1's trainable parameters "
                                       "(default: the config's sam_lr, else --lr).")]
BatchSizeOpt = Annotated[int | None, Opt("--batch-size", help="Samples per process per micro-step.")]
GradAccumOpt = Annotated[int | None, Opt("--grad-accum", help="Micro-steps per optimizer step.")]
SaveEveryOpt = Annotated[int | None, Opt("--save-every", help="Checkpoint every N steps (0: at the end).")]
MixedPrecisionOpt = Annotated[MixedPrecision | None, Opt("--mixed-precision", help="Autocast: no, bf16 or fp16 "
                                                         "(default: the config's).")]
CheckpointingOpt = Annotated[bool | None, Opt("--gradient-checkpointing/--no-gradient-checkpointing",
                                              show_default=False, help="Recompute activations in backward "
                                              "(default: the config's).")]
StrategyOpt = Annotated[Strategy | None, Opt("--strategy", help="ddp, or fsdp: FSDP2 shards weights, gradients and AdamW's "
                                         "state over the torchrun processes (docs/training.md).")]
StopAfterOpt = Annotated[int | None, Opt("--stop-after-step", hidden=True, help="Testing: end as if killed after this step.")]
MaxStepsOpt = Annotated[int | None, Opt("--max-steps", help="Optimizer steps (overrides --epochs).")]
EvalEveryOpt = Annotated[int | None, Opt("--eval-every", help="Validate every N steps (0: start and end).")]
SegValDataOpt = Annotated[str | None, Opt("--val-data", metavar="PATH|NAME=PATH", help="Held-out referring-segmentation set (PATH or NAME=PATH) "
                                          "for gIoU/cIoU.")]


#: Flags whose setting has another name in the config.
FLAG_SETTINGS = {"lr": "optim.lr", "rollouts": "rollouts_per_prompt"}
#: Parameters of a training command that are not settings.
NOT_SETTINGS = ("out", "config", "resume", "overwrite", "continue_", "set_", "quiet", "stop_after_step")


def flag_overrides(params: dict) -> dict:
    """The settings a command's flags give, as dotted config keys (None: the flag was not given)."""
    return {FLAG_SETTINGS.get(k, k): (v or None if k == "data" else v) for k, v in params.items()
            if k not in NOT_SETTINGS}


def launch(cls, params: dict, *, what_data: str, train, check=None) -> None:
    """One training command: ``params`` (the command's arguments) over the YAML over the defaults,
    the run-folder decision and the cheap checks before any heavy import (data given, the starting
    model a preset or an existing folder, ``check(cfg)`` for a new run), then ``train(cfg, out, ...)``."""
    from seganswer_cli.config import load_config
    from seganswer_cli.errors import ModelFolderError, UsageError
    from seganswer_cli.model.presets import PRESETS
    from seganswer_cli.train import runs

    out, resume, overwrite = params["out"], params["resume"], params["overwrite"]
    cfg = load_config(cls, params["config"], flag_overrides(params), params["set_"])
    if params["continue_"]:
        if resume or overwrite:
            raise UsageError("--continue decides by itself whether to resume or start; give it without "
                             "--resume/--overwrite")
        decision = runs.continue_decision(out, stage=cfg.stage, phase=getattr(cfg, "phase", None))
        print(f"{out}: {decision.message}", file=sys.stderr)
        if decision.action == "finished":
            return
        resume, overwrite = decision.action == "resume", decision.action == "restart"
    runs.check_run_folder(out, resume=resume, overwrite=overwrite)
    if not resume:
        if not cfg.data:
            raise UsageError(f"no {what_data}: give --data NAME=PATH[:weight] (or `data:` in --config)")
        if cfg.model and cfg.model not in PRESETS and not Path(cfg.model).exists():  # None: the stage says what it needs
            raise ModelFolderError(f"model folder not found: {cfg.model} (and it is not a preset: {', '.join(PRESETS)})")
        if check is not None:
            check(cfg)
    train(cfg, out, resume=resume, overwrite=overwrite, quiet=params["quiet"],
          stop_after_step=params["stop_after_step"])


def stage_runner(stage: str):
    """``train_<stage>`` of ``seganswer_cli.train.<stage>``, imported when the command runs (torch,
    transformers and the model load only then, after the cheap checks)."""

    def run(cfg, out, **kwargs) -> None:
        import importlib

        getattr(importlib.import_module(f"seganswer_cli.train.{stage}"), f"train_{stage}")(cfg, out, **kwargs)

    return run


run_stage1, run_stage2, run_stage3 = (stage_runner(s) for s in ("stage1", "stage2", "stage3"))


def check_stage2_start(cfg) -> None:
    from seganswer_cli.train.stage2 import check_starting_model

    check_starting_model(cfg)


def train_stage1(
    out: RunOutOpt,
    model: Annotated[str | None, Opt("--model", "-m", help="Starting model folder or preset (default: tiny). "
                                     "Phase lora: the model/ of the projector run.")] = None,
    data: Annotated[list[str] | None, Opt("--data", metavar="NAME=PATH[:W]", help="Training set NAME=PATH[:weight]; "
                                          "repeat to mix.")] = None,
    val_data: SegValDataOpt = None,
    phase: Annotated[Stage1Phase | None, Opt("--phase", help="projector (only the projector trains), then lora "
                                             "(LoRA + projector + SAM decoder).")] = None,
    config: Annotated[str | None, Opt("--config", "-c", metavar="YAML|NAME",
                                      help=f"YAML file, or a shipped name: {SHIPPED['stage1']}.")] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    continue_: ContinueOpt = False,
    set_: SetOpt = None,
    max_steps: MaxStepsOpt = None,
    epochs: Annotated[float | None, Opt("--epochs", help="Passes over the mixture (default: paper's 5 / 3).")] = None,
    lr: Annotated[float | None, Opt("--lr", help="Peak learning rate (default: paper's 1e-3 / 2e-5).")] = None,
    sam_lr: SamLrOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    save_every: SaveEveryOpt = None,
    eval_every: EvalEveryOpt = None,
    seed: Annotated[int | None, Opt("--seed", help="Seed of data order, LoRA init and dropout.")] = None,
    mixed_precision: MixedPrecisionOpt = None,
    gradient_checkpointing: CheckpointingOpt = None,
    strategy: StrategyOpt = None,
    mllm_path: Annotated[str | None, Opt("--mllm-path", help="Local MLLM folder for a preset (its Qwen2.5-VL or Qwen3-VL).")] = None,
    sam_path: Annotated[str | None, Opt("--sam-path", help="Local SAM 2.1 for a preset: a transformers folder or Meta's checkpoint file (.pt).")] = None,
    quiet: QuietOpt = False,
    stop_after_step: StopAfterOpt = None,
) -> None:
    """Stage 1 pixel grounding: projector, then LoRA + SAM.

    Phase projector trains only the projector; phase lora then trains LoRA, the projector and
    SAM 2.1's mask decoder.

    Example:

    \b
        seganswer train-stage1 -c stage1-tiny --data shapes=data/shapes-refseg --out runs/s1-projector
        seganswer train-stage1 -c stage1-7b --phase lora --model runs/s1-projector/model --data refcoco=refcoco --out runs/s1-lora
        seganswer train-stage1 --out runs/s1-lora --continue
    """
    params = dict(locals())
    from seganswer_cli.config import Stage1Config

    launch(Stage1Config, params, what_data="training data", train=run_stage1)


def pretrain_standin(
    out: RunOutOpt,
    model: Annotated[str, Opt("--model", "-m", help="Random-init preset to start from.")] = "shapes-base",
    data: Annotated[list[str] | None, Opt("--data", metavar="NAME=PATH[:W]", help="Referring-segmentation or "
                                          "question set NAME=PATH[:weight]; repeat to mix.")] = None,
    val_data: SegValDataOpt = None,
    config: Annotated[str | None, Opt("--config", "-c", metavar="YAML|NAME",
                                      help=f"YAML file, or a shipped name: {SHIPPED['standin']}.")] = None,
    phase: Annotated[StandinPhase, Opt("--phase", help="standin (every weight) or points (SAM 2.1 alone learns to segment "
                                              "from one click: its promptable pretraining, run first).")] = "standin",
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    continue_: ContinueOpt = False,
    set_: SetOpt = None,
    max_steps: MaxStepsOpt = None,
    epochs: Annotated[float | None, Opt("--epochs", help="Passes over the mixture.")] = None,
    lr: Annotated[float | None, Opt("--lr", help="Peak learning rate.")] = None,
    sam_lr: SamLrOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    save_every: SaveEveryOpt = None,
    eval_every: EvalEveryOpt = None,
    seed: Annotated[int | None, Opt("--seed", help="Seed of data order and initialisation.")] = None,
    quiet: QuietOpt = False,
    stop_after_step: StopAfterOpt = None,
) -> None:
    """The demo's stand-in for pretraining (not a paper stage).

    Every weight of a random model trains on shapes-world segmentation and questions, so that Stage 1
    starts from a model that can see and segment.

    Example:

    \b
        seganswer pretrain-standin -c standin-shapes --phase points --data shapes=data/shapes-refseg --out runs/points
        seganswer pretrain-standin -c standin-shapes --model runs/points/model --data shapes=data/shapes-refseg --data vqa=data/shapes-vqa --out runs/standin
    """
    params = dict(locals())
    from seganswer_cli.config import Stage1Config

    launch(Stage1Config, params, what_data="training data", train=run_stage1)


def merge_lora(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished or checkpointed train-stage1 "
                                            "--phase lora run folder.", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", callback=folder_output, help="Model folder to "
                                            "write (new or empty).", show_default=False)],
    checkpoint: Annotated[str | None, Opt("--checkpoint", help="Checkpoint name or step (default: the latest).")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace a model already in OUT_DIR.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Merge a Stage 1 LoRA run into one model folder.

    LoRA is folded into the MLLM; the projector and SAM 2.1 are copied.

    Example:

    \b
        seganswer merge-lora runs/s1-lora models/stage1
        seganswer merge-lora runs/s1-lora models/stage1-step500 --checkpoint 500
    """
    from seganswer_cli.train.merge import check_output_folder
    from seganswer_cli.train.runs import RunFolder

    run = RunFolder(run_dir)
    run.read_settings()  # not a run folder: one line, before any heavy import
    run.checkpoint(checkpoint)
    check_output_folder(out_dir, overwrite=overwrite)
    from seganswer_cli.train.merge import merge_lora_run

    folder = merge_lora_run(run_dir, out_dir, checkpoint=checkpoint, overwrite=overwrite)
    if not quiet:
        typer.echo(f"wrote {folder}")


def train_stage3(
    out: RunOutOpt,
    model: Annotated[str | None, Opt("--model", "-m", help="Starting model: the model/ of a Stage 2 run.")] = None,
    data: Annotated[list[str] | None, Opt("--data", metavar="NAME=PATH[:W]", help="Prompt set NAME=PATH[:weight] "
                                          "with verifiable answers (ViRL39K, data synth --kind rl); repeat to mix.")] = None,
    config: Annotated[str | None, Opt("--config", "-c", metavar="YAML|NAME",
                                      help=f"YAML file, or a shipped name: {SHIPPED['stage3']}.")] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    continue_: ContinueOpt = False,
    set_: SetOpt = None,
    max_steps: Annotated[int | None, Opt("--max-steps", help="Rollout-and-update steps (overrides --epochs).")] = None,
    epochs: Annotated[float | None, Opt("--epochs", help="Passes over the prompts (paper: 1).")] = None,
    lr: Annotated[float | None, Opt("--lr", help="Learning rate (paper: 2e-5).")] = None,
    prompts_per_step: Annotated[int | None, Opt("--prompts-per-step", help="Groups kept per step, all processes.")] = None,
    rollouts: Annotated[int | None, Opt("--rollouts", help="Rollouts per prompt (paper: 4).")] = None,
    temperature: Annotated[float | None, Opt("--temperature", help="Rollout sampling temperature.")] = None,
    max_new_tokens: Annotated[int | None, Opt("--max-new-tokens", help="Most generated tokens per rollout.")] = None,
    mini_batches: Annotated[int | None, Opt("--mini-batches", help="Policy updates per rollout batch.")] = None,
    kl_coef: Annotated[float | None, Opt("--kl-coef", help="KL penalty to the starting model (default 0: off).")] = None,
    save_every: SaveEveryOpt = None,
    seed: Annotated[int | None, Opt("--seed", help="Seed of prompt order and rollout sampling.")] = None,
    mixed_precision: MixedPrecisionOpt = None,
    gradient_checkpointing: CheckpointingOpt = None,
    strategy: StrategyOpt = None,
    quiet: QuietOpt = False,
    stop_after_step: StopAfterOpt = None,
) -> None:
    """Stage 3: DAPO on multi-turn segmented rollouts.

    Reasoning with pixel grounding; reward 0.8 accuracy + 0.2 format.

    Example:

    \b
        seganswer train-stage3 -c stage3-tiny --model runs/s2/model --data rl=data/shapes-rl --out runs/s3
        seganswer train-stage3 -c stage3-7b --model runs/s2/model --data virl=ViRL39K --out runs/s3 --rollouts 8
    """
    params = dict(locals())
    from seganswer_cli.config import Stage3Config

    launch(Stage3Config, params, what_data="prompt data", train=run_stage3)


def train_stage2(
    out: RunOutOpt,
    model: Annotated[str | None, Opt("--model", "-m", help="Starting model: the model/ folder of a Stage 1 run "
                                     "(or a merge-lora output).")] = None,
    data: Annotated[list[str] | None, Opt("--data", metavar="NAME=PATH[:W]", help="Question-answer set "
                                          "NAME=PATH[:weight]; repeat to mix.")] = None,
    config: Annotated[str | None, Opt("--config", "-c", metavar="YAML|NAME",
                                      help=f"YAML file, or a shipped name: {SHIPPED['stage2']}.")] = None,
    masks: Annotated[Stage2Masks | None, Opt("--masks", help="online (the model's own masks at every step, the paper's) "
                                     "or precomputed (once, by the starting model, cached in the run folder).")] = None,
    direct_share: Annotated[float | None, Opt("--direct-share", help="Share of samples answered without <|seg|>.")] = None,
    region_share: Annotated[float | None, Opt("--region-share", help="Share of segmenting samples shown their "
                                              "annotated region instead of the model's mask (not the paper's; "
                                              "default 0).")] = None,
    seg_loss: Annotated[float | None, Opt("--seg-loss", help="Weight of SAM 2.1's mask losses on the <|seg|> mask "
                                          "against the annotated region (not the paper's; default 0).")] = None,
    freeze_vision: Annotated[bool | None, Opt("--freeze-vision/--train-vision", show_default=False,
                                              help="Freeze the MLLM's vision tower (default: it trains).")] = None,
    max_length: Annotated[int | None, Opt("--max-length", help="Most tokens of one training conversation.")] = None,
    too_long: Annotated[TooLong | None, Opt("--too-long", help="skip or truncate conversations over --max-length.")] = None,
    allow_untrained_start: Annotated[bool | None, Opt("--allow-untrained-start",
                                                      help="Accept a starting model that is not a Stage 1 output.")] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    continue_: ContinueOpt = False,
    set_: SetOpt = None,
    max_steps: MaxStepsOpt = None,
    epochs: Annotated[float | None, Opt("--epochs", help="Passes over the mixture (paper: 1).")] = None,
    lr: Annotated[float | None, Opt("--lr", help="Peak learning rate (paper: 2e-6).")] = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    save_every: SaveEveryOpt = None,
    seed: Annotated[int | None, Opt("--seed", help="Seed of data order, direct-answer draw and dropout.")] = None,
    mixed_precision: MixedPrecisionOpt = None,
    gradient_checkpointing: CheckpointingOpt = None,
    strategy: StrategyOpt = None,
    quiet: QuietOpt = False,
    stop_after_step: StopAfterOpt = None,
) -> None:
    """Stage 2 interleaved SFT: segment, look, answer.

    The model segments with its own <|seg|>; the full MLLM is tuned.

    Example:

    \b
        seganswer train-stage2 -c stage2-tiny --model runs/s1-lora/model --data vqa=data/shapes-vqa --out runs/s2
        seganswer train-stage2 -c stage2-7b --model models/stage1 --data cot=VisualCoT --out runs/s2 --strategy fsdp
    """
    params = dict(locals())
    from seganswer_cli.config import Stage2Config

    launch(Stage2Config, params, what_data="training data", train=run_stage2, check=check_stage2_start)
