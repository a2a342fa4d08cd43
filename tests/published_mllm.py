"""Shrunk random-weight MLLM folders in the published layout of ``Qwen/Qwen2.5-VL-7B-Instruct``.

``write_published_mllm(folder)`` writes what a user downloads: ``config.json`` (bf16, as published),
``model.safetensors``, ``generation_config.json`` with its own sampling settings, the tokenizer
files, the chat template and the processor settings, with an embedding matrix that has more rows
than the tokenizer has tokens (the published 152064 rows for 151665 tokens), so ``<|seg|>`` lands
on a spare row.

Two sources:
- the real published non-weight files, when ``REAL_DIR`` holds them (``REAL_FILES``; see
  tests/fixtures/qwen2.5-vl-7b-instruct/README.md): tokenizer, chat template, processor, generation config
  and special ids as published, ``config.json`` shrunk (widths, depths, the M-RoPE sections to the
  shrunk head dim) with ``vocab_size`` kept at 152064;
- otherwise a stand-in built here: the tiny tokenizer (488 tokens with ``<|seg|>``) in 512 rows,
  a ``generation_config.json`` whose settings differ from plain greedy decoding.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
#: Where the published files are looked for: ``$SEGANSWER_QWEN25_VL_FILES``, else the shared folder
#: beside the checkout (the files are public data kept outside the repository), else the fixture folder.
REAL_DIR = next(
    (p for p in (Path(os.environ.get("SEGANSWER_QWEN25_VL_FILES", "/nonexistent")),
                 Path(__file__).resolve().parents[2] / "shared" / "published" / "Qwen2.5-VL-7B-Instruct",
                 FIXTURES / "qwen2.5-vl-7b-instruct") if (p / "config.json").is_file()),
    FIXTURES / "qwen2.5-vl-7b-instruct",
)
#: The published non-weight files a real-file fixture needs (``tokenizer.json`` is optional:
#: transformers builds it from ``vocab.json`` + ``merges.txt``).
REAL_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
              "vocab.json", "merges.txt")
OPTIONAL_REAL_FILES = ("tokenizer.json", "chat_template.json", "video_preprocessor_config.json")

#: Stand-in: rows of the embedding for the tiny tokenizer's 487 tokens (488 with <|seg|>).
STANDIN_ROWS = 512
#: Stand-in generation settings (values of the kind the published file sets, chosen to differ from greedy).
STANDIN_GENERATION = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}


def real_files_present() -> bool:
    return all((REAL_DIR / name).is_file() for name in REAL_FILES)


def shrink(config) -> None:
    """Shrink a ``Qwen2_5_VLConfig`` in place: 2 text layers of width 64 (head dim 16, M-RoPE
    sections [2, 3, 3] of its 8 frequencies, as [16, 24, 24] of the 7B's 64), a 2-block vision
    tower of width 32. Vocabulary size and special ids stay."""
    text = config.text_config
    text.hidden_size, text.intermediate_size = 64, 128
    text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads = 2, 4, 2
    if hasattr(text, "head_dim"):
        text.head_dim = 16
    text.max_window_layers = 2
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[:2]
    rope = dict(text.rope_parameters or {})
    rope["mrope_section"] = [2, 3, 3]
    text.rope_parameters = rope
    vision = config.vision_config
    vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads = 2, 32, 64, 2
    vision.out_hidden_size = 64
    vision.fullatt_block_indexes = [1]


def write_published_mllm(folder: Path, *, real: bool | None = None, seed: int = 0) -> Path:
    """Write a shrunk random-weight Qwen2.5-VL folder in the published layout; returns ``folder``.

    ``real``: build from the published files (None: when present)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    real = real_files_present() if real is None else real
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if real:
        config = Qwen2_5_VLConfig.from_pretrained(REAL_DIR)
        shrink(config)
    else:
        from seganswer_cli.model import tokens
        from seganswer_cli.model.mllm import build_tiny_processor

        processor = build_tiny_processor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
        ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in tokens.QWEN_SPECIAL_TOKENS}
        config = Qwen2_5_VLConfig(
            text_config=dict(vocab_size=STANDIN_ROWS, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                             tie_word_embeddings=False, bos_token_id=ids[tokens.END_OF_TEXT],
                             eos_token_id=ids[tokens.IM_END], pad_token_id=ids[tokens.END_OF_TEXT]),
            vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112),
            image_token_id=ids[tokens.IMAGE_PAD], video_token_id=ids[tokens.VIDEO_PAD],
            vision_start_token_id=ids[tokens.VISION_START], vision_end_token_id=ids[tokens.VISION_END],
            tie_word_embeddings=False,
        )
        shrink(config)
    torch.manual_seed(seed)
    mllm = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)  # published weights are bf16
    mllm.save_pretrained(folder)
    if real:
        for name in REAL_FILES[1:] + OPTIONAL_REAL_FILES:
            if (REAL_DIR / name).is_file():
                shutil.copy(REAL_DIR / name, folder / name)
    else:
        processor.save_pretrained(folder)
        bos, eos = config.text_config.bos_token_id, config.text_config.eos_token_id
        GenerationConfig(bos_token_id=bos, eos_token_id=[eos, bos], pad_token_id=bos,
                         **STANDIN_GENERATION).save_pretrained(folder)
    return folder


