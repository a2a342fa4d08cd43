"""The memory plan (``seganswer plan``): per-GPU memory of a training recipe before it is launched.

The model is built on the meta device (shapes, no weights: the 7B plans in seconds on a laptop),
the stage's own freezing runs on it (``stage1.setup_trainable``, ``stage_setup.train_the_mllm``,
``stage_setup.float32_trainables``), and the parameters are counted per part: the MLLM's vision
tower, its language model (embeddings, decoder, LM head, LoRA adapters), the projector, SAM 2.1's
image encoder and its prompt encoder + mask decoder. Then, per GPU:

- **weights**: every parameter at its storage dtype after the stage's setup (what trains is float32;
  the rest the recipe's ``dtype``);
- **gradients**: float32, one per trainable parameter; DDP adds its bucket copy (accelerate's
  default ``gradient_as_bucket_view=False`` keeps the gradients and the all-reduce buckets apart);
- **optimizer**: AdamW's two float32 moments per trainable parameter. There is no separate float32
  master copy: the trainable weights already are float32 (``float32_trainables``), so the issue's
  16 bytes per trainable parameter are 4 weight + 4 gradient + 8 AdamW;
- **compute copies**: DDP with autocast keeps a bf16/fp16 copy of every trainable float32 matrix for
  the step; FSDP instead gathers one unit at a time: the root unit (everything outside the decoder
  layers and vision blocks: embeddings, LM head, merger, projector, SAM) for the whole step plus
  two blocks (the current one and the prefetched next), at the compute dtype, with their unsharded
  float32 gradients until the reduce-scatter;
- **activations**: per sequence token and decoder layer ``(10 h + 4 i + 4 kv) x`` the compute dtype's
  size plus ``2 h x`` the residual stream's (RMSNorm's float32 input and the layer's input), the same
  count for the vision blocks over the patches (4 per visual token) when the vision tower trains,
  LoRA's dropped input copies, and the LM head's logits over the target tokens (its output, the float32
  copy, the log-softmax and its gradient). With activation checkpointing: one residual vector per layer
  and token plus one layer's full set (the one being recomputed). Attention is assumed to keep no
  ``S x S`` scores (flash/memory-efficient SDPA, as on GPUs);
- **Stage 3**: the reference model when ``kl_coef > 0`` (a plain copy of the starting policy,
  float32 MLLM, never sharded), and the rollouts' KV cache (``rollout_batch_size x`` their tokens
  ``x 2 x layers x kv x`` the compute dtype: rollouts run under the update's autocast) with the
  prefill's one-layer working set, and under FSDP the MLLM's weights gathered whole for the rollouts
  (the engine gathers them once per step); rollouts and updates do not overlap, so the larger counts.

FSDP (``fully_shard`` per decoder layer and vision block, then the whole model as the root, as
``train/engine.py`` wraps it): every MLLM parameter, gradient and AdamW state is sharded over the
GPUs, frozen ones too; frozen parts outside the MLLM (SAM 2.1, a frozen projector) stay replicated,
as the engine leaves them; with ``offload`` the
shards live in CPU memory (and AdamW steps there), the GPU keeps the gathered units and activations.

What fits: the estimate plus a **reserve** of 2 GiB (CUDA context, NCCL and cuBLAS workspaces) and 10 %
(allocator fragmentation) at most the GPU's size. GPU sizes are binary: ``80GB`` is 80 GiB.

    plan = plan_recipe(load_config(Stage2Config, "stage2-7b"), "stage2", model="qwen2.5-vl-7b", gpus=8,
                       gpu_memory=parse_gpu_memory("80GB"))
    plan.strategies["ddp"].fits, plan.strategies["fsdp"].fits      # False, True

This module imports torch only inside the functions that build the model (the CLI reads it first).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seganswer_cli.errors import UsageError

GIB = 2**30
STRATEGIES = ("ddp", "fsdp")
STAGES = ("stage1", "stage2", "stage3")
RESERVE_BYTES = 2 * GIB
"""CUDA context, NCCL and cuBLAS workspaces: kept free on every GPU."""
FRAGMENTATION = 0.10
"""Share of the estimate kept free for the caching allocator's fragmentation."""
GRAD_BYTES, ADAM_BYTES = 4, 8
"""float32 gradients; AdamW's exp_avg and exp_avg_sq in float32."""
BLOCKS_IN_FLIGHT = 2
"""FSDP units gathered at once besides the root: the running one and the prefetched next."""
PATCHES_PER_TOKEN = 4
"""Both backbones (Qwen2.5-VL, Qwen3-VL) merge 2 x 2 patches of the vision tower into one LLM token."""
PART_NAMES = ("vision tower", "language model", "projector", "SAM image encoder", "SAM prompt enc. + mask decoder")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|g|gb|gib|t|tb|tib|m|mb|mib)\s*$", re.IGNORECASE)


