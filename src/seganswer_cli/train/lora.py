"""LoRA on the language model (paper §3.1, Stage 1's ``lora`` phase): applied before training,
folded into the weights after it (the run's end and ``seganswer merge-lora``).

Which layers: the language model's decoder linear layers named in ``Stage1Config.lora``
(q/k/v/o/gate/up/down by default); the vision tower's own q/k/v and MLP layers stay untouched. With
``train_seg_rows`` the ``<|seg|>`` rows of the input embedding and LM head train as well (peft
trainable tokens), every other row stays frozen.
"""

from __future__ import annotations

import warnings
from typing import Any


def apply_lora(model, lora) -> Any:
    """peft LoRA on ``model.mllm``'s decoder layers, in place, with ``lora``'s rank, alpha, dropout
    and target modules. Returns the peft model (``merge_lora`` folds it back)."""
    from peft import LoraConfig, get_peft_model

    names = "|".join(sorted(lora.target_modules))
    # module names look like model.language_model.layers.3.self_attn.q_proj: the vision tower
    # (model.visual.blocks...) has its own q/k/v and MLP layers, which stay untouched
    pattern = rf".*\.language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"
    seg = model.token_ids.seg
    peft_config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=pattern, bias="none",
        trainable_token_indices={"embed_tokens": [seg], "lm_head": [seg]} if lora.train_seg_rows else None,
    )
    with warnings.catch_warnings():
        # peft asks transformers' deprecated `is_gradient_checkpointing` (transformers 5 renamed it)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model.mllm, peft_config)


def merge_lora(model, peft_model) -> None:
    """Fold LoRA (and the trained ``<|seg|>`` rows) into ``model.mllm``'s own weights, in place."""
    merged = peft_model.merge_and_unload()
    if merged is not model.mllm:  # peft unloads in place; keep the attribute pointing at what it returns
        model.mllm = merged
