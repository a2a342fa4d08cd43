"""The multimodal LLM (Qwen2.5-VL or Qwen3-VL, ``backbones``) and its processor, with ``<|seg|>`` added.

Two ways in, one object out (a transformers ``...ForConditionalGeneration`` + its processor):
- ``load_mllm(path_or_hub_id)``: the real path (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``,
  ``Qwen/Qwen3-VL-8B-Instruct`` or a local copy); the folder's ``config.json`` says which backbone;
- ``build_tiny_mllm(...)``: a random-init model of the given backbone at toy width with a
  byte-level BPE tokenizer trained in code, for tests and the shapes-world demo (no download).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from seganswer_cli.errors import ModelFolderError, SegTokenError
from seganswer_cli.model import tokens


@dataclass(frozen=True)
class TokenIds:
    """Ids of the special tokens the model code needs, read from a tokenizer."""

    seg: int
    image_pad: int
    video_pad: int
    vision_start: int
    vision_end: int
    im_start: int
    im_end: int
    end_of_text: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenIds:
        vocab = tokenizer.get_vocab()
        if tokens.SEG_TOKEN not in vocab:
            raise SegTokenError(f"the tokenizer has no {tokens.SEG_TOKEN} token (not a seganswer model)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab[tokens.END_OF_TEXT]
        return cls(
            seg=vocab[tokens.SEG_TOKEN],
            image_pad=vocab[tokens.IMAGE_PAD],
            video_pad=vocab[tokens.VIDEO_PAD],
            vision_start=vocab[tokens.VISION_START],
            vision_end=vocab[tokens.VISION_END],
            im_start=vocab[tokens.IM_START],
            im_end=vocab[tokens.IM_END],
            end_of_text=vocab[tokens.END_OF_TEXT],
            pad=pad,
        )

    @property
    def visual_placeholders(self) -> tuple[int, ...]:
        """Tokens that stand for visual input (``<|image_pad|>``, ``<|vision_start|>``, ...): the
        sequence code places them with their features and positions; the model never generates them."""
        return (self.image_pad, self.video_pad, self.vision_start, self.vision_end)


def add_seg_token(mllm, processor) -> int:
    """Add ``<|seg|>`` to the tokenizer (as a special token), give it embedding rows; return its id.

    The new token's input-embedding and LM-head rows are set to the mean of the rows of the
    tokenizer's existing tokens (ids below ``<|seg|>``'s): it starts as an "average" token instead
    of noise. This holds whatever the vocabulary padding: Qwen2.5-VL-7B-Instruct ships 152064 rows
    for 151665 tokens, so ``<|seg|>`` (id 151665) lands on one of the checkpoint's spare rows, which
    is overwritten (the spare rows' content is untrained and never a starting point); a matrix
    without a spare row is grown by one row first. The mean excludes the spare rows. Idempotent: a
    tokenizer that already has the token is left as it is.
    """
    tokenizer = processor.tokenizer
    if tokens.SEG_TOKEN in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(tokens.SEG_TOKEN)
    tokenizer.add_special_tokens({"additional_special_tokens": [tokens.SEG_TOKEN]}, replace_extra_special_tokens=False)
    seg_id = tokenizer.convert_tokens_to_ids(tokens.SEG_TOKEN)
    if seg_id >= mllm.get_input_embeddings().weight.shape[0]:
        mllm.resize_token_embeddings(seg_id + 1, mean_resizing=False)
    with torch.no_grad():
        emb = mllm.get_input_embeddings().weight  # (rows, D)
        emb[seg_id] = emb[:seg_id].float().mean(0).to(emb.dtype)
        head = mllm.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[seg_id] = head.weight[:seg_id].float().mean(0).to(head.weight.dtype)
    return seg_id


def _chat_template_of(processor) -> str | None:
    return getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)


def load_mllm(path: str, *, dtype: torch.dtype | None = None, attn_implementation: str | None = None):
    """Load the MLLM and its processor from a local folder or a hub id; add ``<|seg|>`` if missing.

    ``sources.local_folder`` finds the folder (a hub id: the local cache, else a download once the
    hub answers) and ``folder_checks.check_mllm_folder`` checks it before anything is built; a
    tokenizer without a chat template is refused too (the model was trained on that layout). Each
    refusal is one line naming the file or the reason.
    """
    from transformers import AutoProcessor

    from seganswer_cli.model.backbones import backbone_for
    from seganswer_cli.model.folder_checks import check_mllm_folder
    from seganswer_cli.model.sources import local_folder

    folder = local_folder(path, "mllm")
    model_class, _ = backbone_for(check_mllm_folder(folder).model_type, folder / "config.json").classes()
    try:
        processor = AutoProcessor.from_pretrained(folder)
        if _chat_template_of(processor) is None:
            raise ModelFolderError(
                f"{path}: the tokenizer has no chat template (chat_template.json, chat_template.jinja or "
                "tokenizer_config.json's chat_template)"
            )
        kwargs = {"dtype": dtype} if dtype is not None else {}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        mllm = model_class.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())  # transformers' messages run over several lines
        raise ModelFolderError(f"cannot load the MLLM from {path}: {reason}") from None
    add_seg_token(mllm, processor)
    return mllm, processor


# -- The tiny model, built in code --------------------------------------------------------------

#: Text the tiny tokenizer's BPE merges are learned from: the prompt templates and the words the
#: shapes world uses. Any other text still encodes (byte-level), only in more tokens.
_TINY_CORPUS_WORDS = (
    "red green blue yellow orange purple pink cyan brown black white gray grey magenta "
    "circle square triangle star hexagon diamond rectangle ellipse cross heart pentagon shape shapes "
    "small smallest large largest big biggest tiny medium left right above below top bottom side "
    "of the a an is it in on to and or what which where colour color object objects image region "
    "option options answer question segment yes no A B C D (A) (B) (C) (D) 0 1 2 3 4 5 6 7 8 9"
)


def _tiny_corpus() -> list[str]:
    lines = [
        tokens.REASONING_INSTRUCTION,
        tokens.SEG_RESPONSE,
        tokens.STAGE1_RESPONSE,
        tokens.stage1_prompt("the red triangle"),
        tokens.answer_response("blue"),
        "What is the colour of the small star? Is the circle on the left or right side of the square?",
        "Answer with the option's letter from the given choices directly.",
        "system user assistant You are a helpful assistant.",
        _TINY_CORPUS_WORDS,
    ]
    return lines * 8


def build_tiny_tokenizer(vocab_size: int = 480):
    """A byte-level BPE tokenizer with Qwen's special tokens, trained here in a few milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    bpe.train_from_iterator(_tiny_corpus(), trainer=trainer)
    # Qwen2Tokenizer takes the merges as (left, right) tuples, in rank order as serialised.
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    vocab = bpe.get_vocab()
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": list(tokens.QWEN_SPECIAL_TOKENS)}, replace_extra_special_tokens=False
    )
    tokenizer.eos_token = tokens.IM_END
    tokenizer.pad_token = tokens.END_OF_TEXT
    tokenizer.chat_template = tokens.CHAT_TEMPLATE
    return tokenizer