def parse_gpu_memory(text: str) -> int:
    """A GPU's memory in bytes from ``80``, ``80G``, ``80GB``, ``80GiB`` (all 80 GiB: GPU sizes are
    binary), ``1.5T`` or ``40960MB``; anything else is a ``UsageError``.

    >>> parse_gpu_memory("80GB") == parse_gpu_memory("80") == parse_gpu_memory("80GiB") == 80 * GIB
    True
    >>> parse_gpu_memory("eighty")
    Traceback (most recent call last):
    ...
    seganswer_cli.errors.UsageError: --gpu-memory 'eighty': expected a size such as 80GB, 80GiB, 80G or 80
    """
    match = _SIZE.match(str(text))
    if not match or not float(match.group(1)) > 0:
        raise UsageError(f"--gpu-memory {text!r}: expected a size such as 80GB, 80GiB, 80G or 80")
    unit = match.group(2).lower()[:1] or "g"
    return int(float(match.group(1)) * {"m": 2**20, "g": GIB, "t": 2**40}[unit])


def gib(n: float) -> float:
    return round(n / GIB, 2)


# -- what the model is made of ------------------------------------------------------------------------


@dataclass
class Part:
    """One part of the model: its parameters, how many train, and their bytes at storage dtype."""

    name: str
    params: int = 0
    trainable: int = 0
    bytes: int = 0
    trainable_bytes: int = 0
    dtypes: list[str] = field(default_factory=list)


@dataclass
class Dims:
    """The sizes the activation estimate needs (read from the MLLM's config)."""

    hidden: int
    intermediate: int
    layers: int
    kv_dim: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    cell: int = 28
    """Pixels on a side of what one LLM token covers (the vision patch x the 2 x 2 merge)."""
    lora_inputs: int = 0
    """Per token and decoder layer: input features of the LoRA-adapted linear layers (each keeps a
    dropped copy of its input)."""
    lora_dropout: bool = False


@dataclass
class Census:
    """A model after the stage's setup, counted: per part, plus what FSDP and autocast gather."""

    parts: list[Part]
    dims: Dims
    sharded_bytes: int
    """Bytes of the parameters inside the MLLM (FSDP shards them; frozen ones too)."""
    unsharded_bytes: int
    """Bytes of the projector and SAM 2.1."""
    root_params: int
    """Parameters outside the decoder layers and vision blocks (FSDP's root unit)."""
    root_trainable: int
    block_params: int
    """Parameters of the largest decoder layer or vision block (one FSDP unit)."""
    block_trainable: int
    trainable_matrices: int
    """Trainable parameters of linear and convolution layers (autocast casts those per step)."""
    replicated_bytes: int = 0
    """Bytes of the frozen parameters outside the MLLM (SAM 2.1, a frozen projector): the engine leaves
    them replicated on every GPU under FSDP (train/engine.py); trainable ones join the root unit."""

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def trainable(self) -> int:
        return sum(p.trainable for p in self.parts)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)


def part_of(name: str) -> str:
    """Which part a parameter of ``SegAnswerModel`` belongs to, by its name.

    >>> part_of("mllm.model.visual.blocks.0.attn.qkv.weight"), part_of("mask_decoder.sam.vision_encoder.neck.x")
    ('vision tower', 'SAM image encoder')
    """
    if name.startswith("mllm."):
        return "vision tower" if ".visual." in name else "language model"
    if name.startswith("projector."):
        return "projector"
    return "SAM image encoder" if ".vision_encoder." in name else "SAM prompt enc. + mask decoder"


