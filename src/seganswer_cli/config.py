"""Training configuration: dataclasses with a docstring per field; YAML files and flags override them.

``RunConfig`` declares and checks the settings every training run shares (starting model, data,
precision, seed, steps, checkpoints, optimizer); ``BatchedRunConfig`` adds the fixed sample batches
of Stage 1 and Stage 2, ``MllmRunConfig`` the full-MLLM tuning of Stage 2 and Stage 3; each stage's
config holds only what is its own.

Precedence, lowest first: the dataclass defaults, a YAML file (``--config``: a path or the name of
a shipped file in ``seganswer_cli/configs/``), then command-line flags and ``--set KEY=VALUE`` (any
setting, dotted for nested ones: ``--set optim.weight_decay=0.01``). Every value, whichever way it
came, is checked against its field's type (``coerce``) and then by the config's ``__post_init__``;
a bad one is one ``UsageError`` naming the setting. The resolved result (phase defaults filled in)
is what a run folder's ``settings.json`` holds and what ``--resume`` reads back.

    cfg = load_config(Stage1Config, "stage1-tiny", overrides={"optim.lr": 3e-3, "max_steps": 20})
    cfg.to_dict()                                     # JSON-able, nested like the YAML

No torch here: the CLI reads configs before any heavy import.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from seganswer_cli.errors import UsageError

STAGE1_PHASES = ("projector", "lora", "standin", "points")
SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("no", "bf16", "fp16")
STRATEGIES = ("ddp", "fsdp")
DTYPES = ("float32", "bfloat16", "float16")
LOSS_TERMS = ("lm", "focal", "dice", "iou", "object_score")
STAGE2_MASKS = ("online", "precomputed")
STAGE2_TOO_LONG = ("skip", "truncate")
ROI_CHOICES = ("mask", "bbox", "none")


@dataclass
class OptimizerConfig:
    """AdamW and its learning-rate schedule (linear warmup, then cosine, linear or constant)."""

    lr: float | None = None
    """Peak learning rate; None: the phase's own (``Stage1Config.projector_lr`` / ``lora_lr``)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    schedule: str = "cosine"
    """After warmup: ``cosine`` or ``linear`` decay to ``min_lr_ratio * lr``, or ``constant``."""
    warmup_ratio: float = 0.03
    """Warmup length as a fraction of the total optimizer steps (used when ``warmup_steps`` is None)."""
    warmup_steps: int | None = None
    """Warmup length in optimizer steps; overrides ``warmup_ratio``."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None: no clipping (the norm is still logged)."""

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"learning rate must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UsageError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise UsageError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UsageError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UsageError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise UsageError(f"max_grad_norm must be > 0 or null, got {self.max_grad_norm}")