#: The pixel budget of a tiny Qwen2.5-VL when its preset does not set one (4 to 64 cells of 28 px).
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 64


def build_tiny_image_processor(*, min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS,
                               backbone: str = "qwen2.5-vl"):
    """The image processor of a tiny model: the backbone's stock one with the given pixel budget."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    from seganswer_cli.model.backbones import get_backbone

    settings = get_backbone(backbone).image_processor
    return Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **settings)


def build_tiny_processor(*, min_pixels: int, max_pixels: int, vocab_size: int = 480, backbone: str = "qwen2.5-vl"):
    """The backbone's stock processor around the tiny tokenizer, with the given pixel budget."""
    import importlib

    import transformers

    from seganswer_cli.model.backbones import get_backbone

    spec = get_backbone(backbone)
    module, name = spec.video_processor
    video_processor = getattr(importlib.import_module(module), name)(
        min_pixels=min_pixels, max_pixels=max_pixels, **spec.image_processor)
    image_processor = build_tiny_image_processor(min_pixels=min_pixels, max_pixels=max_pixels, backbone=backbone)
    return getattr(transformers, spec.processor_class)(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(vocab_size),
        video_processor=video_processor,
        chat_template=tokens.CHAT_TEMPLATE,
    )


def build_tiny_mllm(
    *,
    backbone: str = "qwen2.5-vl",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_depth: int = 2,
    vision_hidden_size: int = 32,
    deepstack_levels: int = 2,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    vocab_size: int = 480,
    seed: int = 0,
):
    """A random-init MLLM of the backbone's real architecture at toy width, with ``<|seg|>`` added.

    ``deepstack_levels`` (Qwen3-VL only): how many vision blocks feed DeepStack, at most one fewer
    than the vision and the decoder depth (the published 8B taps 3 of 27 blocks into 3 of 36 layers).
    """
    from seganswer_cli.model.backbones import get_backbone

    spec = get_backbone(backbone)
    processor = build_tiny_processor(min_pixels=min_pixels, max_pixels=max_pixels, vocab_size=vocab_size,
                                     backbone=backbone)
    tok = processor.tokenizer
    head_dim = hidden_size // num_heads
    ids = {t: tok.convert_tokens_to_ids(t) for t in tokens.QWEN_SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(spec, head_dim)},
        tie_word_embeddings=False,
        bos_token_id=ids[tokens.END_OF_TEXT],
        eos_token_id=ids[tokens.IM_END],
        pad_token_id=ids[tokens.END_OF_TEXT],
    )
    vision = dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2,
                  num_heads=2, out_hidden_size=hidden_size, patch_size=spec.patch_size, spatial_merge_size=2,
                  temporal_patch_size=2)
    if spec.mrope_interleaved:
        text.update(head_dim=head_dim, rope_parameters={**text["rope_parameters"], "mrope_interleaved": True})
    if spec.deepstack:
        levels = max(1, min(deepstack_levels, vision_depth - 1, num_layers - 1))
        vision.update(deepstack_visual_indexes=list(range(levels)), num_position_embeddings=64)
    else:  # Qwen2.5-VL's windowed vision attention, full attention in the last block
        vision.update(window_size=112, fullatt_block_indexes=[vision_depth - 1])
    model_class, config_class = spec.classes()
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids[tokens.IMAGE_PAD],
        video_token_id=ids[tokens.VIDEO_PAD],
        vision_start_token_id=ids[tokens.VISION_START],
        vision_end_token_id=ids[tokens.VISION_END],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    mllm = model_class(config)
    mllm.eval()
    add_seg_token(mllm, processor)
    return mllm, processor


def _mrope_section(backbone, head_dim: int) -> list[int]:
    """How the ``head_dim / 2`` rotary frequencies are shared by ``(t, h, w)``, in the proportions of
    the published models: Qwen2.5-VL-7B gives ``[16, 24, 24]`` of 64 (a quarter to t), Qwen3-VL-8B
    ``[24, 20, 20]`` (5/16 each to h and w, the rest to t; interleaved, t also takes the tail)."""
    half = head_dim // 2
    if backbone.mrope_interleaved:
        section_h = max(1, half * 5 // 16)
        return [half - 2 * section_h, section_h, section_h]
    section_t = max(1, half // 4)
    section_h = (half - section_t) // 2
    return [section_t, section_h, half - section_t - section_h]