def census(model) -> Census:
    """Count ``model`` (a ``SegAnswerModel`` or the meta stand-in of ``meta_model``, after the stage's
    setup): parameters, trainable ones and bytes per part, and what FSDP's units hold."""
    from torch import nn

    parts = {name: Part(name) for name in PART_NAMES}
    for name, p in model.named_parameters():
        part = parts[part_of(name)]
        n, size = p.numel(), p.numel() * p.element_size()
        part.params += n
        part.bytes += size
        if p.requires_grad:
            part.trainable += n
            part.trainable_bytes += size
        if str(p.dtype).removeprefix("torch.") not in part.dtypes:
            part.dtypes.append(str(p.dtype).removeprefix("torch."))

    def counted(module) -> tuple[int, int]:
        ps = list(module.parameters())
        return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)

    mllm = model.mllm
    blocks = [*mllm.model.language_model.layers, *mllm.model.visual.blocks]
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    block = max((counted(b) for b in blocks), default=(0, 0))
    root = [p for p in model.parameters() if id(p) not in in_blocks]
    matrices = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv3d)
                   for p in m.parameters(recurse=False) if p.requires_grad and p.dim() > 1)
    mllm_bytes = sum(p.numel() * p.element_size() for p in mllm.parameters())
    all_bytes = sum(p.bytes for p in parts.values())
    return Census(
        parts=list(parts.values()),
        dims=dims_of(model),
        sharded_bytes=mllm_bytes,
        unsharded_bytes=all_bytes - mllm_bytes,
        replicated_bytes=sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                             if not name.startswith("mllm.") and not p.requires_grad),
        root_params=sum(p.numel() for p in root),
        root_trainable=sum(p.numel() for p in root if p.requires_grad),
        block_params=block[0],
        block_trainable=block[1],
        trainable_matrices=matrices,
    )


def dims_of(model) -> Dims:
    text, vision = model.mllm.config.text_config, model.mllm.config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    lora_inputs, dropout = 0, False
    layer = model.mllm.model.language_model.layers[0]
    for module in layer.modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features") and module.lora_A:
            lora_inputs += module.in_features
            dropout = dropout or any(type(d).__name__ == "Dropout" for d in module.lora_dropout.values())
    return Dims(hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
                kv_dim=text.num_key_value_heads * head_dim, vocab=text.vocab_size,
                vision_hidden=vision.hidden_size, vision_intermediate=vision.intermediate_size,
                vision_layers=vision.depth, cell=vision.patch_size * vision.spatial_merge_size,
                lora_inputs=lora_inputs, lora_dropout=dropout)


# -- building the model on the meta device ---------------------------------------------------------------


def architectures_folder() -> Path:
    from importlib import resources

    return Path(str(resources.files("seganswer_cli") / "model" / "architectures"))


def meta_model(spec: str, dtype: str = "float32"):
    """The model ``spec`` (a preset name or a seganswer model folder) on the meta device, its weights in
    ``dtype``: a preset built in code runs its own builder; a preset from the hub reads its shipped
    architecture (``model/architectures/<preset>.json``); a folder its ``mllm/config.json`` and
    ``mask_decoder_config.json``."""
    import json

    import torch

    from seganswer_cli.model.presets import PRESETS, packaged_folder

    torch_dtype = getattr(torch, dtype)  # the run's dtype, as load_starting_model loads it
    if spec in PRESETS and PRESETS[spec].packaged is None and PRESETS[spec].mllm is None:
        from seganswer_cli.model import SegAnswerModel

        with torch.device("meta"):
            return SegAnswerModel.from_preset(spec, dtype=torch_dtype)
    if spec in PRESETS and PRESETS[spec].packaged is not None:
        spec = str(packaged_folder(spec))
    if spec in PRESETS:
        # presets that differ only in their view settings share the architecture file of their models
        same = [n for n, p in PRESETS.items() if (p.mllm, p.sam) == (PRESETS[spec].mllm, PRESETS[spec].sam)]
        path = next((architectures_folder() / f"{n}.json" for n in [spec, *same]
                     if (architectures_folder() / f"{n}.json").is_file()), architectures_folder() / f"{spec}.json")
        if not path.is_file():
            raise UsageError(f"preset {spec!r} has no shipped architecture to plan with; give --model a model folder")
        arch = json.loads(path.read_text())
        return _from_configs(arch["mllm"], arch["sam"], torch_dtype, source=f"{path} (mllm)")
    folder = Path(spec)
    if not folder.is_dir():
        raise UsageError(f"--model {spec}: neither a model folder nor a preset ({', '.join(PRESETS)})")
    for required in ("mllm/config.json", "mask_decoder_config.json"):
        if not (folder / required).is_file():
            raise UsageError(f"{folder} is not a seganswer model folder (no {required})")
    return _from_configs(json.loads((folder / "mllm" / "config.json").read_text()),
                         json.loads((folder / "mask_decoder_config.json").read_text()), torch_dtype,
                         source=folder / "mllm" / "config.json")


