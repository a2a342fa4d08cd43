"""How a training stage's model is spread over processes: DDP (accelerate) or FSDP2
(``torch.distributed.fsdp.fully_shard``), chosen by ``RunConfig.strategy``. Every stage calls these;
none shards on its own.

FSDP2, what is sharded (``shard_model``):

- every Qwen2.5-VL decoder layer and vision block is one FSDP unit (``mllm._no_split_modules``),
  then the input embedding, the LM head (one unit when tied), the language model (its final norm),
  the vision tower (patch embedding, merger) and the projector when it trains, each a unit: each
  is entered through its own ``__call__`` (``SegAnswerModel.embed``, ``language_model``,
  ``logits``, the reasoning loop's cached decoding), so each gathers its own weights and frees
  them after use;
- the ``SegAnswerModel`` is the root; what is left in it is SAM 2.1's trainable parts (Stage 1
  phase lora: prompt encoder and mask decoder, which its methods read directly, so they are
  gathered for the whole root forward);
- frozen modules outside the MLLM (SAM 2.1's image encoder always, the projector and all of SAM
  2.1 in Stage 2 and 3) are *not* sharded: ``ignored_params`` keeps them replicated, as plain
  tensors, on every process; they are small next to the MLLM and have no gradients to reduce.
  Frozen MLLM blocks (Stage 1's base weights under LoRA, a frozen vision tower) are sharded like
  the rest and simply get no gradients;
- ``mixed_precision: bf16``: ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` (the
  sharded master weights and AdamW's state stay fp32) and bf16 autocast around the forward, as
  accelerate gives DDP (the replicated frozen parts keep their dtype; autocast joins them);
- ``gradient_checkpointing``: the layers' own (transformers') non-reentrant checkpointing, which
  composes with FSDP2; ``cpu_offload``: ``CPUOffloadPolicy`` (shards, gradients and the AdamW step
  on the CPU).

Asked for on one process, FSDP has nothing to shard: the run says so in one line and runs as one.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch

from seganswer_cli.train import runs
from seganswer_cli.train.stage_setup import adamw_with_schedule


def uses_fsdp(config, accelerator) -> bool:
    """True when this launch shards with FSDP2 (``strategy: fsdp`` and more than one process)."""
    return getattr(config, "strategy", "ddp") == "fsdp" and accelerator.num_processes > 1


def say_if_single_process(config, accelerator) -> None:
    """The one line for ``strategy: fsdp`` on one process (it then runs as one)."""
    if getattr(config, "strategy", "ddp") == "fsdp" and accelerator.num_processes == 1:
        from rich.console import Console

        Console(stderr=True).print("strategy fsdp on one process: nothing to shard, running as one process "
                                   "(launch with torchrun --nproc-per-node N to shard)", highlight=False,
                                   soft_wrap=True)


def fsdp_modules(model) -> list:
    """The FSDP units of ``model`` in the order ``shard_model`` wraps them, innermost first: the MLLM's
    decoder layers and vision blocks, then its embeddings, language model, vision tower, and the
    projector when it trains (each a module, or a list of modules sharing one unit)."""
    mllm = model.mllm
    blocks = tuple(getattr(mllm, "_no_split_modules", None) or ())
    units: list = [m for m in mllm.modules() if type(m).__name__ in blocks]
    embed, head = mllm.get_input_embeddings(), mllm.get_output_embeddings()
    tied = any(p is q for p in embed.parameters() for q in head.parameters())
    units += [[embed, head]] if tied else [embed, head]
    units += [mllm.model.language_model, mllm.model.visual]
    if any(p.requires_grad for p in model.projector.parameters()):  # Stage 1; frozen it stays replicated
        units.append(model.projector)
    return units


def shard_model(model, config, accelerator) -> None:
    """FSDP2 on ``model``, in place (see the module docstring); the optimizer must be built after it
    (its parameters become sharded ``DTensor`` parameters)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if config.mixed_precision == "bf16" else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if config.cpu_offload else OffloadPolicy()
    options = {"mesh": mesh, "mp_policy": policy, "offload_policy": offload}
    units = fsdp_modules(model)
    for unit in units:
        fully_shard(unit, **options)
    in_units = {id(p) for unit in units for m in (unit if isinstance(unit, list) else [unit]) for p in m.parameters()}
    replicated = {p for p in model.parameters() if id(p) not in in_units and not p.requires_grad}
    fully_shard(model, ignored_params=replicated, **options)
    for unit in units:
        for m in unit if isinstance(unit, list) else [unit]:
            # free each unit's gathered weights after its forward: calls like the reasoning loop's
            # go to the units directly, never through the root, so the root's rule does not apply
            m.set_reshard_after_forward(True, recurse=False)
    # The root must know every unit before any of them runs; the first forward would decide that,
    # but Stage 3 (and validation) enter units directly, so it is settled here, once.
    model._get_fsdp_state()._lazy_init()
    for p in replicated:  # the replicated frozen parts compute where the gathered units do
        p.data = p.data.to(accelerator.device)


