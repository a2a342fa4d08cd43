"""SAM 2.1 as the mask decoder of ``<|seg|>`` (transformers' ``Sam2Model``).

The frozen image encoder embeds the image at SAM's own square resolution; the prompt encoder
gives the dense "no mask" embedding and the image-wide positional encoding; the mask decoder
takes the projected ``<|seg|>`` hidden state as its one sparse prompt token and returns low-res
mask logits, the predicted IoU and the object-score logit. ``Sam2Model.forward`` takes no custom
sparse embedding, so this module calls its parts in the same order.

One mask output per prompt (``multimask_output=False``), with SAM's "dynamic multimask via
stability" switched off: that fallback picks among the three multimask tokens, which this model
never trains, and it would make eval-mode masks differ from train-mode masks.

Batches: ``encode`` embeds a stack of images in one call and ``decode_batch`` runs the decoder once
for several images with the same number of prompts each (the reasoning loop and ``segment_batch``
decode a whole batch's ``<|seg|>`` states at once). The FPN neck's sine positional encodings, which
depend on nothing but the feature map's shape and which this model never reads (its decoder takes
the image-wide encoding of the prompt encoder's basis), are computed once per shape and broadcast
over the batch (``ShapeCachedPositions``) instead of once per image and call.
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

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def select(self, index: int) -> ImageEmbeddings:
        return ImageEmbeddings(self.embeddings[index : index + 1], [f[index : index + 1] for f in self.high_res])

    def take(self, indices: list[int]) -> ImageEmbeddings:
        """The embeddings of images ``indices``, in that order."""
        if indices == list(range(len(self))):
            return self
        index = torch.tensor(indices, dtype=torch.long, device=self.embeddings.device)
        return ImageEmbeddings(self.embeddings.index_select(0, index), [f.index_select(0, index) for f in self.high_res])

    @staticmethod
    def cat(parts: list[ImageEmbeddings]) -> ImageEmbeddings:
        """The images of ``parts`` one after the other."""
        if len(parts) == 1:
            return parts[0]
        return ImageEmbeddings(torch.cat([p.embeddings for p in parts]),
                               [torch.cat(levels) for levels in zip(*(p.high_res for p in parts))])


@dataclass
class MaskPrediction:
    """Decoder outputs for N prompts."""

    low_res_logits: torch.Tensor
    """``(N, 4h, 4w)`` mask logits at a quarter of SAM's input resolution."""
    iou: torch.Tensor
    """``(N,)`` predicted IoU."""
    object_logits: torch.Tensor
    """``(N,)`` object-score logits (> 0: an object is present)."""


class ShapeCachedPositions(nn.Module):
    """The FPN neck's sine positional encoding, computed once per ``(C, H, W)``, device and dtype and
    expanded over the batch (a view): the values ``Sam2SinePositionEmbedding`` gives, without redoing
    its per-image work at every call (its own cache holds one shape, and the neck asks for four).
    Holds no parameters or buffers, so the state dict is unchanged."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, shape: torch.Size, device, dtype, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:  # a padding mask makes the encoding depend on more than the shape
            return self.inner(shape, device, dtype, mask)
        key = (tuple(shape[1:]), torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = self.inner(torch.Size((1, *shape[1:])), device, dtype)  # (1, C, H, W)
        return self._cache[key].expand(shape[0], *shape[1:])


class SamMaskDecoder(nn.Module):
    """Wraps ``Sam2Model``: ``encode`` (frozen encoder) and ``decode`` (sparse prompt -> mask)."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam
        self.sam.mask_decoder.dynamic_multimask_via_stability = False
        self.sam.vision_encoder.requires_grad_(False)
        neck = self.sam.vision_encoder.neck
        if not isinstance(neck.position_encoding, ShapeCachedPositions):
            neck.position_encoding = ShapeCachedPositions(neck.position_encoding)

    @property
    def encoder_frozen(self) -> bool:
        """No parameter on the way from pixels to ``ImageEmbeddings`` trains (the Hiera encoder, the
        FPN and the decoder's ``conv_s0``/``conv_s1``): embeddings computed without gradient are then
        exactly those a training forward would compute, and can be reused (Stage 2's pass 2)."""
        encode_path = [self.sam.vision_encoder, self.sam.mask_decoder.conv_s0, self.sam.mask_decoder.conv_s1]
        return not any(p.requires_grad for part in encode_path for p in part.parameters())

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
        # Hiera works on (B, H, W, C) maps; fed channels-last pixels, the FPN's and the decoder's 1x1 convs
        # get channels-last maps too, which batches of images convolve several times faster on CPU (the
        # same values: one summation per output either way)
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
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
        return self.decode_batch(image, prompts[None])[0]

    def decode_batch(self, images: ImageEmbeddings, prompts: torch.Tensor) -> list[MaskPrediction]:
        """Masks for N prompts on each of B images in one decoder call, one prediction per image.
        ``prompts``: ``(B, N, prompt_dim)`` or ``(B, N, T, prompt_dim)``."""
        sam = self.sam
        B, n = prompts.shape[:2]
        if len(images) != B:
            raise ValueError(f"{B} rows of prompts for {len(images)} images")
        h, w = images.embeddings.shape[-2:]
        if n == 0:
            empty = images.embeddings.new_zeros(0)
            return [MaskPrediction(images.embeddings.new_zeros(0, 4 * h, 4 * w), empty, empty) for _ in range(B)]
        sparse = prompts.reshape(B, n, -1, prompts.shape[-1]).to(images.embeddings.dtype)  # (B, N objects, T tokens, 256)
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)  # (1, 256, h, w)
        pos = sam.get_image_wide_positional_embeddings().to(images.embeddings.dtype)  # (1, 256, h, w)
        masks, iou, _, obj = sam.mask_decoder(
            image_embeddings=images.embeddings,
            image_positional_embeddings=pos.expand(B, -1, -1, -1),  # the decoder repeats it per object
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            high_resolution_features=images.high_res,
        )
        # masks (B, N, 1, 4h, 4w); iou (B, N, 1); obj (B, N, 1)
        return [MaskPrediction(masks[b, :, 0], iou[b, :, 0], obj[b, :, 0]) for b in range(B)]


def upsample_logits(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` logits -> ``(N, H, W)`` by bilinear interpolation (SAM's post-processing)."""
    if low_res.shape[0] == 0:
        return low_res.new_zeros(0, *size)
    return F.interpolate(low_res[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def binary_masks(low_res: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Bool ``(H, W)`` masks (logits > 0 after ``upsample_logits``) of ``(h, w)`` logits, one per
    ``(H, W)`` in ``sizes``; the logits of one size are upsampled in one call (interpolation is per
    pixel, so batching leaves every value as it is)."""
    out: list[np.ndarray | None] = [None] * len(low_res)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        by_size.setdefault((int(size[0]), int(size[1])), []).append(i)
    for size, rows in by_size.items():
        masks = (upsample_logits(torch.stack([low_res[i] for i in rows]), size) > 0).cpu().numpy()  # (n, H, W)
        for i, mask in zip(rows, masks):
            out[i] = mask
    return out


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
