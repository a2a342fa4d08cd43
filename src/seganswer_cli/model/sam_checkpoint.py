"""SAM 2.1 from Meta's own checkpoint files (``sam2.1_hiera_large.pt`` + ``sam2.1_hiera_l.yaml``,
what the SAM 2 repository distributes), converted to transformers' ``Sam2Model``.

Meta's checkpoint is ``{"model": state_dict}`` of its ``SAM2Base`` (image encoder, prompt encoder,
mask decoder, and the video model's memory modules); its yaml is the Hydra config that builds it.
Conversion reads the image-model part of the yaml into a ``Sam2Config`` (Meta's defaults fill what
the yaml leaves out, as Hydra would), renames the weights to ``Sam2Model``'s names, and drops the
video-only weights (memory attention and encoder, object pointers), which ``Sam2Model`` does not
have. The renaming follows transformers' own conversion script for SAM 2
(``models/sam2/convert_sam2_to_hf.py``, ``replace_keys``); ``tests/model/test_sam_checkpoint.py``
checks it on the key names of a tiny ``SAM2Base`` built by Meta's code.

A yaml next to the checkpoint is used when present: with the checkpoint's own name (``x.pt`` +
``x.yaml``) or Meta's short name (``sam2.1_hiera_l.yaml`` beside ``sam2.1_hiera_large.pt``).
Without one, the four published image encoders (``sam2.1_hiera_{tiny,small,base_plus,large}.pt``,
and SAM 2.0's ``sam2_hiera_*``) are recognised by file name.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from seganswer_cli.errors import ModelFolderError

#: Checkpoint files of this kind are Meta's (a transformers folder is a directory).
CHECKPOINT_SUFFIXES = (".pt", ".pth")

#: Meta's ``Hiera`` defaults (``sam2/modeling/backbones/hieradet.py``): what a yaml leaves out.
HIERA_DEFAULTS = dict(
    embed_dim=96, num_heads=1, q_pool=3, q_stride=[2, 2], stages=[2, 3, 16, 3], dim_mul=2.0, head_mul=2.0,
    window_pos_embed_bkg_spatial_size=[14, 14], window_spec=[8, 4, 14, 7], global_att_blocks=[12, 16, 20],
    mlp_ratio=4.0,
)

#: The trunk section of the published yamls, by the checkpoint's size name; the rest of each
#: yaml (neck of 256 channels, 1024-px input, ``scalp: 1``) is the same for all four.
PUBLISHED_TRUNKS = {
    "hiera_tiny": dict(embed_dim=96, num_heads=1, stages=[1, 2, 7, 2], global_att_blocks=[5, 7, 9],
                       window_pos_embed_bkg_spatial_size=[7, 7]),
    "hiera_small": dict(embed_dim=96, num_heads=1, stages=[1, 2, 11, 2], global_att_blocks=[7, 10, 13],
                        window_pos_embed_bkg_spatial_size=[7, 7]),
    "hiera_base_plus": dict(embed_dim=112, num_heads=2),
    "hiera_large": dict(embed_dim=144, num_heads=2, stages=[2, 6, 36, 4], global_att_blocks=[23, 33, 43],
                        window_pos_embed_bkg_spatial_size=[7, 7], window_spec=[8, 4, 16, 8]),
}
#: Meta's yaml file name for each size (``configs/sam2.1/sam2.1_hiera_l.yaml`` and so on).
YAML_SHORT_NAMES = {"hiera_tiny": "hiera_t", "hiera_small": "hiera_s", "hiera_base_plus": "hiera_b+",
                    "hiera_large": "hiera_l"}

#: Weights of SAM 2's video model (memory, object pointers, occlusion): not part of ``Sam2Model``.
VIDEO_ONLY = re.compile(
    r"^(memory_attention|memory_encoder|mask_downsample|obj_ptr_proj|obj_ptr_tpos_proj)\."
    r"|^(maskmem_tpos_enc|no_mem_pos_enc|no_obj_ptr|no_obj_embed_spatial)$"
)

#: Meta name -> ``Sam2Model`` name, applied in order, each to the whole key (regular expressions).
RENAMES: list[tuple[str, str]] = [
    # the image encoder: Hiera trunk and FPN neck
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"(backbone\.blocks\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"(backbone\.blocks\.\d+\.mlp)\.layers\.0\.", r"\1.proj_in."),
    (r"(backbone\.blocks\.\d+\.mlp)\.layers\.1\.", r"\1.proj_out."),
    # the prompt encoder
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),  # stacked into one matrix below
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    # the mask decoder: two-way transformer, upscaling, hypernetwork and head MLPs
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"\.out_proj\.", ".o_proj."),
    (r"(transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"(transformer\.layers\.\d+\.mlp)\.layers\.0\.", r"\1.proj_in."),
    (r"(transformer\.layers\.\d+\.mlp)\.layers\.1\.", r"\1.proj_out."),
    (r"transformer\.norm_final_attn\.", "transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    # three-layer MLPs: first, middle, last -> proj_in, layers.0, proj_out
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.0\.", r"\1.proj_in."),
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.1\.", r"\1.layers.0."),
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.2\.", r"\1.proj_out."),
    # the no-memory embedding added to a single image's features
    (r"^no_mem_embed$", "no_memory_embedding"),
]


def hf_key(meta_key: str) -> str | None:
    """``Sam2Model``'s name of one of Meta's ``SAM2Base`` weights; None for a video-only weight.

    >>> hf_key("image_encoder.trunk.blocks.0.mlp.layers.1.weight")
    'vision_encoder.backbone.blocks.0.mlp.proj_out.weight'
    >>> hf_key("sam_mask_decoder.iou_prediction_head.layers.1.bias")
    'mask_decoder.iou_prediction_head.layers.0.bias'
    >>> hf_key("memory_encoder.out_proj.weight") is None
    True
    """
    if VIDEO_ONLY.search(meta_key):
        return None
    key = meta_key
    for pattern, replacement in RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_state_dict(meta_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's ``SAM2Base`` state dict -> ``Sam2Model``'s, video-only weights dropped.

    Meta keeps the four point-type embeddings as four ``(1, 256)`` embeddings and one random
    Fourier matrix for prompts and image positions; ``Sam2Model`` stacks the first into one
    ``(4, 256)`` matrix and holds the second twice (prompt encoder and image-wide encoding).
    """
    state: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for meta_key, value in meta_state.items():
        key = hf_key(meta_key)
        if key is None:
            continue
        point = re.fullmatch(r"prompt_encoder\.point_embed\.(\d+)\.weight", key)
        if point:
            points[int(point.group(1))] = value
            continue
        state[key] = value
    if points:
        state["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)])  # (4, 256)
    pe = state.get("prompt_encoder.shared_embedding.positional_embedding")
    if pe is not None:
        state["shared_image_embedding.positional_embedding"] = pe
    return state


def _section(d: dict, key: str, where: str) -> dict:
    value = d.get(key) or {}
    if not isinstance(value, dict):
        raise ModelFolderError(f"{where}: {key} is not a mapping")
    return value


def sam2_config(model_section: dict, *, where: str = "the SAM 2 config"):
    """``Sam2Config`` of the image model described by the ``model:`` section of Meta's yaml."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    encoder = _section(model_section, "image_encoder", where)
    trunk = {**HIERA_DEFAULTS, **{k: v for k, v in _section(encoder, "trunk", where).items() if k != "_target_"}}
    neck = _section(encoder, "neck", where)
    image_size = int(model_section.get("image_size", 512))  # SAM2Base's default; every published yaml says 1024
    if int(encoder.get("scalp", 0)) != 1:
        raise ModelFolderError(f"{where}: image_encoder.scalp must be 1 (three feature levels), as in every published SAM 2.1")
    for flag in ("use_high_res_features_in_sam", "pred_obj_scores", "pred_obj_scores_mlp"):
        if not model_section.get(flag, False):
            raise ModelFolderError(f"{where}: {flag} must be true for transformers' Sam2Model, as in every published SAM 2.1")
    if neck.get("fpn_interp_model", "bilinear") != "nearest":
        raise ModelFolderError(f"{where}: image_encoder.neck.fpn_interp_model must be nearest, as in every published SAM 2.1")
    if image_size % 32:
        raise ModelFolderError(f"{where}: image_size must be a multiple of 32, got {image_size}")

    stages = [int(n) for n in trunk["stages"]]
    embed_dims = [int(trunk["embed_dim"] * trunk["dim_mul"] ** i) for i in range(len(stages))]
    heads = [int(trunk["num_heads"] * trunk["head_mul"] ** i) for i in range(len(stages))]
    d_model = int(neck.get("d_model", 256))
    backbone = Sam2HieraDetConfig(
        hidden_size=int(trunk["embed_dim"]),
        num_attention_heads=int(trunk["num_heads"]),
        image_size=[image_size, image_size],
        blocks_per_stage=stages,
        embed_dim_per_stage=embed_dims,
        num_attention_heads_per_stage=heads,
        num_query_pool_stages=int(trunk["q_pool"]),
        query_stride=[int(s) for s in trunk["q_stride"]],
        window_positional_embedding_background_size=[int(s) for s in trunk["window_pos_embed_bkg_spatial_size"]],
        window_size_per_stage=[int(s) for s in trunk["window_spec"]],
        global_attention_blocks=[int(b) for b in trunk["global_att_blocks"]],
        mlp_ratio=float(trunk["mlp_ratio"]),
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[int(c) for c in neck.get("backbone_channel_list", embed_dims[::-1])],
        backbone_feature_sizes=[[image_size // 4] * 2, [image_size // 8] * 2, [image_size // 16] * 2],
        fpn_hidden_size=d_model,
        fpn_kernel_size=int(neck.get("kernel_size", 1)),
        fpn_stride=int(neck.get("stride", 1)),
        fpn_padding=int(neck.get("padding", 0)),
        fpn_top_down_levels=[int(level) for level in neck.get("fpn_top_down_levels") or [0, 1, 2, 3]],
    )
    # SAM2Base builds its prompt encoder and mask decoder with fixed sizes (16-px image patches,
    # 16 mask channels, a 2-layer two-way transformer of width d_model, MLP 2048, 8 heads).
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=d_model, image_size=image_size, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=d_model, mlp_dim=2048, num_hidden_layers=2,
                                                  num_attention_heads=8, iou_head_depth=3, iou_head_hidden_dim=256),
    )
    config.architectures = ["Sam2Model"]
    return config


def read_meta_yaml(path: Path) -> dict:
    """The ``model:`` section of one of Meta's SAM 2 yamls."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ModelFolderError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or "image_encoder" not in model:
        raise ModelFolderError(f"{path} is not a SAM 2 config (no model.image_encoder section)")
    return model


def published_section(checkpoint: Path) -> dict | None:
    """The image-model part of the published yaml of ``checkpoint``, known by its file name."""
    match = re.fullmatch(r"sam2(?:\.1)?_(hiera_(?:tiny|small|base_plus|large))", checkpoint.stem)
    if not match:
        return None
    trunk = PUBLISHED_TRUNKS[match.group(1)]
    embed = trunk["embed_dim"]
    return dict(
        image_size=1024,
        use_high_res_features_in_sam=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
        image_encoder=dict(scalp=1, trunk=trunk, neck=dict(
            d_model=256, backbone_channel_list=[8 * embed, 4 * embed, 2 * embed, embed],
            fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")),
    )


def find_config(checkpoint: Path) -> tuple[dict, str]:
    """The yaml section for ``checkpoint`` and where it came from: a yaml beside it with its own name
    (``x.pt``, ``x.yaml``) or Meta's short name (``sam2.1_hiera_l.yaml``) when there is one, else the
    published architecture its file name names."""
    if checkpoint.with_suffix(".yaml").is_file():
        return read_meta_yaml(checkpoint.with_suffix(".yaml")), str(checkpoint.with_suffix(".yaml"))
    size = re.fullmatch(r"(sam2(?:\.1)?)_(hiera_\w+)", checkpoint.stem)
    if size and size.group(2) in YAML_SHORT_NAMES:
        beside = checkpoint.with_name(f"{size.group(1)}_{YAML_SHORT_NAMES[size.group(2)]}.yaml")
        if beside.is_file():
            return read_meta_yaml(beside), str(beside)
    section = published_section(checkpoint)
    if section is None:
        raise ModelFolderError(
            f"{checkpoint}: not a published SAM 2.1 file name; give its yaml "
            "(seganswer model convert-sam CHECKPOINT --config sam2.1_hiera_l.yaml --out DIR)"
        )
    return section, f"the published {checkpoint.stem} architecture"


def read_meta_checkpoint(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The state dict inside one of Meta's SAM 2 checkpoint files (``{"model": state_dict}``)."""
    import pickle

    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ModelFolderError(f"{checkpoint} is not a SAM 2 checkpoint (cannot read it: {reason})") from None
    state = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.trunk.") for k in state):
        raise ModelFolderError(
            f"{checkpoint} is not a SAM 2 checkpoint (Meta's files hold {{'model': state_dict}} with image_encoder.trunk.* weights)"
        )
    return state


def load_meta_sam(checkpoint: str | Path, config: str | Path | None = None, *, dtype: torch.dtype | None = None):
    """``Sam2Model`` with the weights of Meta's ``checkpoint``, built from its yaml ``config``
    (default: ``find_config``). A checkpoint of another size than the config names both files."""
    from transformers import Sam2Model

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ModelFolderError(f"SAM 2 checkpoint not found: {checkpoint}")
    state = convert_state_dict(read_meta_checkpoint(checkpoint))
    if config is None:
        section, source = find_config(checkpoint)
    else:
        section, source = read_meta_yaml(Path(config)), str(config)
    sam_config = sam2_config(section, where=source)
    sam = Sam2Model(sam_config)
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected.keys() & state.keys() if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        if wrong:
            k = sorted(wrong)[0]
            detail = f"{k} is {tuple(state[k].shape)} in the checkpoint, {tuple(expected[k].shape)} in the config"
        else:
            k = (missing or unexpected)[0]
            detail = f"{len(missing)} weight(s) missing (e.g. {k})" if missing else f"{len(unexpected)} unexpected weight(s) (e.g. {k})"
        raise ModelFolderError(f"{checkpoint} does not match {source}: {detail}; is it another size of SAM 2?")
    sam.load_state_dict(state)
    if dtype is not None:
        sam.to(dtype)
    return sam.eval()


def is_meta_checkpoint(path: str) -> bool:
    """True when ``path`` names a checkpoint file (Meta's layout) rather than a transformers folder or hub id."""
    return Path(path).suffix in CHECKPOINT_SUFFIXES


def convert_checkpoint(checkpoint: str | Path, out: str | Path, config: str | Path | None = None) -> Path:
    """Write Meta's ``checkpoint`` as a transformers ``Sam2Model`` folder ``out`` (``config.json``
    + ``model.safetensors``), which ``--sam out`` and ``Sam2Model.from_pretrained`` load."""
    sam = load_meta_sam(checkpoint, config)
    out = Path(out)
    sam.save_pretrained(out)
    return out