def prepare_for_training(accelerator, model, config, *, param_groups, total_steps: int, wrap=None):
    """The model, optimizer and schedule of a run, spread over the processes: FSDP2 (``shard_model``,
    then AdamW on the shards) or accelerate's DDP. ``param_groups(model)`` gives AdamW's parameters
    (called after sharding); ``wrap(model)`` is what forward and backward go through (Stage 3's
    ``Policy``; default the model). Returns ``(trained, optimizer, scheduler, warmup_steps)``."""
    wrap = wrap or (lambda m: m)
    if accelerator.is_main_process:
        say_if_single_process(config, accelerator)
    if uses_fsdp(config, accelerator):
        shard_model(model, config, accelerator)
        optimizer, scheduler, warmup = adamw_with_schedule(param_groups(model), config.optim, total_steps)
        trained = wrap(model)
        if config.mixed_precision == "bf16":  # what accelerate's prepare gives a DDP model
            trained.forward = functools.partial(_autocast_call, trained.forward, accelerator)
        return trained, accelerator.prepare(optimizer), scheduler, warmup
    optimizer, scheduler, warmup = adamw_with_schedule(param_groups(model), config.optim, total_steps)
    trained, optimizer = accelerator.prepare(wrap(model), optimizer)
    return trained, optimizer, scheduler, warmup


def _autocast_call(forward, accelerator, *args, **kwargs):
    with accelerator.autocast():
        return forward(*args, **kwargs)


@contextmanager
def gathered(model):
    """No-grad work that the processes do unevenly (Stage 3's rollouts, whose decodes end at
    different lengths; Stage 2's pass 1, which runs only for the samples that segment; validation on
    the main process): under FSDP2 every unit is gathered up front, on every process in the same
    order, and kept for the whole block, so the block itself runs no collective (each process holds
    the full model in the compute dtype for its length); resharded at the end. A no-op under DDP."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        if m is not model:
            m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            if m is not model:
                m.set_reshard_after_forward(True, recurse=False)
        # Reshards every unit and forgets the order in which the block's forwards ran: FSDP2 records
        # it to prefetch in the next backward, and the processes ran different forwards here, so
        # they would prefetch different units and wait on each other. Gradients already reduced
        # (earlier micro-steps of an accumulation) stay.
        model.reset_iter_state()


def full_model(accelerator, model, rebuild):
    """The trained model as one plain module on the main process (None on the others): ``model``
    itself under DDP; under FSDP2 its full weights, gathered to the main process's CPU (a collective:
    every process calls this), loaded into ``rebuild()`` (the run's starting model, built and made
    trainable as the run built it), so the model folder is the unsharded one of any run."""
    if not runs.is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not accelerator.is_main_process:
        return None
    plain = rebuild()
    plain.load_state_dict(full)
    return plain
