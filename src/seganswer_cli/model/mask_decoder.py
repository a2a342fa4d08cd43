"""SAM 2.1 as the mask decoder of ``<|seg|>`` (transformers' ``Sam2Model``).

The frozen image encoder embeds the image at SAM's own square resolution; the prompt encoder
gives the dense "no mask" embedding and the image-wide positional encoding; the mask decoder
takes the projected ``<|seg|>`` hidden state as its one sparse prompt token and returns low-res
mask logits, the predicted IoU and the object-score logit. ``Sam2Model.forward`` takes no custom
sparse embedding, so this module calls its parts in the same order.

One mask output per prompt (``multimask_output=False``), with SAM's "dynamic multimask via
stability" switched off: that fallback picks among the three multimask tokens, which this model
never trains, and it would make eval-mode masks differ from train-mode masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

#: ImageNet statistics, SAM 2's input normalisation.
SAM_MEAN = (0.485, 0.456, 0.406)
SAM_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageEmbeddings:
    """SAM's image features for a batch of images (the decoder's inputs)."""

    embeddings: torch.Tensor
    """``(B, 256, h, w)`` lowest-resolution features with the no-memory embedding added."""
    high_res: list[torch.Tensor]
    """``[(B, C/8, 4h, 4w), (B, C/4, 2h, 2w)]`` after the decoder's ``conv_s0``/``conv_s1``."""

    def select(self, index: int) -> ImageEmbeddings:
        return ImageEmbeddings(self.embeddings[index : index + 1], [f[index : index + 1] for f in self.high_res])


@dataclass
class MaskPrediction:
    """Decoder outputs for N prompts."""

    low_res_logits: torch.Tensor
    """``(N, 4h, 4w)`` mask logits at a quarter of SAM's input resolution."""
    iou: torch.Tensor
    """``(N,)`` predicted IoU."""
    object_logits: torch.Tensor
    """``(N,)`` object-score logits (> 0: an object is present)."""