def embedding_rows(folder: Path) -> int:
    return json.loads((Path(folder) / "config.json").read_text())["text_config"]["vocab_size"]


def write_published_qwen3_mllm(folder: Path, *, seed: int = 0) -> Path:
    """Write a shrunk random-weight Qwen3-VL folder in the layout of ``Qwen/Qwen3-VL-8B-Instruct``;
    returns ``folder``. No public copy of its non-weight files is at hand, so it is a stand-in: the
    tiny tokenizer (no ``<|seg|>``) in 512 rows, Qwen3-VL's processor (16-px patches, mean and std
    0.5, its video processor), ``config.json`` in the published structure (``rope_scaling`` with
    ``mrope_interleaved``, ``rope_theta`` 5e6, DeepStack taps, untied head, bf16 weights) at toy
    width: 3 text layers of width 64 (M-RoPE sections [4, 2, 2] of 8, as [24, 20, 20] of the 8B's
    64), a 3-block vision tower of width 32 whose blocks 0 and 1 feed DeepStack."""
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from seganswer_cli.model import tokens
    from seganswer_cli.model.mllm import build_tiny_processor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    processor = build_tiny_processor(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 64, backbone="qwen3-vl")
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in tokens.QWEN_SPECIAL_TOKENS}
    bos, eos = ids[tokens.END_OF_TEXT], ids[tokens.IM_END]
    config = Qwen3VLConfig.from_dict({
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "text_config": {"model_type": "qwen3_vl_text", "vocab_size": STANDIN_ROWS, "hidden_size": 64,
                        "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 8192,
                        "rope_theta": 5000000, "rope_scaling": {"mrope_interleaved": True, "mrope_section": [4, 2, 2],
                                                                "rope_type": "default"},
                        "tie_word_embeddings": False, "bos_token_id": bos, "eos_token_id": eos, "dtype": "bfloat16"},
        "vision_config": {"model_type": "qwen3_vl", "depth": 3, "hidden_size": 32, "intermediate_size": 64,
                          "num_heads": 2, "out_hidden_size": 64, "patch_size": 16, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
        "image_token_id": ids[tokens.IMAGE_PAD], "video_token_id": ids[tokens.VIDEO_PAD],
        "vision_start_token_id": ids[tokens.VISION_START], "vision_end_token_id": ids[tokens.VISION_END],
        "tie_word_embeddings": False,
    })
    torch.manual_seed(seed)
    Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(folder)
    processor.save_pretrained(folder)
    GenerationConfig(bos_token_id=bos, eos_token_id=[eos, bos], pad_token_id=bos, **STANDIN_GENERATION).save_pretrained(folder)
    return folder
