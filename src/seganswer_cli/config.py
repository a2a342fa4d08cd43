"""Training configuration: dataclasses with a docstring per field; YAML files and flags override them.

Precedence, lowest first: the dataclass defaults, a YAML file (``--config``: a path or the name of
a shipped file in ``seganswer_cli/configs/``), then command-line flags. The resolved result (phase
defaults filled in) is what a run folder's ``settings.json`` holds and what ``--resume`` reads back.

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
from typing import Any, TypeVar

from seganswer_cli.errors import UsageError

STAGE1_PHASES = ("projector", "lora", "standin", "points")
SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")
LOSS_TERMS = ("lm", "focal", "dice", "iou", "object_score")
STAGE2_MASKS = ("online", "precomputed")
STAGE2_TOO_LONG = ("skip", "truncate")


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


def check_run_settings(config, *, at_least_one: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    """The checks every stage's config shares (``UsageError`` naming the setting): ``dtype``,
    ``mixed_precision``, ``on_error``, ``max_steps`` (None or >= 1), the ``at_least_one`` fields >= 1
    and the ``non_negative`` ones >= 0."""
    if config.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {config.dtype!r}; expected one of {', '.join(DTYPES)}")
    if config.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"unknown mixed precision {config.mixed_precision!r}; expected {', '.join(MIXED_PRECISION)}")
    if config.on_error not in ("stop", "skip"):
        raise UsageError(f"on_error must be stop or skip, got {config.on_error!r}")
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise UsageError(f"{name} must be >= 0, got {getattr(config, name)}")
    if config.max_steps is not None and config.max_steps < 1:
        raise UsageError(f"max_steps must be >= 1, got {config.max_steps}")


@dataclass
class Stage1Config:
    """Stage 1 pixel grounding (paper §3.1, §4.2): one phase, ``projector`` or ``lora``, per run."""

    model: str = "tiny"
    """Starting model: a seganswer model folder or a preset name (``tiny``, ``qwen2.5-vl-7b``).
    Phase ``lora`` usually starts from the ``model/`` folder of a finished ``projector`` run."""
    mllm_path: str | None = None
    """Local folder of Qwen2.5-VL replacing the preset's hub id (presets only)."""
    sam_path: str | None = None
    """Local folder of SAM 2.1 (Hugging Face format) replacing the preset's hub id (presets only)."""
    dtype: str = "float32"
    """Dtype the weights are loaded in; trainable parameters are always kept in float32."""
    phase: str = "projector"
    """``projector``: only the projector trains. ``lora``: LoRA on the language model + projector +
    SAM prompt encoder and mask decoder (+ the ``<|seg|>`` embedding rows). ``standin``: not the
    paper's; every weight trains, SAM's image encoder and the vision tower included, on referring
    segmentation and plain questions (``seganswer pretrain-standin``: the shipped demo model's
    stand-in for the pretrained Qwen2.5-VL and SAM 2.1 the paper starts from). ``points``: not the
    paper's either; SAM 2.1 alone (image encoder, prompt encoder, mask decoder) learns to segment the
    shape under one click, its promptable pretraining (``seganswer pretrain-standin --phase points``,
    before ``standin``); the language model and projector do not run. One process only."""
    data: list[str] = field(default_factory=list)
    """Training sets as ``NAME=PATH[:weight]`` (see docs/data.md); sampled at the weights' rates."""
    val_data: str | None = None
    """Held-out referring-segmentation set (a path, or ``NAME=PATH``) for gIoU/cIoU; None: no validation."""
    val_limit: int = 64
    """Most held-out samples scored per validation."""
    val_batch_size: int = 8
    """Held-out samples per forward during validation."""
    on_error: str = "stop"
    """Bad records while reading the data: ``stop`` at the first, or ``skip`` and report them."""
    epochs: float | None = None
    """Passes over the mixture (its total sample count); None: the phase's own (``projector_epochs`` /
    ``lora_epochs``)."""
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
    (``stage1.echo_response``)."""
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
    max_steps: int | None = None
    """Optimizer steps to run; overrides ``epochs``."""
    batch_size: int = 1
    """Samples per process per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (global batch = batch_size * grad_accum * processes)."""
    seed: int = 0
    """Seeds the data order, LoRA initialisation and dropout."""
    mixed_precision: str = "no"
    """accelerate's autocast: ``no``, ``bf16`` or ``fp16``."""
    gradient_checkpointing: bool = False
    """Recompute the language model's activations in the backward pass (memory for time; 7B)."""
    save_every: int = 0
    """Write a checkpoint every this many optimizer steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in the run folder (oldest removed after a newer one is complete)."""
    eval_every: int = 0
    """Validate every this many optimizer steps (0: only before training and at the end)."""
    log_every: int = 1
    """Write a metrics line every this many optimizer steps."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """Overrides of the loss weights (``lm``, ``focal``, ``dice``, ``iou``, ``object_score``);
    unset terms keep 1 / 20 / 1 / 1 / 1 (next-token CE, then SAM 2.1's)."""
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and schedule."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings (phase ``lora`` only)."""

    def __post_init__(self) -> None:
        if self.phase not in STAGE1_PHASES:
            raise UsageError(f"unknown phase {self.phase!r}; expected projector, lora, standin or points")
        check_run_settings(self, at_least_one=("batch_size", "grad_accum", "val_limit", "val_batch_size", "log_every",
                                                "keep_checkpoints"), non_negative=("save_every", "eval_every"))
        for name in ("epochs", "projector_epochs", "lora_epochs", "projector_lr", "lora_lr", "standin_lr",
                     "standin_epochs", "points_lr", "points_epochs", "sam_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"{name} must be > 0, got {value}")
        if not 0.0 <= self.standin_looks <= 1.0:
            raise UsageError(f"standin_looks must be between 0 and 1, got {self.standin_looks}")
        self.standin_look_modes = [str(m) for m in self.standin_look_modes]
        bad = [m for m in self.standin_look_modes if m not in ("mask", "bbox")]
        if bad or not self.standin_look_modes:
            raise UsageError(f"standin_look_modes must name mask and/or bbox, got {self.standin_look_modes}")
        unknown = set(self.loss_weights) - set(LOSS_TERMS)
        if unknown:
            raise UsageError(f"unknown loss term(s) {sorted(unknown)}; expected {', '.join(LOSS_TERMS)}")
        self.loss_weights = {k: float(v) for k, v in self.loss_weights.items()}
        self.data = [str(d) for d in self.data]

    def resolved(self) -> Stage1Config:
        """A copy with the phase's learning rate and epochs filled in (``optim.lr``, ``epochs``)."""
        phase_lr, phase_epochs = getattr(self, f"{self.phase}_lr"), getattr(self, f"{self.phase}_epochs")
        optim = dataclasses.replace(self.optim, lr=self.optim.lr if self.optim.lr is not None else phase_lr)
        epochs = self.epochs if self.epochs is not None else phase_epochs
        return dataclasses.replace(self, optim=optim, epochs=epochs)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass
class Stage2Config:
    """Stage 2 multimodal interleaved SFT (paper §3.2, §4.2): one run from a Stage 1 model folder."""

    model: str | None = None
    """Starting model: the ``model/`` folder of a finished Stage 1 lora run (or a ``merge-lora``
    output). A folder whose ``seganswer.json`` has no Stage 1 training record is refused unless
    ``allow_untrained_start``."""
    allow_untrained_start: bool = False
    """Accept a starting model that is not a Stage 1 output (e.g. a preset): its projector and mask
    decoder were never trained, so the masks Stage 2 looks at mean nothing."""
    dtype: str = "float32"
    """Dtype the weights are loaded in; the trained MLLM parameters are always kept in float32."""
    data: list[str] = field(default_factory=list)
    """Question-answer sets as ``NAME=PATH[:weight]`` (VisualCoT, ``seganswer data synth --kind vqa``;
    docs/data.md). Boxes and region masks in them are never used."""
    on_error: str = "skip"
    """Bad records while reading the data: ``stop`` at the first, or ``skip`` and report them."""
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
    freeze_vision: bool = False
    """Keep the MLLM's vision tower frozen (the paper tunes the full MLLM backbone: default off)."""
    max_length: int = 8192
    """Most tokens of one training conversation (the model's context budget for a step)."""
    too_long: str = "skip"
    """A conversation over ``max_length``: ``skip`` it, or ``truncate`` it to ``max_length`` tokens
    (never inside an image; skipped when nothing of the model's turns is left). Counted either way."""
    epochs: float = 1.0
    """Passes over the mixture (its total sample count) (paper: 1)."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides ``epochs``."""
    batch_size: int = 1
    """Samples per process per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (global batch = batch_size * grad_accum * processes)."""
    seed: int = 0
    """Seeds the data order, the direct-answer draw and dropout."""
    mixed_precision: str = "no"
    """accelerate's autocast: ``no``, ``bf16`` or ``fp16``."""
    gradient_checkpointing: bool = False
    """Recompute the language model's activations in the backward pass (memory for time; 7B)."""
    save_every: int = 0
    """Write a checkpoint every this many optimizer steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in the run folder (oldest removed after a newer one is complete). A Stage 2
    checkpoint holds the whole MLLM: for the 7B model that is its full weights plus AdamW's state."""
    log_every: int = 1
    """Write a metrics line every this many optimizer steps."""
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-6))
    """Optimizer and schedule (paper: lr 2e-6)."""

    def __post_init__(self) -> None:
        check_run_settings(self, at_least_one=("batch_size", "grad_accum", "log_every", "keep_checkpoints", "max_length"),
                           non_negative=("save_every",))
        if self.masks not in STAGE2_MASKS:
            raise UsageError(f"unknown masks {self.masks!r}; expected one of {', '.join(STAGE2_MASKS)}")
        if self.too_long not in STAGE2_TOO_LONG:
            raise UsageError(f"too_long must be one of {', '.join(STAGE2_TOO_LONG)}, got {self.too_long!r}")
        for name in ("direct_share", "region_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.seg_loss >= 0:
            raise UsageError(f"seg_loss must be >= 0, got {self.seg_loss}")
        if not self.epochs > 0:
            raise UsageError(f"epochs must be > 0, got {self.epochs}")
        if self.optim.lr is None:
            self.optim = dataclasses.replace(self.optim, lr=2e-6)
        self.data = [str(d) for d in self.data]

    def resolved(self) -> Stage2Config:
        """Itself (every field already has its value); the same call as ``Stage1Config.resolved``."""
        return dataclasses.replace(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


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
    """Build ``cls`` from nested dicts; unknown keys are an error naming them."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_of(hints[name])
        kwargs[name] = from_dict(sub, value, where=f"{where}.{name}") if sub is not None and value is not None else value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UsageError(f"{where}: {e}") from None


def _dataclass_of(hint) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        subs = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return subs[0] if subs else None
    return None


def shipped_configs() -> dict[str, Path]:
    """Name -> path of every YAML shipped in ``seganswer_cli/configs/``."""
    folder = resources.files("seganswer_cli") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith((".yaml", ".yml"))}


def read_yaml(spec: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file given by path or by shipped name (``stage1-tiny``)."""
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
    return data


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` with dotted keys (``optim.lr``) set; None values are skipped (flag not given)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(cls: type[C], yaml_spec: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults, then the YAML file (if any), then ``overrides`` (dotted keys; None skipped)."""
    data = read_yaml(yaml_spec) if yaml_spec is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or {}), where=str(yaml_spec or "config"))


# -- Stage 3 ------------------------------------------------------------------------------------

ROI_CHOICES = ("mask", "bbox", "none")


@dataclass
class Stage3Config:
    """Stage 3 reasoning with pixel grounding (paper §3.3, §4.2): DAPO on multi-turn segmented
    rollouts of the reasoning loop, from a Stage 2 model folder."""

    model: str = "tiny"
    """Starting model: the ``model/`` folder of a finished Stage 2 run (or any seganswer model
    folder / preset name)."""
    dtype: str = "float32"
    """Dtype the weights are loaded in; the trained MLLM parameters are always kept in float32."""
    data: list[str] = field(default_factory=list)
    """Prompt sets with verifiable answers as ``NAME=PATH[:weight]`` (ViRL39K, ``seganswer data
    synth --kind rl``); sampled at the weights' rates."""
    on_error: str = "skip"
    """Bad records while reading the data: ``stop`` at the first, or ``skip`` and report them."""
    freeze_vision: bool = False
    """Keep the MLLM's vision tower frozen (the paper trains the MLLM: default off). The projector
    and SAM 2.1 are always frozen in Stage 3."""
    epochs: float = 1.0
    """Passes over the prompt mixture, counted in prompts whose groups train (paper: 1)."""
    max_steps: int | None = None
    """Rollout-and-update steps to run; overrides ``epochs``."""
    prompts_per_step: int = 8
    """Prompts (groups) whose rollouts train in one step, over all processes, after dynamic sampling."""
    rollouts_per_prompt: int = 4
    """Rollouts sampled per prompt, the group of the group-normalised advantage (paper: 4)."""
    rollout_batch_size: int = 16
    """Trajectories the reasoning loop runs as one batch (per process)."""
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
    """Dynamic sampling: extra rounds of prompts drawn in one step to replace groups whose rewards
    are all equal. A step that still has no group left after them stops the run."""
    mini_batches: int = 1
    """Policy updates (optimizer steps) per rollout batch: the kept trajectories are split into this
    many mini-batches; the first update is on-policy, later ones reuse the rollout's log-probs."""
    micro_batch_size: int = 4
    """Trajectories per training forward (gradients accumulate over a mini-batch's micro-batches)."""
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
    seed: int = 0
    """Seeds the prompt order and every rollout's sampling."""
    mixed_precision: str = "no"
    """accelerate's autocast for the training forward: ``no``, ``bf16`` or ``fp16``."""
    gradient_checkpointing: bool = False
    """Recompute the language model's activations in the backward pass (memory for time; 7B)."""
    save_every: int = 0
    """Write a checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in the run folder (a Stage 3 checkpoint holds the whole MLLM and AdamW's state)."""
    log_every: int = 1
    """Write a metrics line every this many steps."""
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-5, schedule="constant", warmup_ratio=0.0))
    """Optimizer and schedule (paper: lr 2e-5; constant after warmup, as DAPO)."""

    def __post_init__(self) -> None:
        check_run_settings(self, at_least_one=("prompts_per_step", "rollout_batch_size", "max_new_tokens", "mini_batches",
                                                "micro_batch_size", "log_every", "keep_checkpoints"),
                           non_negative=("max_refills", "save_every", "max_seg_steps", "overlong_buffer"))
        if self.roi not in ROI_CHOICES:
            raise UsageError(f"unknown roi {self.roi!r}; expected one of {', '.join(ROI_CHOICES)}")
        if self.rollouts_per_prompt < 2:
            raise UsageError(f"rollouts_per_prompt must be >= 2 (a group needs two rollouts), got {self.rollouts_per_prompt}")
        if self.overlong_buffer >= self.max_new_tokens:
            raise UsageError(f"overlong_buffer ({self.overlong_buffer}) must be below max_new_tokens ({self.max_new_tokens})")
        if not self.epochs > 0:
            raise UsageError(f"epochs must be > 0, got {self.epochs}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise UsageError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if not 0 <= self.clip_low < 1 or not self.clip_high >= 0:
            raise UsageError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.kl_coef < 0 or self.overlong_penalty < 0 or not self.advantage_eps > 0:
            raise UsageError("kl_coef and overlong_penalty must be >= 0, advantage_eps > 0")
        if not self.reward_weights:
            raise UsageError("reward_weights is empty: name at least one reward (accuracy, format)")
        self.reward_weights = {str(k): float(v) for k, v in self.reward_weights.items()}
        if self.optim.lr is None:
            self.optim = dataclasses.replace(self.optim, lr=2e-5)
        self.data = [str(d) for d in self.data]

    def resolved(self) -> Stage3Config:
        """Itself (every field already has its value); the same call as ``Stage1Config.resolved``."""
        return dataclasses.replace(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