@dataclass
class LoraSettings:
    """LoRA on the MLLM's language model (phase ``lora``); the vision tower is never adapted."""

    rank: int = 8
    """Rank r of each LoRA update."""
    alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Linear layers of each language-model decoder layer that get a LoRA update."""
    train_seg_rows: bool = True
    """Train the ``<|seg|>`` row of the input embedding and of the LM head (peft trainable tokens;
    every other row stays frozen)."""

    def __post_init__(self) -> None:
        self.target_modules = tuple(str(m) for m in self.target_modules)
        if self.rank < 1:
            raise UsageError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise UsageError("LoRA needs at least one target module")


def _at_least(config, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(config, name) < minimum:
            raise UsageError(f"{name} must be >= {minimum}, got {getattr(config, name)}")


def _share(config, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise UsageError(f"{name} must be in [0, 1], got {getattr(config, name)}")


@dataclass
class RunConfig:
    """The settings every training run shares (Stage 1, 2, 3 and the demo's stand-in)."""

    model: str | None = None
    """Starting model: a seganswer model folder or a preset name. Stage 1 starts from a preset (or a
    ``projector`` run's ``model/``), Stage 2 from a Stage 1 model folder, Stage 3 from a Stage 2 one."""
    dtype: str = "float32"
    """Dtype the weights are loaded in; the parameters that train are always kept in float32."""
    data: list[str] = field(default_factory=list)
    """Training sets as ``NAME=PATH[:weight]`` (docs/data.md), sampled at the weights' rates."""
    on_error: str = "skip"
    """Bad records while reading the data: ``stop`` at the first, or ``skip`` and report them."""
    epochs: float | None = 1.0
    """Passes over the data mixture, counted in samples (Stage 3: in prompts whose groups train)."""
    max_steps: int | None = None
    """Optimizer steps to run (Stage 3: rollout-and-update steps); overrides ``epochs``."""
    seed: int = 0
    """Seeds the data order, every seeded draw of the run (LoRA initialisation, direct answers,
    rollout sampling) and dropout."""
    mixed_precision: str = "no"
    """accelerate's autocast: ``no``, ``bf16`` or ``fp16``."""
    gradient_checkpointing: bool = False
    """Recompute the language model's activations in the backward pass (memory for time; 7B)."""
    strategy: str = "ddp"
    """How more than one process (``torchrun``) trains: ``ddp`` (every process holds the whole model,
    gradients averaged) or ``fsdp`` (FSDP2: weights, gradients and AdamW's state sharded over the
    processes, each decoder layer gathered when it runs; what the 7B recipes of Stage 2 and 3 need).
    One process runs as one with either."""
    cpu_offload: bool = False
    """``strategy: fsdp`` only: keep the shards, their gradients and AdamW's state in CPU memory
    (the update runs on the CPU; slower, for when the GPUs do not hold them)."""
    save_every: int = 0
    """Write a checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in the run folder (the oldest is removed once a newer one is complete). A
    Stage 2 or 3 checkpoint holds the whole MLLM and AdamW's state."""
    log_every: int = 1
    """Write a metrics line every this many steps."""
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and schedule."""

    #: The stage's learning rate when ``optim.lr`` is not set (None: the stage resolves its own).
    default_lr: ClassVar[float | None] = None
    #: What a run folder of this config says it is (``settings.json``'s ``stage``).
    stage: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UsageError(f"unknown mixed precision {self.mixed_precision!r}; expected {', '.join(MIXED_PRECISION)}")
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if self.cpu_offload and self.strategy != "fsdp":
            raise UsageError("cpu_offload applies to strategy fsdp only (--set strategy=fsdp)")
        if self.strategy == "fsdp" and self.mixed_precision == "fp16":
            raise UsageError("strategy fsdp trains with mixed_precision no or bf16 (fp16 would need a sharded "
                             "gradient scaler); use bf16")
        if self.on_error not in ("stop", "skip"):
            raise UsageError(f"on_error must be stop or skip, got {self.on_error!r}")
        if self.epochs is not None and not self.epochs > 0:
            raise UsageError(f"epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"max_steps must be >= 1, got {self.max_steps}")
        _at_least(self, 1, "keep_checkpoints", "log_every")
        _at_least(self, 0, "save_every")
        if self.optim.lr is None and self.default_lr is not None:
            self.optim = dataclasses.replace(self.optim, lr=self.default_lr)
        self.data = [str(d) for d in self.data]

    def resolved(self) -> RunConfig:
        """A copy with every setting given its value (Stage 1 fills in its phase's defaults)."""
        return dataclasses.replace(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass
class BatchedRunConfig(RunConfig):
    """A run that trains on fixed batches of the sample stream (Stage 1, Stage 2)."""

    batch_size: int = 1
    """Samples per process per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (global batch = batch_size * grad_accum * processes)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "batch_size", "grad_accum")


@dataclass
class MllmRunConfig(RunConfig):
    """A run that tunes the whole MLLM with the projector and SAM 2.1 frozen (Stage 2, Stage 3)."""

    freeze_vision: bool = False
    """Keep the MLLM's vision tower frozen (the paper tunes the full MLLM backbone: default off)."""


@dataclass
class Stage1Config(BatchedRunConfig):
    """Stage 1 pixel grounding (paper §3.1, §4.2): one phase, ``projector`` or ``lora``, per run."""

    # RunConfig's settings, with Stage 1's defaults
    model: str | None = "tiny"
    on_error: str = "stop"
    epochs: float | None = None
    """Passes over the mixture (its total sample count); None: the phase's own (``projector_epochs`` /
    ``lora_epochs``)."""

    phase: str = "projector"
    """``projector``: only the projector trains. ``lora``: LoRA on the language model + projector +
    SAM prompt encoder and mask decoder (+ the ``<|seg|>`` embedding rows). ``standin``: not the
    paper's; every weight trains, SAM's image encoder and the vision tower included, on referring
    segmentation and plain questions (``seganswer pretrain-standin``: the shipped demo model's
    stand-in for the pretrained Qwen2.5-VL and SAM 2.1 the paper starts from). ``points``: not the
    paper's either; SAM 2.1 alone (image encoder, prompt encoder, mask decoder) learns to segment the
    shape under one click, its promptable pretraining (``seganswer pretrain-standin --phase points``,
    before ``standin``); the language model and projector do not run. One process only."""
    mllm_path: str | None = None
    """Local folder of Qwen2.5-VL replacing the preset's hub id (presets only)."""
    sam_path: str | None = None
    """Local folder of SAM 2.1 (Hugging Face format) replacing the preset's hub id (presets only)."""
    val_data: str | None = None
    """Held-out referring-segmentation set (a path, or ``NAME=PATH``) for gIoU/cIoU; None: no validation."""
    val_limit: int = 64
    """Most held-out samples scored per validation."""
    val_batch_size: int = 8
    """Held-out samples per forward during validation."""
    eval_every: int = 0
    """Validate every this many optimizer steps (0: only before training and at the end)."""
    projector_lr: float = 1e-3
    """Peak learning rate of phase ``projector`` when ``optim.lr`` is not set (paper: 1e-3)."""
    projector_epochs: float = 5
    """Epochs of phase ``projector`` when ``epochs`` is not set (paper: 5)."""
    lora_lr: float = 2e-5
    """Peak learning rate of phase ``lora`` when ``optim.lr`` is not set (paper: 2e-5)."""
    lora_epochs: float = 3
    """Epochs of phase ``lora`` when ``epochs`` is not set (paper: 3)."""
    standin_lr: float = 1e-3
    """Peak learning rate of phase ``standin`` (the demo's stand-in pretraining, not the paper's)."""
    standin_epochs: float = 1
    """Epochs of phase ``standin``."""
    points_lr: float = 3e-4
    """Peak learning rate of phase ``points`` (SAM 2.1 alone, from clicks; not the paper's)."""
    points_epochs: float = 1
    """Epochs of phase ``points``."""
    sam_lr: float | None = None
    """Peak learning rate of SAM 2.1's trainable parameters (prompt encoder and mask decoder; in
    phase ``standin`` the image encoder too); None: the phase's rate. The demo's stand-in needs a
    lower one than its language model: a SAM trained from scratch at 1e-3 learns one mask per image
    whatever its prompt says (docs/shapes-experiment.md)."""
    standin_expressions: int = 0
    """Phases ``standin`` and ``points``: further shapes of a shapes-world scene asked about in the same conversation
    (``Segment A`` -> ``<|seg|>``, ``Segment B`` -> ``<|seg|>``, ...), so that only the expressions
    tell the masks of one image apart."""
    standin_echo: bool = True
    """Phase ``standin``: answer ``It is <|seg|> red star.`` (the expression after the token) instead
    of the paper's ``It is <|seg|>.``, so that the ``<|seg|>`` state learns to carry the expression
    (``conversation.echo_response``)."""
    standin_looks: float = 0.0
    """Phase ``standin``: share of the questions (those with a region mask) that train as the whole
    reasoning conversation with the ground-truth region (Prompt 1 -> ``... observe <|seg|>.`` with the
    region's mask as the ``<|seg|>`` target -> the region's view -> the answer) instead of a plain
    exchange: the pretrained MLLM's ability to read a cut-out region, which a random model lacks."""
    standin_look_modes: list[str] = field(default_factory=lambda: ["mask", "bbox"])
    """Phase ``standin``: the view kinds those conversations show, one drawn per sample, seeded by its
    id (``mask``: the segmented patches at their original positions; ``bbox``: the box crop, resized,
    new positions), so that reading either kind of second look is pretrained alike."""
    standin_points: bool = False
    """Phase ``standin``: SAM 2.1's own promptable pretraining alongside: every ground-truth mask is
    also predicted from one click inside it (SAM's point prompt), so that SAM's decoder learns to
    follow its sparse prompt (a decoder trained from scratch on ``<|seg|>`` prompts alone learns one
    mask per image whatever it is asked)."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """Overrides of the loss weights (``lm``, ``focal``, ``dice``, ``iou``, ``object_score``);
    unset terms keep 1 / 20 / 1 / 1 / 1 (next-token CE, then SAM 2.1's)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings (phase ``lora`` only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.phase not in STAGE1_PHASES:
            raise UsageError(f"unknown phase {self.phase!r}; expected projector, lora, standin or points")
        _at_least(self, 1, "val_limit", "val_batch_size")
        _at_least(self, 0, "eval_every", "standin_expressions")
        for name in ("projector_epochs", "lora_epochs", "projector_lr", "lora_lr", "standin_lr",
                     "standin_epochs", "points_lr", "points_epochs", "sam_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"{name} must be > 0, got {value}")
        _share(self, "standin_looks")
        self.standin_look_modes = [str(m) for m in self.standin_look_modes]
        bad = [m for m in self.standin_look_modes if m not in ("mask", "bbox")]
        if bad or not self.standin_look_modes:
            raise UsageError(f"standin_look_modes must name mask and/or bbox, got {self.standin_look_modes}")
        unknown = set(self.loss_weights) - set(LOSS_TERMS)
        if unknown:
            raise UsageError(f"unknown loss term(s) {sorted(unknown)}; expected {', '.join(LOSS_TERMS)}")
        self.loss_weights = {k: float(v) for k, v in self.loss_weights.items()}

    @property
    def stage(self) -> str:
        """``stage1``, or ``standin`` for the demo's stand-in pretraining (phases standin and points)."""
        return "standin" if self.phase in ("standin", "points") else "stage1"

    def resolved(self) -> Stage1Config:
        """A copy with the phase's learning rate and epochs filled in (``optim.lr``, ``epochs``)."""
        phase_lr, phase_epochs = getattr(self, f"{self.phase}_lr"), getattr(self, f"{self.phase}_epochs")
        optim = dataclasses.replace(self.optim, lr=self.optim.lr if self.optim.lr is not None else phase_lr)
        epochs = self.epochs if self.epochs is not None else phase_epochs
        return dataclasses.replace(self, optim=optim, epochs=epochs)


@dataclass
class Stage2Config(BatchedRunConfig, MllmRunConfig):
    """Stage 2 multimodal interleaved SFT (paper §3.2, §4.2): one run from a Stage 1 model folder.
    ``model`` must be the ``model/`` folder of a finished Stage 1 lora run (or a ``merge-lora``
    output): a folder whose ``seganswer.json`` has no Stage 1 training record is refused unless
    ``allow_untrained_start``. ``data``: question-answer sets (VisualCoT, ``seganswer data synth --kind
    vqa``); boxes and region masks in them are never used unless ``region_share`` or ``seg_loss`` asks."""

    default_lr: ClassVar[float] = 2e-6  # paper §4.2
    stage: ClassVar[str] = "stage2"

    allow_untrained_start: bool = False
    """Accept a starting model that is not a Stage 1 output (e.g. a preset): its projector and mask
    decoder were never trained, so the masks Stage 2 looks at mean nothing."""
    direct_share: float = 0.1
    """Share of samples whose conversation answers at once (Response 1 is the answer, no
    ``<|seg|>``), so the model learns that segmenting is a choice. Not in the paper. Which samples:
    a seeded draw per stream position (``seed``), the same on every process and after ``--resume``."""
    region_share: float = 0.0
    """Share of the segmenting samples whose second look shows the sample's annotated region (its
    region masks, else its boxes as box-shaped masks) instead of the model's own mask, so that the
    view keeps predicting the answer while the model's masks are poor. Not in the paper, which
    never trains on VisualCoT's boxes: 0 by default. A seeded draw per stream position; a sample
    without a region uses the model's mask."""
    seg_loss: float = 0.0
    """Weight of SAM 2.1's mask losses (Stage 1's: 20·focal + dice + IoU + object score, scaled by
    this) on the ``<|seg|>`` mask of the segmenting samples that have an annotated region (region
    masks, else boxes), against that region. Projector and SAM stay frozen, so only the MLLM's
    ``<|seg|>`` state learns from it: Stage 2 keeps grounding its questions' targets instead of
    drifting with the answer loss. Not in the paper (no box supervision in Stage 2): 0 by default."""
    masks: str = "online"
    """Where the segmented view's mask comes from. ``online`` (the paper's reading): a no-grad pass
    of the model being trained, up to its own ``<|seg|>``, at every step. ``precomputed``: once, by
    the starting model, before step 1, cached in ``RUN_DIR/masks/`` (faster; later steps look at
    masks an older model made)."""
    max_length: int = 8192
    """Most tokens of one training conversation (the model's context budget for a step)."""
    too_long: str = "skip"
    """A conversation over ``max_length``: ``skip`` it, or ``truncate`` it to ``max_length`` tokens
    (never inside an image; skipped when nothing of the model's turns is left). Counted either way."""
    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "max_length")
        _share(self, "direct_share", "region_share")
        if self.masks not in STAGE2_MASKS:
            raise UsageError(f"unknown masks {self.masks!r}; expected one of {', '.join(STAGE2_MASKS)}")
        if self.too_long not in STAGE2_TOO_LONG:
            raise UsageError(f"too_long must be one of {', '.join(STAGE2_TOO_LONG)}, got {self.too_long!r}")
        if not self.seg_loss >= 0:
            raise UsageError(f"seg_loss must be >= 0, got {self.seg_loss}")


@dataclass
class Stage3Config(MllmRunConfig):
    """Stage 3 reasoning with pixel grounding (paper §3.3, §4.2): DAPO on multi-turn segmented
    rollouts of the reasoning loop, from a Stage 2 model folder (``model``), on prompt sets with
    verifiable answers (``data``: ViRL39K, ``seganswer data synth --kind rl``). The projector and
    SAM 2.1 are always frozen in Stage 3."""

    # RunConfig's settings, with Stage 3's defaults (paper: lr 2e-5; constant after warmup, as DAPO)
    model: str | None = "tiny"
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(schedule="constant", warmup_ratio=0.0))
    default_lr: ClassVar[float] = 2e-5
    stage: ClassVar[str] = "stage3"

    prompts_per_step: int = 8
    """Prompts (groups) whose rollouts train in one step, over all processes, after dynamic sampling."""
    rollouts_per_prompt: int = 4
    """Rollouts sampled per prompt, the group of the group-normalised advantage (paper: 4)."""
    rollout_batch_size: int = 16
    """Trajectories the reasoning loop runs at once (per process); a finished one's slot is taken by
    the next rollout of the step (continuous batching)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (log-probs are taken under the same temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the rollouts."""
    max_new_tokens: int = 512
    """Most tokens a rollout may generate, all turns together."""
    max_seg_steps: int = 1
    """Most ``<|seg|>`` rounds per rollout."""
    roi: str = "mask"
    """Second look of the rollouts: ``mask`` (the paper's sparse segmented view), ``bbox`` or ``none``
    (direct answers from the first look: a no-second-look ablation of Stage 3)."""
    max_refills: int = 4
    """Dynamic sampling: extra rounds of prompts drawn in one step to replace the groups it drops.
    A step that still has no group left after them stops the run."""
    dynamic_sampling: str = "accuracy"
    """Which groups dynamic sampling drops: ``accuracy`` (DAPO's rule: those whose rollouts are all
    right or all wrong, format-only groups included) or ``reward`` (only those whose total rewards
    are all equal: a model that is never right still learns the format). Without an ``accuracy``
    reward, ``reward`` is used."""
    mini_batches: int = 1
    """Policy updates (optimizer steps) per rollout batch: the kept trajectories are split into this
    many mini-batches; the first update is on-policy, later ones reuse the rollout's log-probs."""
    micro_batch_size: int = 4
    """Trajectories per training forward (gradients accumulate over a mini-batch's micro-batches)."""
    recompute_logprobs: bool = True
    """Recompute the rollouts' log-probs (DAPO's ``logp_old``) with the training forward, without
    gradient, before the step's first update (the same micro-batches, the same precision), so the
    first ratio of an on-policy step is exactly 1. Off: the sampler's own log-probs, whose cached
    token-by-token decode differs from one full forward by rounding (about 1e-4 in bf16). Costs one
    forward per trajectory."""
    clip_low: float = 0.2
    """DAPO's epsilon_low: the ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.28
    """DAPO's epsilon_high (clip-higher): the ratio is clipped above at 1 + clip_high."""
    kl_coef: float = 0.0
    """Weight of a KL penalty to the starting model (k3 estimator); DAPO drops it: 0 (off)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: the last this many tokens before ``max_new_tokens`` are
    penalised linearly up to ``overlong_penalty``; 0: off (the paper names only accuracy and format)."""
    overlong_penalty: float = 1.0
    """Largest overlong penalty (at ``max_new_tokens``)."""
    reward_weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 0.8, "format": 0.2})
    """Reward functions (``train/rewards.py``) and their weights (paper: w_a 0.8, w_f 0.2)."""
    advantage_eps: float = 1e-6
    """Added to a group's reward standard deviation before dividing."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "prompts_per_step", "rollout_batch_size", "max_new_tokens", "mini_batches",
                  "micro_batch_size")
        _at_least(self, 0, "max_refills", "max_seg_steps", "overlong_buffer")
        if self.roi not in ROI_CHOICES:
            raise UsageError(f"unknown roi {self.roi!r}; expected one of {', '.join(ROI_CHOICES)}")
        if self.dynamic_sampling not in ("accuracy", "reward"):
            raise UsageError(f"unknown dynamic_sampling {self.dynamic_sampling!r}; expected accuracy or reward")
        if self.rollouts_per_prompt < 2:
            raise UsageError(f"rollouts_per_prompt must be >= 2 (a group needs two rollouts), got {self.rollouts_per_prompt}")
        if self.overlong_buffer >= self.max_new_tokens:
            raise UsageError(f"overlong_buffer ({self.overlong_buffer}) must be below max_new_tokens ({self.max_new_tokens})")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise UsageError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if not 0 <= self.clip_low < 1 or not self.clip_high >= 0:
            raise UsageError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.kl_coef < 0 or self.overlong_penalty < 0 or not self.advantage_eps > 0:
            raise UsageError("kl_coef and overlong_penalty must be >= 0, advantage_eps > 0")
        if not self.reward_weights:
            raise UsageError("reward_weights is empty: name at least one reward (accuracy, format)")
        self.reward_weights = {str(k): float(v) for k, v in self.reward_weights.items()}


# -- reading and writing ------------------------------------------------------------------------

C = TypeVar("C")


def to_dict(config) -> dict[str, Any]:
    """A dataclass as nested JSON-able dicts (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "config") -> C:
    """Build ``cls`` from nested dicts: unknown keys are an error naming them, every value is checked
    against its field's type (``coerce``), then ``cls`` checks the values themselves."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    kwargs = {name: coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UsageError(f"{where}: {e}") from None


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NULL = ("null", "none", "~", "")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as a field of type ``hint`` holds it, or ``UsageError`` naming ``where``. Text is
    parsed for the type (``--set`` gives text; YAML reads ``1e-4`` as text): numbers, booleans
    (``true``/``false``, ``yes``/``no``), ``null`` for an optional field, YAML for lists and mappings.

    >>> coerce("1e-4", float, "optim.lr"), coerce("8", int, "batch_size"), coerce("[mask]", list[str], "x")
    (0.0001, 8, ['mask'])
    >>> coerce("eight", int, "batch_size")
    Traceback (most recent call last):
    ...
    seganswer_cli.errors.UsageError: batch_size: expected an integer, got 'eight'
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        optional = type(None) in args
        if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NULL):
            if optional:
                return None
            raise UsageError(f"{where}: expected a value, got {value!r}")
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, _parsed(value, where), where=where)
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        kind = "an integer" if hint is int else "a number"
        if isinstance(value, str):
            try:
                value = int(value) if hint is int else float(value)
            except ValueError:
                raise UsageError(f"{where}: expected {kind}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int if hint is int else int | float):
            raise UsageError(f"{where}: expected {kind}, got {value!r}")
        return float(value) if hint is float else value
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            hint_text = " (write it in quotes)" if isinstance(value, bool) else ""
            raise UsageError(f"{where}: expected text, got {value!r}{hint_text}")
        return str(value)
    if origin in (list, tuple):
        items = _parsed(value, where)
        if isinstance(items, str | int | float) and not isinstance(items, bool):
            items = [items]
        if not isinstance(items, list | tuple):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise UsageError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
        item_hint = args[0] if args else Any
        coerced = [coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(coerced) if origin is tuple else coerced
    if origin is dict:
        mapping = _parsed(value, where)
        if not isinstance(mapping, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        key_hint, value_hint = args or (Any, Any)
        return {coerce(k, key_hint, where): coerce(v, value_hint, f"{where}.{k}") for k, v in mapping.items()}
    return value


def _parsed(value: Any, where: str) -> Any:
    """A list or mapping given as text (``--set standin_look_modes=[mask]``) read as YAML."""
    if not isinstance(value, str):
        return value
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise UsageError(f"{where}: cannot read {value!r}: {e}") from None


def _dataclass_of(hint) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        subs = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return subs[0] if subs else None
    return None


def field_hint(cls: type, dotted: str) -> Any:
    """The type of the setting ``dotted`` (``optim.lr``) of ``cls``; ``UsageError`` naming the known
    settings when there is none such."""
    node, hint = cls, None
    parts = dotted.split(".")
    for depth, name in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node)} if node is not None else {}
        if name not in fields:
            where = ".".join(parts[:depth]) or node.__name__
            raise UsageError(f"unknown setting {dotted!r} (known in {where}: {', '.join(sorted(fields))})")
        hint = typing.get_type_hints(node)[name]
        node = _dataclass_of(hint)
    return hint


def set_overrides(cls: type, assignments: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` assignments as dotted overrides, each key checked to be a setting of ``cls``
    and each value to fit its type (``UsageError`` naming the assignment otherwise).

    >>> set_overrides(Stage1Config, ["optim.lr=1e-4", "standin_look_modes=[mask]"])
    {'optim.lr': 0.0001, 'standin_look_modes': ['mask']}
    """
    out: dict[str, Any] = {}
    for assignment in assignments or []:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {assignment!r}: expected KEY=VALUE (e.g. --set optim.weight_decay=0.01)")
        try:
            hint = field_hint(cls, key)
        except UsageError as e:
            raise UsageError(f"--set {assignment}: {e}") from None
        out[key] = coerce(raw.strip(), hint, f"--set {assignment}")
    return out


def shipped_configs() -> dict[str, Path]:
    """Name -> path of every YAML shipped in ``seganswer_cli/configs/``."""
    folder = resources.files("seganswer_cli") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith((".yaml", ".yml"))}


