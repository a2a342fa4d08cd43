"""The MLLMs seganswer runs on, and the one place where they differ.

| backbone | transformers class | one LLM token | M-RoPE over ``(t, h, w)`` | the vision tower gives |
| --- | --- | --- | --- | --- |
| ``qwen2.5-vl`` (the paper's) | ``Qwen2_5_VLForConditionalGeneration`` | 2x2 patches of 14 px: 28 px | sections in blocks ``[t.. h.. w..]`` | the merged cells' features |
| ``qwen3-vl`` | ``Qwen3VLForConditionalGeneration`` | 2x2 patches of 16 px: 32 px | sections interleaved ``[t h w t h w ..]`` | the same, plus DeepStack features |

What the two share is written once, elsewhere: an image is ``<|vision_start|>``, one
``<|image_pad|>`` per merged cell in row-major order, ``<|vision_end|>`` (``sequence.py``); a cell
``(r, c)`` of an image starting at position ``p`` sits at ``(p, p + r, p + c)`` and the text after
the image continues at ``p + max(rows, cols)``: both backbones' ``get_rope_index`` lay an image out
so (``tests/model/test_rope_anchors.py`` checks the encoder against each). How the three axes share
the rotary frequencies (blocks or interleaved) is inside each model's rotary embedding, which takes
the same ``(3, B, S)`` positions; real-valued ones included.

DeepStack (Qwen3-VL): a few vision blocks (``vision_config.deepstack_visual_indexes``) each give,
through their own merger, one more feature per merged cell; the ``k``-th is added to the hidden
states of the visual tokens after decoder layer ``k``. A sparse segmented turn keeps, of each
level, exactly the kept cells' features (``VisualFeatures.kept``), so every kept token carries its
own cell's features into the early layers, as in the dense image, and nothing of a dropped cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seganswer_cli.errors import ModelFolderError, UsageError


@dataclass(frozen=True)
class Backbone:
    """One MLLM family: its transformers classes and the settings of its tiny stand-in."""

    name: str
    """The name presets use (``Preset.backbone``)."""
    title: str
    model_type: str
    """``config.json``'s ``model_type``."""
    model_class: str
    config_class: str
    processor_class: str
    video_processor: tuple[str, str]
    """Module and class of the video processor its processor is saved with (images only are used)."""
    patch_size: int
    """Pixels of one vision patch (2x2 patches make one LLM token)."""
    image_processor: dict
    """What its published ``preprocessor_config.json`` sets beyond the defaults of transformers'
    ``Qwen2VLImageProcessor`` (which both use); the tiny stand-in's image processor takes them."""
    mrope_interleaved: bool
    """The rotary frequencies alternate t, h, w (Qwen3-VL) instead of three blocks (Qwen2.5-VL)."""
    deepstack: bool
    """Visual features are also added to the first decoder layers' hidden states (DeepStack)."""

    @property
    def cell(self) -> int:
        """Pixels on a side of the square one LLM token covers."""
        return 2 * self.patch_size

    def classes(self):
        """``(model class, config class)`` from transformers."""
        import transformers

        return getattr(transformers, self.model_class), getattr(transformers, self.config_class)


BACKBONES: dict[str, Backbone] = {
    "qwen2.5-vl": Backbone(
        name="qwen2.5-vl", title="Qwen2.5-VL", model_type="qwen2_5_vl",
        model_class="Qwen2_5_VLForConditionalGeneration", config_class="Qwen2_5_VLConfig",
        processor_class="Qwen2_5_VLProcessor",
        video_processor=("transformers.models.qwen2_vl.video_processing_qwen2_vl", "Qwen2VLVideoProcessor"),
        patch_size=14, image_processor={}, mrope_interleaved=False, deepstack=False,
    ),
    "qwen3-vl": Backbone(
        name="qwen3-vl", title="Qwen3-VL", model_type="qwen3_vl",
        model_class="Qwen3VLForConditionalGeneration", config_class="Qwen3VLConfig",
        processor_class="Qwen3VLProcessor",
        video_processor=("transformers.models.qwen3_vl.video_processing_qwen3_vl", "Qwen3VLVideoProcessor"),
        patch_size=16, image_processor={"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
        mrope_interleaved=True, deepstack=True,
    ),
}


def supported() -> str:
    """The supported architectures, for error messages: ``Qwen2.5-VL (qwen2_5_vl), Qwen3-VL (qwen3_vl)``."""
    return ", ".join(f"{b.title} ({b.model_type})" for b in BACKBONES.values())


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UsageError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}") from None


def backbone_for(model_type: object, source: object) -> Backbone:
    """The backbone of a configuration whose ``model_type`` is ``model_type``; any other architecture
    is refused in one line naming ``source`` (a ``config.json``) and the supported ones."""
    for backbone in BACKBONES.values():
        if model_type == backbone.model_type:
            return backbone
    raise ModelFolderError(f"{source} describes a {model_type!r} model, which seganswer does not run; "
                           f"supported MLLMs: {supported()}")


def backbone_of(mllm) -> Backbone:
    """The backbone of a built MLLM."""
    return backbone_for(mllm.config.model_type, type(mllm).__name__)


@dataclass
class VisualFeatures:
    """The vision tower's output for several images, per image (row-major over its merged cells)."""

    tokens: list[torch.Tensor]
    """Per image ``(cells, D)``: what fills its ``<|image_pad|>`` tokens."""
    deepstack: list[list[torch.Tensor]] | None
    """Per DeepStack level, per image ``(cells, D)`` (Qwen3-VL); None for a backbone without."""

    def kept(self, keeps: list[torch.Tensor | None]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The features of the kept cells of every image, in order: ``(K, D)`` and, per DeepStack
        level, ``(K, D)``. ``keeps[i]`` indexes image ``i``'s cells (None: all of them)."""

        def pick(per_image: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([f if k is None else f[k.to(f.device)] for f, k in zip(per_image, keeps, strict=True)])

        return pick(self.tokens), None if self.deepstack is None else [pick(level) for level in self.deepstack]


def encode_images(mllm, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> VisualFeatures:
    """Run the vision tower on the patch rows of several images (``grid_thw``: ``(n_images, 3)``)."""
    out = mllm.model.get_image_features(pixel_values, grid_thw, return_dict=True)
    levels = getattr(out, "deepstack_features", None)
    return VisualFeatures(list(out.pooler_output), [list(level) for level in levels] if levels else None)


@dataclass
class DecoderInputs:
    """What the decoder stack reads: the input embeddings and, for DeepStack, what its first layers add."""

    embeds: torch.Tensor
    """``(B, S, D)``: text embeddings with every visual slot filled by its cells' features."""
    visual_mask: torch.Tensor | None = None
    """``(B, S)`` bool: the ``<|image_pad|>`` tokens, whose hidden states DeepStack adds to."""
    deepstack: list[torch.Tensor] | None = None
    """Per DeepStack level ``(visual tokens, D)``, in the order of ``visual_mask``'s True entries."""

    def decoder_kwargs(self) -> dict:
        """The keyword arguments of the language model's forward that carry DeepStack (none without)."""
        if self.deepstack is None:
            return {}
        return {"visual_pos_masks": self.visual_mask, "deepstack_visual_embeds": self.deepstack}