def _from_configs(mllm_config: dict, sam_config: dict, dtype, *, source):
    import torch
    from torch import nn
    from transformers import Sam2Config, Sam2Model

    from seganswer_cli.model.backbones import backbone_for
    from seganswer_cli.model.mask_decoder import SamMaskDecoder
    from seganswer_cli.model.projector import SegProjector

    class MetaModel(nn.Module):
        """The parts of ``SegAnswerModel`` without a tokenizer (what the stages' freezing touches)."""

        def __init__(self, mllm, projector, mask_decoder):
            super().__init__()
            self.mllm, self.projector, self.mask_decoder = mllm, projector, mask_decoder
            # the <|seg|> row: its id only says which one row LoRA's trainable tokens take
            self.token_ids = type("TokenIds", (), {"seg": mllm.config.text_config.vocab_size - 1})()

    model_class, config_class = backbone_for(mllm_config.get("model_type"), source).classes()
    with torch.device("meta"):
        mllm = model_class(config_class.from_dict(mllm_config))
        decoder = SamMaskDecoder(Sam2Model(Sam2Config.from_dict(sam_config)))
        projector = SegProjector(mllm.config.text_config.hidden_size, decoder.prompt_dim)
    return MetaModel(mllm, projector, decoder).to(dtype)


def stage_model(config, stage: str, spec: str):
    """``spec`` on the meta device after ``stage``'s own setup for ``config``: what trains is float32."""
    from seganswer_cli.train.stage_setup import float32_trainables, train_the_mllm

    model = meta_model(spec, config.dtype)
    if stage == "stage1":
        from seganswer_cli.train.stage1 import setup_trainable

        setup_trainable(model, config)
    else:
        train_the_mllm(model, freeze_vision=config.freeze_vision)
    float32_trainables(model)
    return model


# -- the workload and the arithmetic -----------------------------------------------------------------------


@dataclass
class Workload:
    """What one training micro-step (and, in Stage 3, one rollout batch) holds."""

    micro_batch: int
    tokens: int
    """Tokens of one sequence."""
    visual_tokens: int
    """Of those, the LLM tokens of images (the vision tower runs ``PATCHES_PER_TOKEN`` patches each)."""
    target_tokens: int
    """Of those, the tokens with a next-token target (the LM head's logits are taken only there)."""
    checkpointing: bool
    compute_bytes: int
    """2 under bf16/fp16 autocast, else the weights' size."""
    residual_bytes: int
    """Size of the residual stream's values (the embeddings' dtype)."""
    rollout_batch: int = 0
    rollout_tokens: int = 0
    prefill_tokens: int = 0
    kv_bytes: int = 4
    reference_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def layer_activation_bytes(hidden: int, intermediate: int, kv_dim: int, compute: int, residual: int) -> int:
    """Bytes one token keeps for backward in one decoder layer (or vision block): q, k, v, the
    attention output, the norms' outputs and the MLP's gate, up, activation and product at the compute
    dtype; the norms' inputs at the residual stream's.

    >>> layer_activation_bytes(4, 8, 2, compute=2, residual=4)
    192
    """
    return compute * (10 * hidden + 4 * intermediate + 4 * kv_dim) + residual * 2 * hidden