class SamMaskDecoder(nn.Module):
    """Wraps ``Sam2Model``: ``encode`` (frozen encoder) and ``decode`` (sparse prompt -> mask)."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam
        self.sam.mask_decoder.dynamic_multimask_via_stability = False
        self.sam.vision_encoder.requires_grad_(False)

    @property
    def image_size(self) -> int:
        return int(self.sam.config.prompt_encoder_config.image_size)

    @property
    def prompt_dim(self) -> int:
        return int(self.sam.config.mask_decoder_config.hidden_size)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Resize each image to SAM's square input (bilinear, antialiased) and normalise: ``(B, 3, S, S)``."""
        from torchvision.transforms.v2 import functional as tvF

        S = self.image_size
        batch = []
        for img in images:
            x = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W)
            x = tvF.resize(x, [S, S], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
            batch.append(x)
        x = torch.stack(batch).float() / 255.0  # (B, 3, S, S)
        mean = torch.tensor(SAM_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(SAM_STD).view(1, 3, 1, 1)
        param = next(self.sam.parameters())
        return ((x - mean) / std).to(device=param.device, dtype=param.dtype)

    def encode(self, pixel_values: torch.Tensor) -> ImageEmbeddings:
        """Image features; the Hiera encoder + FPN run without gradient while frozen (every paper
        stage), the decoder's high-resolution projections (``conv_s0``, ``conv_s1``, trainable) with it."""
        sam = self.sam
        encoder_trains = torch.is_grad_enabled() and any(p.requires_grad for p in sam.vision_encoder.parameters())
        with torch.set_grad_enabled(encoder_trains):
            vision = sam.vision_encoder(pixel_values, return_dict=True)
        fpn = list(vision.fpn_hidden_states)  # [(B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w)]
        s0 = sam.mask_decoder.conv_s0(fpn[0])
        s1 = sam.mask_decoder.conv_s1(fpn[1])
        low = fpn[-1] + sam.no_memory_embedding.view(1, -1, 1, 1)  # (B, 256, h, w)
        return ImageEmbeddings(low, [s0, s1])

    def point_prompts(self, points: torch.Tensor) -> torch.Tensor:
        """SAM 2.1's own sparse prompt of one positive click per object: ``points`` ``(N, 2)`` as
        (x, y) in pixels of SAM's square input -> ``(N, 2, prompt_dim)`` tokens (the click and
        SAM's padding token), for ``decode``."""
        n = points.shape[0]
        labels = torch.ones(1, n, 1, dtype=torch.long, device=points.device)
        sparse, _ = self.sam.prompt_encoder(points.view(1, n, 1, 2), labels, None, None)
        return sparse[0]

    def decode(self, image: ImageEmbeddings, prompts: torch.Tensor) -> MaskPrediction:
        """Masks for N prompts on ONE image. ``prompts``: ``(N, prompt_dim)`` (one token per object,
        the projector's) or ``(N, T, prompt_dim)`` (``point_prompts``)."""
        sam = self.sam
        n = prompts.shape[0]
        if n == 0:
            h, w = image.embeddings.shape[-2:]
            empty = image.embeddings.new_zeros(0)
            return MaskPrediction(image.embeddings.new_zeros(0, 4 * h, 4 * w), empty, empty)
        sparse = prompts.view(1, n, -1, prompts.shape[-1]).to(image.embeddings.dtype)  # (1, N objects, T tokens, 256)
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            1, -1, *image.embeddings.shape[-2:]
        )  # (1, 256, h, w)
        pos = sam.get_image_wide_positional_embeddings().to(image.embeddings.dtype)  # (1, 256, h, w)
        masks, iou, _, obj = sam.mask_decoder(
            image_embeddings=image.embeddings,
            image_positional_embeddings=pos,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            high_resolution_features=image.high_res,
        )
        # masks (1, N, 1, 4h, 4w); iou (1, N, 1); obj (1, N, 1)
        return MaskPrediction(masks[0, :, 0], iou[0, :, 0], obj[0, :, 0])


def upsample_logits(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` logits -> ``(N, H, W)`` by bilinear interpolation (SAM's post-processing)."""
    if low_res.shape[0] == 0:
        return low_res.new_zeros(0, *size)
    return F.interpolate(low_res[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def build_tiny_sam(image_size: int = 128, seed: int = 0, mlp_dim: int = 256):
    """A random-init SAM 2.1 of the real architecture at toy width (~2.7 M parameters).

    ``mlp_dim``: the mask decoder's MLP width (SAM 2.1's own is 2048, which Meta's checkpoint
    layout fixes; 256 keeps the tiny presets small)."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    S = image_size
    if S % 32:
        raise ValueError(f"SAM image size must be a multiple of 32, got {S}")
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        image_size=[S, S],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        global_attention_blocks=[3],  # a global block cannot open a stage
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[S // 4] * 2, [S // 8] * 2, [S // 16] * 2],
        fpn_hidden_size=256,
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(image_size=S),
        mask_decoder_config=Sam2MaskDecoderConfig(mlp_dim=mlp_dim),
    )
    torch.manual_seed(seed)
    return tie_positional_encodings(Sam2Model(config).eval())


def tie_positional_encodings(sam):
    """One random Fourier basis for image positions and prompt points, as in SAM 2.1 (its prompt
    encoder and the image-wide encoding are one layer; a converted checkpoint loads the same matrix
    into both). ``Sam2Model`` draws the two buffers independently, so a model built from random
    weights would encode a click in a basis its image positions do not share and could never learn
    where a click points. Returns ``sam``."""
    with torch.no_grad():
        sam.prompt_encoder.shared_embedding.positional_embedding.copy_(sam.shared_image_embedding.positional_embedding)
    return sam


def load_sam(path: str, *, dtype: torch.dtype | None = None):
    """SAM 2.1 from a local folder or hub id in Hugging Face format (e.g. ``facebook/sam2.1-hiera-large``),
    or from Meta's own checkpoint file (``sam2.1_hiera_large.pt``, converted on load: ``sam_checkpoint``)."""
    from transformers import Sam2Model

    from seganswer_cli.errors import ModelFolderError
    from seganswer_cli.model.folder_checks import check_sam_folder
    from seganswer_cli.model.sam_checkpoint import is_meta_checkpoint, load_meta_sam
    from seganswer_cli.model.sources import local_folder

    if is_meta_checkpoint(path):
        return load_meta_sam(path, dtype=dtype)
    folder = local_folder(path, "sam")
    check_sam_folder(folder)  # config and weight headers, before anything is built
    try:
        kwargs = {"dtype": dtype} if dtype is not None else {}
        return Sam2Model.from_pretrained(folder, **kwargs).eval()
    except OSError as e:
        raise ModelFolderError(f"cannot load SAM 2.1 from {path}: {e}") from None


def image_model_config(config):
    """``config`` (a ``Sam2Config``) as a plain image-model config: ``Sam2Model`` as architecture and
    only the fields ``Sam2Config`` has. The published ``facebook/sam2.1-hiera-*`` configs name
    ``Sam2VideoModel`` and carry the video model's settings (memory, object pointers), which the
    image model ignores; a saved seganswer folder describes the model it holds."""
    from transformers import Sam2Config

    d = config.to_dict()
    clean = Sam2Config(
        vision_config=d["vision_config"],
        prompt_encoder_config=d["prompt_encoder_config"],
        mask_decoder_config=d["mask_decoder_config"],
        initializer_range=d.get("initializer_range", 0.02),
    )
    clean.architectures = ["Sam2Model"]
    return clean