def read_yaml(spec: str | Path, *, _within: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping in a YAML file given by path or by shipped name (``stage1-tiny``).

    A file may start from another: ``base: stage2-7b`` takes that recipe's settings and the file's
    own keys over them (nested mappings such as ``optim`` key by key), so a recipe that differs from
    another in its model says only that.
    """
    import yaml

    path = Path(spec).expanduser()
    if not path.is_file():
        shipped = shipped_configs()
        if str(spec) not in shipped:
            raise UsageError(f"config not found: {spec} (not a file, nor a shipped config: {', '.join(sorted(shipped))})")
        path = shipped[str(spec)]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise UsageError(f"{path}: base must name a recipe (a YAML file or a shipped name), got {base!r}")
    if str(spec) in _within:
        raise UsageError(f"{path}: its base recipes lead back to it ({' -> '.join([*_within, str(spec)])})")
    return _merged(read_yaml(base, _within=(*_within, str(spec))), data)


def _merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``own`` over ``base``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in own.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], *, keep_none: bool = False) -> dict[str, Any]:
    """``data`` with dotted keys (``optim.lr``) set; None values are skipped (flag not given) unless
    ``keep_none`` (``--set max_steps=null`` means null)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in overrides.items():
        if value is None and not keep_none:
            continue
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(cls: type[C], yaml_spec: str | Path | None = None, overrides: dict[str, Any] | None = None,
                assignments: list[str] | None = None) -> C:
    """Defaults, then the YAML file (if any), then ``overrides`` (the flags: dotted keys, None skipped)
    and the ``--set KEY=VALUE`` ``assignments``; a setting given both by a flag and by ``--set`` is
    refused, so the command line says one thing."""
    data = read_yaml(yaml_spec) if yaml_spec is not None else {}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    sets = set_overrides(cls, assignments)
    both = sorted(set(flags) & set(sets))
    if both:
        raise UsageError(f"{', '.join(both)} given both by a flag and by --set; give it once")
    data = apply_overrides(apply_overrides(data, flags), sets, keep_none=True)
    return from_dict(cls, data, where=str(yaml_spec or "config"))