def activation_bytes(dims: Dims, w: Workload, *, vision_trains: bool, llm_trains: bool) -> dict[str, int]:
    """Activations of one micro-step (``train``) and of one rollout batch (``rollout``), in bytes."""
    c, r = w.compute_bytes, w.residual_bytes
    text_layer = layer_activation_bytes(dims.hidden, dims.intermediate, dims.kv_dim, c, r)
    if dims.lora_inputs:
        text_layer += dims.lora_inputs * (c + (1 if dims.lora_dropout else 0))
    vision_layer = layer_activation_bytes(dims.vision_hidden, dims.vision_intermediate, 0, c, r)
    tokens, patches = w.micro_batch * w.tokens, w.micro_batch * w.visual_tokens * PATCHES_PER_TOKEN
    one_layer = max(tokens * text_layer, patches * vision_layer)
    text = tokens * dims.layers * (dims.hidden * r if w.checkpointing else text_layer) if llm_trains else 0
    vision = patches * dims.vision_layers * (dims.vision_hidden * r if w.checkpointing else vision_layer) \
        if vision_trains else 0
    logits = w.micro_batch * w.target_tokens * dims.vocab * (c + 3 * 4) if llm_trains else 0
    train = text + vision + logits + (one_layer if w.checkpointing or not llm_trains else 0)
    kv = w.rollout_batch * w.rollout_tokens * dims.layers * 2 * dims.kv_dim * w.kv_bytes
    # the prompt's prefill, all rows at once: one layer's MLP and attention working set
    prefill = w.rollout_batch * w.prefill_tokens * (3 * dims.intermediate + 4 * dims.hidden) * w.kv_bytes
    return {"train": train, "rollout": kv + prefill if w.rollout_batch else 0}


@dataclass
class StrategyPlan:
    """Per-GPU bytes of one strategy, what it needs in all, and whether it fits."""

    strategy: str
    terms: dict[str, int]
    total: int
    reserve: int
    gpu_memory: int
    cpu_per_gpu: int = 0

    @property
    def fits(self) -> bool:
        return self.total + self.reserve <= self.gpu_memory

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "per_gpu_gib": {k: gib(v) for k, v in self.terms.items()},
                "total_gib": gib(self.total), "reserve_gib": gib(self.reserve),
                "needed_gib": gib(self.total + self.reserve), "gpu_gib": gib(self.gpu_memory),
                "fits": self.fits, "cpu_offload_gib_per_gpu": gib(self.cpu_per_gpu)}


def strategy_memory(c: Census, w: Workload, strategy: str, gpus: int, gpu_memory: int, *,
                    offload: bool = False) -> StrategyPlan:
    """The per-GPU terms of ``strategy`` (``ddp`` or ``fsdp``) on ``gpus`` GPUs."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; expected ddp or fsdp")
    vision_trains = c.part("vision tower").trainable > 0
    llm_trains = c.part("language model").trainable > 0
    acts = activation_bytes(c.dims, w, vision_trains=vision_trains, llm_trains=llm_trains)
    weights, grads, adam = c.bytes, c.trainable * GRAD_BYTES, c.trainable * ADAM_BYTES
    terms: dict[str, int] = {}
    cpu = 0
    if strategy == "ddp" or gpus == 1 and not offload:
        terms["weights"] = weights
        terms["gradients"] = grads
        terms["optimizer"] = adam
        terms["DDP buckets"] = grads if gpus > 1 else 0
        # autocast's half-precision copy of each trainable float32 matrix, kept for backward
        terms["compute copies"] = c.trainable_matrices * w.compute_bytes if w.compute_bytes < 4 else 0
    else:
        shards = math.ceil((weights + grads + adam) / gpus)
        if offload:
            terms["weights"] = terms["gradients"] = terms["optimizer"] = 0
            cpu = shards
        else:
            replicated = c.replicated_bytes
            terms["weights"] = math.ceil((weights - replicated) / gpus) + replicated
            terms["gradients"] = math.ceil(grads / gpus)
            terms["optimizer"] = math.ceil(adam / gpus)
        gathered = (c.root_params + BLOCKS_IN_FLIGHT * c.block_params) * w.compute_bytes
        unsharded_grads = (c.root_trainable + BLOCKS_IN_FLIGHT * c.block_trainable) * GRAD_BYTES
        terms["gathered units"] = gathered + unsharded_grads
        if w.rollout_batch:
            # the engine runs rollouts on the MLLM's weights gathered whole once per step (its
            # processes decode unevenly), at the compute dtype, beside the KV cache
            mllm_params = c.part("vision tower").params + c.part("language model").params
            terms["gathered for rollouts"] = mllm_params * w.compute_bytes
    terms["activations"] = acts["train"]
    terms["rollouts (KV cache)"] = acts["rollout"]
    terms["reference model"] = w.reference_bytes
    # rollouts and updates take turns: the larger of the two is the peak
    rollout = terms["rollouts (KV cache)"] + terms.get("gathered for rollouts", 0)
    total = sum(v for k, v in terms.items() if k not in ("activations", "rollouts (KV cache)", "gathered for rollouts"))
    total += max(terms["activations"], rollout)
    reserve = RESERVE_BYTES + math.ceil(FRAGMENTATION * total)
    return StrategyPlan(strategy, terms, total, reserve, gpu_memory, cpu)


@dataclass
class Plan:
    """A recipe's memory plan: the settings it assumed, the model's parts, both strategies, the verdict
    for the asked strategy and, when it does not fit, the first change that makes it fit."""

    recipe: str
    stage: str
    model: str
    gpus: int
    gpu_memory: int
    strategy: str
    offload: bool
    census: Census
    workload: Workload
    strategies: dict[str, StrategyPlan]
    suggestion: str | None

    @property
    def chosen(self) -> StrategyPlan:
        return self.strategies[self.strategy]

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        return {
            "recipe": self.recipe, "stage": self.stage, "model": self.model, "gpus": self.gpus,
            "gpu_memory_gib": gib(self.gpu_memory), "strategy": self.strategy, "offload": self.offload,
            "parts": [dataclasses.asdict(p) for p in self.census.parts],
            "parameters": self.census.params, "trainable": self.census.trainable,
            "workload": {k: v for k, v in dataclasses.asdict(w).items() if k != "notes"},
            "assumptions": w.notes,
            "ddp": self.strategies["ddp"].to_dict(), "fsdp": self.strategies["fsdp"].to_dict(),
            "fits": self.chosen.fits, "suggestion": self.suggestion,
        }


def plan_census(census_: Census, workload: Workload, *, gpus: int, gpu_memory: int, strategy: str = "ddp",
                offload: bool = False, recipe: str = "", stage: str = "", model: str = "") -> Plan:
    """Both strategies for ``census_`` and ``workload``, the verdict for ``strategy`` and a suggestion."""
    if gpus < 1:
        raise UsageError(f"--gpus must be >= 1, got {gpus}")
    if offload and strategy != "fsdp":
        raise UsageError("--offload moves FSDP's shards to CPU memory: give it with --strategy fsdp")
    strategies = {s: strategy_memory(census_, workload, s, gpus, gpu_memory, offload=offload and s == "fsdp")
                  for s in STRATEGIES}
    plan = Plan(recipe, stage, model, gpus, gpu_memory, strategy, offload, census_, workload, strategies, None)
    if not plan.chosen.fits:
        plan.suggestion = suggest(census_, workload, gpus, gpu_memory, strategy, offload)
    return plan


def suggest(c: Census, w: Workload, gpus: int, gpu_memory: int, strategy: str, offload: bool) -> str:
    """The first change, tried in the order FSDP, checkpointing, halved micro-batches, CPU offload
    (each kept while the next is tried), that makes the plan fit, as the flags to give."""
    candidates: list[tuple[str, str]] = []
    if strategy == "ddp":
        candidates.append(("--strategy", "fsdp"))
    if not w.checkpointing:
        candidates.append(("--checkpointing", ""))
    mb = w.micro_batch
    while mb > 1:
        mb //= 2
        candidates.append(("--micro-batch", str(mb)))
    if not offload:
        candidates.append(("--offload", ""))
    given: dict[str, str] = {}
    for flag, value in candidates:
        given[flag] = value
        if flag == "--offload":
            given.setdefault("--strategy", "fsdp")
        w = dataclasses.replace(w, checkpointing=w.checkpointing or "--checkpointing" in given,
                                micro_batch=int(given.get("--micro-batch", w.micro_batch)))
        chosen = given.get("--strategy", strategy)
        if strategy_memory(c, w, chosen, gpus, gpu_memory, offload="--offload" in given).fits:
            return "fits with " + " ".join(f"{f} {v}".strip() for f, v in given.items())
    return "does not fit even with " + (" ".join(f"{f} {v}".strip() for f, v in given.items()) or "these settings") \
        + ": more or larger GPUs"


# -- a recipe's plan -------------------------------------------------------------------------------------


def stage_of(recipe: str) -> str | None:
    """``stage2`` for ``stage2-7b`` or ``configs/stage2-mine.yaml``; None when the name does not say."""
    match = re.match(r"(stage[123])\b", Path(str(recipe)).stem)
    return match.group(1) if match else None


def workload_of(config, stage: str, census_: Census, *, micro_batch: int | None, checkpointing: bool | None,
                image_tokens: int) -> Workload:
    """The sequence sizes a micro-step of ``config`` holds, with the assumptions stated in ``notes``."""
    lm = census_.part("language model")
    compute = 2 if config.mixed_precision in ("bf16", "fp16") else (2 if "float32" not in lm.dtypes else 4)
    residual = 4 if "float32" in lm.dtypes else 2
    ckpt = config.gradient_checkpointing if checkpointing is None else checkpointing
    cell = census_.dims.cell
    notes = [f"{image_tokens} LLM tokens per image (--image-tokens; {image_tokens * cell * cell / 1e6:.2g} MP at "
             f"the model's {cell} px per token)"]
    if stage == "stage1":
        mb = micro_batch or config.batch_size
        tokens, visual, targets = image_tokens + 64, image_tokens, 16
        notes.append("Stage 1 sequence: one image + 64 text tokens, 16 with a target (the short Response 1)")
        w = Workload(mb, tokens, visual, targets, ckpt, compute, residual, notes=notes)
    elif stage == "stage2":
        mb = micro_batch or config.batch_size
        visual = min(2 * image_tokens, config.max_length)
        notes.append(f"Stage 2 sequence at its budget: max_length {config.max_length} tokens, two images "
                     "(the original and the segmented view), 512 with a target (the model's turns)")
        w = Workload(mb, config.max_length, visual, min(512, config.max_length), ckpt, compute, residual, notes=notes)
    else:
        mb = micro_batch or config.micro_batch_size
        prompt = image_tokens + 128
        tokens = prompt + image_tokens + config.max_new_tokens
        notes.append(f"Stage 3 trajectory: prompt (image + 128 text) + segmented view + {config.max_new_tokens} "
                     f"generated tokens = {tokens}; rollouts: {config.rollout_batch_size} per batch, their KV "
                     "cache at the update's compute dtype (rollouts run under its autocast)")
        kv = compute
        reference = 0
        if config.kl_coef > 0:
            reference = census_.bytes
            notes.append("kl_coef > 0: a reference copy of the starting model, float32 MLLM, on every GPU")
        w = Workload(mb, tokens, 2 * image_tokens, config.max_new_tokens, ckpt, compute, residual,
                     rollout_batch=config.rollout_batch_size, rollout_tokens=tokens, prefill_tokens=prompt, kv_bytes=kv,
                     reference_bytes=reference, notes=notes)
    return w


def plan_recipe(config, stage: str, *, model: str, gpus: int, gpu_memory: int, strategy: str = "ddp",
                offload: bool = False, micro_batch: int | None = None, checkpointing: bool | None = None,
                image_tokens: int = 1024, recipe: str = "") -> Plan:
    """The plan of ``config`` (a resolved stage config) for ``model`` (preset or folder) on ``gpus`` GPUs."""
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if stage == "stage1" and config.phase not in ("projector", "lora"):
        raise UsageError(f"the plan covers the paper's Stage 1 phases (projector, lora), not {config.phase!r}")
    if micro_batch is not None and micro_batch < 1 or image_tokens < 1:
        raise UsageError("--micro-batch and --image-tokens must be >= 1")
    c = census(stage_model(config, stage, model))
    w = workload_of(config, stage, c, micro_batch=micro_batch, checkpointing=checkpointing, image_tokens=image_tokens)
    return plan_census(c, w, gpus=gpus, gpu_memory=gpu_memory, strategy=strategy, offload=offload,
                       recipe=recipe, stage=stage, model=model)
