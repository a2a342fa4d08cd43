"""``SegAnswerModel``: the MLLM (Qwen2.5-VL or Qwen3-VL) + ``<|seg|>`` + projector + SAM 2.1, as one module.

The ``<|seg|>`` path: the MLLM runs on the conversation; the last-layer hidden state *at* each
``<|seg|>`` token (the state after reading it, i.e. the one that predicts the token after it) goes
through the projector to a 256-d sparse prompt; SAM 2.1 decodes it on the frozen image
embedding of the conversation's image. At inference the same state is the one the model computes
when the generated ``<|seg|>`` is fed back in, so training and inference read the same position.

A saved model is one folder:
    mllm/                      the MLLM's own ``save_pretrained`` (safetensors, config) and its
                               processor (tokenizer with ``<|seg|>``, image processor, chat template)
    projector.safetensors
    mask_decoder.safetensors   all of SAM 2.1 (the frozen image encoder included: the folder is self-contained)
    mask_decoder_config.json   the ``Sam2Config``
    seganswer.json             preset, versions, view settings, the settings of the run that made it
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from seganswer_cli import __version__
from seganswer_cli.errors import ModelFolderError, SegTokenError, UsageError, read_json
from seganswer_cli.model import tokens
from seganswer_cli.model.backbones import DecoderInputs, backbone_for, encode_images
from seganswer_cli.model.conversation import stage1_sequence
from seganswer_cli.model.folder_checks import check_mllm_folder, check_model_folder, check_sam_folder
from seganswer_cli.model.losses import LossWeights, mask_losses, total_loss
from seganswer_cli.model.mask_decoder import (
    ImageEmbeddings,
    MaskPrediction,
    SamMaskDecoder,
    binary_masks,
    image_model_config,
    upsample_logits,
)
from seganswer_cli.model.mllm import TokenIds
from seganswer_cli.model.presets import PRESETS, Preset, ViewConfig, get_preset, packaged_folder
from seganswer_cli.model.projector import SegProjector
from seganswer_cli.model.sequence import IGNORE_INDEX, Batch, Sequence, SequenceBuilder, collate
from seganswer_cli.model.sources import local_folder, looks_like_hub_id
from seganswer_cli.model.sparse_patches import (
    DenseImage,
    SegmentedView,
    build_segmented_view,
    global_view,
    global_views,
    second_look_view,
)

FORMAT_NAME = "seganswer"
FORMAT_VERSION = 1
MODEL_CARD = "seganswer.json"


@dataclass
class SegAnswerOutput:
    """What one training forward returns."""

    loss: torch.Tensor
    """Weighted total (``LossWeights``)."""
    lm_loss: torch.Tensor | None
    """Mean next-token cross-entropy over target tokens (None when the batch has no target)."""
    mask_loss_parts: dict[str, torch.Tensor]
    """``focal``, ``dice``, ``iou``, ``object_score`` (unweighted; empty when no ground truth)."""
    masks: list[MaskPrediction]
    """Per sequence, the decoder's outputs for its ``<|seg|>`` tokens, in order."""
    hidden_states: torch.Tensor = field(repr=False)
    """``(B, S, D)`` last-layer hidden states."""
    image_embeddings: ImageEmbeddings | None = field(default=None, repr=False)
    """SAM's embeddings of the images of the rows that asked for a mask (``mask_rows``), in order."""
    mask_rows: list[int] = field(default_factory=list)
    """The rows whose ``<|seg|>`` tokens were decoded."""


class SegAnswerModel(nn.Module):
    """The composition of the paper's model. Build with ``from_preset`` or ``from_pretrained``."""

    def __init__(self, mllm, processor, projector: SegProjector, mask_decoder: SamMaskDecoder, info: dict | None = None):
        super().__init__()
        self.mllm = mllm
        self.processor = processor
        self.projector = projector
        self.mask_decoder = mask_decoder
        self.info = dict(info or {})
        self.view_config = ViewConfig.from_dict(self.info.get("view", {}))
        self.token_ids = TokenIds.from_tokenizer(processor.tokenizer)
        if self.mllm.get_input_embeddings().weight.shape[0] <= self.token_ids.seg:
            raise SegTokenError("the MLLM's embedding matrix has no row for <|seg|>")

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str | Preset, *, mllm_path: str | None = None, sam_path: str | None = None,
                    dtype: torch.dtype | None = None, seed: int = 0) -> SegAnswerModel:
        """A fresh model from a preset (the projector is newly initialised).

        ``mllm_path`` / ``sam_path`` replace the preset's hub ids by local copies. A packaged
        preset (``shapes``) is a trained model: it loads the folder shipped inside the package.
        """
        from seganswer_cli.model.mask_decoder import build_tiny_sam, load_sam
        from seganswer_cli.model.mllm import build_tiny_mllm, load_mllm
        from seganswer_cli.model.sam_checkpoint import is_meta_checkpoint

        preset = get_preset(name) if isinstance(name, str) else name
        if preset.packaged is not None:
            if mllm_path or sam_path:
                raise UsageError(f"preset {preset.name!r} is a trained model folder; its MLLM and SAM cannot be replaced")
            return cls._from_packaged(preset, dtype=dtype)
        mllm_src = mllm_path or preset.mllm
        sam_src = sam_path or preset.sam
        # Both parts found and checked before either loads: a SAM 2.1 the hub cannot give, or a
        # damaged file, is said at once, not after the MLLM has loaded.
        mllm_folder = None if mllm_src is None else local_folder(mllm_src, "mllm")
        sam_file = sam_src is not None and is_meta_checkpoint(sam_src)  # Meta's .pt: checked as it loads
        sam_folder = None if sam_src is None or sam_file else local_folder(sam_src, "sam")
        if mllm_folder is not None:
            found = backbone_for(check_mllm_folder(mllm_folder).model_type, mllm_folder / "config.json")
            if found.name != preset.backbone:
                raise UsageError(f"preset {preset.name!r} is a {preset.backbone} model but {mllm_src} holds a "
                                 f"{found.title} model; use a {found.name} preset or a {preset.backbone} folder")
        if sam_folder is not None:
            check_sam_folder(sam_folder)
        if mllm_folder is None:
            mllm, processor = build_tiny_mllm(seed=seed, backbone=preset.backbone, **preset.tiny_mllm)
        else:
            mllm, processor = load_mllm(str(mllm_folder), dtype=dtype)
        if sam_src is None:
            sam = build_tiny_sam(seed=seed, **preset.tiny_sam)
        else:
            sam = load_sam(sam_src if sam_file else str(sam_folder), dtype=dtype)
        torch.manual_seed(seed)
        mask_decoder = SamMaskDecoder(sam)
        projector = SegProjector(mllm.config.text_config.hidden_size, mask_decoder.prompt_dim)
        if dtype is not None:
            mllm.to(dtype)
            projector.to(dtype)
            sam.to(dtype)
        info = {
            "preset": preset.name,
            "mllm_source": mllm_src or "built-in tiny",
            "sam_source": sam_src or "built-in tiny",
            "view": asdict(preset.view),
        }
        return cls(mllm, processor, projector, mask_decoder, info).eval()

    @classmethod
    def _from_packaged(cls, preset: Preset, *, dtype: torch.dtype | None = None) -> SegAnswerModel:
        """The trained model folder shipped for ``preset``; a missing or damaged one says how to reinstall."""
        folder = packaged_folder(preset)
        try:
            if not folder.is_dir():
                raise ModelFolderError(f"{folder} does not exist")
            return cls.from_pretrained(folder, dtype=dtype)
        except (ModelFolderError, SegTokenError) as e:
            reason = " ".join(str(e).split())  # one line, even for torch's multi-line load_state_dict errors
            if len(reason) > 500:
                reason = reason[:500] + "..."
            raise ModelFolderError(
                f"the shipped {preset.name!r} model is missing or damaged ({reason}); reinstall seganswer: "
                "pip install --force-reinstall seganswer, or pip install . again from a checkout"
            ) from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> SegAnswerModel:
        """Load a folder written by ``save_pretrained`` (or a hub id of one, or a preset name).

        Every file is checked before anything is built (``folder_checks.check_model_folder``: the
        configs parse, the weight files are whole and hold the tensors the configs imply)."""
        from transformers import AutoProcessor, Sam2Config, Sam2Model

        path_str = str(path)
        folder = Path(path_str).expanduser()
        if not folder.exists():
            if path_str in PRESETS:
                return cls.from_preset(path_str, dtype=dtype)
            if not looks_like_hub_id(path_str):
                raise ModelFolderError(
                    f"model folder not found: {path_str} (and it is not a preset: {', '.join(PRESETS)})"
                )
        folder = local_folder(path_str, "model")
        card_path = folder / MODEL_CARD
        if not card_path.is_file():
            raise ModelFolderError(f"{folder} is not a seganswer model folder (no {MODEL_CARD})")
        info = read_json(card_path, ModelFolderError)
        if info.get("format") != FORMAT_NAME:
            raise ModelFolderError(f"{card_path} was not written by seganswer")
        if int(info.get("format_version", 0)) > FORMAT_VERSION:
            raise ModelFolderError(
                f"{folder} uses model format {info['format_version']}; this seganswer reads up to {FORMAT_VERSION}"
            )
        for required in ("mllm", "projector.safetensors", "mask_decoder.safetensors", "mask_decoder_config.json"):
            if not (folder / required).exists():
                raise ModelFolderError(f"{folder} is missing {required}")
        mllm_config = check_model_folder(folder)
        model_class, _ = backbone_for(mllm_config.model_type, folder / "mllm" / "config.json").classes()
        kwargs = {"dtype": dtype} if dtype is not None else {}
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a local folder loads in a blink; the bar is noise on stderr
        try:
            processor = AutoProcessor.from_pretrained(folder / "mllm")
            mllm = model_class.from_pretrained(folder / "mllm", **kwargs)
            sam_config = Sam2Config.from_dict(json.loads((folder / "mask_decoder_config.json").read_text()))
            sam = Sam2Model(sam_config)
            sam.load_state_dict(_read_safetensors(folder / "mask_decoder.safetensors"))
            projector_state = _read_safetensors(folder / "projector.safetensors")
            # The projector maps the MLLM's hidden size to SAM's prompt dimension (both checked above).
            hidden, prompt_dim = projector_state["fc1.weight"].shape[1], projector_state["fc2.weight"].shape[0]
            projector = SegProjector(hidden, prompt_dim)
            projector.load_state_dict(projector_state)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ModelFolderError(f"cannot load the model in {folder}: {e}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if tokens.SEG_TOKEN not in processor.tokenizer.get_vocab():
            raise SegTokenError(f"the tokenizer in {folder / 'mllm'} has no {tokens.SEG_TOKEN} token")
        mask_decoder = SamMaskDecoder(sam)
        if dtype is not None:
            projector.to(dtype)
            sam.to(dtype)
        return cls(mllm, processor, projector, mask_decoder, info).eval()

    def save_pretrained(self, path: str | os.PathLike, *, extra_info: dict | None = None) -> Path:
        """Write the model as one folder (see the module docstring). Returns the folder."""
        import transformers
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.mllm.save_pretrained(folder / "mllm")
        self.processor.save_pretrained(folder / "mllm")
        save_file(_contiguous(self.projector.state_dict()), folder / "projector.safetensors")
        save_file(_contiguous(self.mask_decoder.sam.state_dict()), folder / "mask_decoder.safetensors")
        (folder / "mask_decoder_config.json").write_text(image_model_config(self.mask_decoder.sam.config).to_json_string())
        info = dict(self.info)
        info.update(extra_info or {})
        info.update(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            view=asdict(self.view_config),
            versions={"seganswer": __version__, "transformers": transformers.__version__, "torch": torch.__version__},
        )
        (folder / MODEL_CARD).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        self.info = info
        return folder

    # -- properties -----------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return self.processor.image_processor

    @property
    def device(self) -> torch.device:
        return next(self.mllm.parameters()).device

    # -- inputs ---------------------------------------------------------------------------------

    def global_view(self, image: Image.Image) -> DenseImage:
        """The image as the MLLM sees it in turn 1."""
        return global_view(image, self.image_processor)

    def global_views(self, images: list[Image.Image]) -> list[DenseImage]:
        """``global_view`` of several images, prepared together (``sparse_patches.global_views``)."""
        return global_views(images, self.image_processor)

    def segmented_view(self, image: Image.Image, mask, *, mode: str = "mask", **overrides) -> SegmentedView | None:
        """The second look at ``image`` under ``mask`` with this model's view settings (``overrides`` win)."""
        cfg = asdict(self.view_config)
        cfg.update(overrides)
        return build_segmented_view(image, mask, self.image_processor, mode=mode, **cfg)

    def second_look(self, image: Image.Image, mask, *, mode: str = "mask") -> tuple[SegmentedView, str | None]:
        """The segmented view the conversation continues with, and the fallback taken (if any):
        ``sparse_patches.second_look_view`` with this model's view settings (an empty mask shows the
        original image again, fallback ``empty_mask``)."""
        return second_look_view(image, mask, self.image_processor, mode=mode, **asdict(self.view_config))

    def builder(self) -> SequenceBuilder:
        return SequenceBuilder(self.tokenizer, self.token_ids)

    def collate(self, sequences: list[Sequence], *, padding_side: str = "right") -> Batch:
        return collate(sequences, self.token_ids.pad, padding_side=padding_side)

    # -- running the MLLM -----------------------------------------------------------------------

    def embed(self, batch: Batch) -> DecoderInputs:
        """The decoder's inputs: ``(B, S, D)`` embeddings with every visual slot filled by its (kept)
        cells' features and, on a DeepStack backbone (Qwen3-VL), the same cells' DeepStack features
        for the first decoder layers (``backbones``)."""
        device = self.device
        input_ids = batch.input_ids.to(device)
        embeds = self.mllm.get_input_embeddings()(input_ids)  # (B, S, D)
        slots = [slot for row in batch.visuals for slot in row]  # row-major = order of pads in (B, S)
        if not slots:
            return DecoderInputs(embeds)
        pixel_values = torch.cat([s.image.pixel_values for s in slots]).to(device, self.mllm.model.visual.dtype)
        grid_thw = torch.stack([s.image.grid_thw for s in slots]).to(device)  # (n_images, 3)
        feats, deepstack = encode_images(self.mllm, pixel_values, grid_thw).kept([s.keep for s in slots])
        feats = feats.to(embeds.dtype)  # (total kept tokens, D)
        pad_mask = input_ids == self.token_ids.image_pad  # (B, S)
        if int(pad_mask.sum()) != feats.shape[0]:
            raise RuntimeError(f"{int(pad_mask.sum())} image pad tokens but {feats.shape[0]} visual features")
        embeds = embeds.masked_scatter(pad_mask[..., None].expand_as(embeds), feats)
        return DecoderInputs(embeds, pad_mask if deepstack is not None else None, deepstack)

    def language_model(self, inputs: DecoderInputs | torch.Tensor, position_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None = None, cache=None, use_cache: bool = False):
        """The decoder stack on prepared inputs (``embed``; or plain ``(B, S, D)`` embeddings, tokens
        with no visual features) and 3-D positions; returns transformers' output (``last_hidden_state``,
        and ``cache`` when ``use_cache``)."""
        if isinstance(inputs, torch.Tensor):
            inputs = DecoderInputs(inputs)
        device = inputs.embeds.device
        return self.mllm.model.language_model(
            inputs_embeds=inputs.embeds,
            position_ids=position_ids.to(device),
            attention_mask=None if attention_mask is None else attention_mask.to(device),
            cache=cache,
            use_cache=use_cache,
            **inputs.decoder_kwargs(),
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mllm.lm_head(hidden)

    def lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Mean next-token CE over target tokens; logits only where a target exists (memory: the
        full ``(B, S, vocab)`` tensor of a 152k vocabulary would dominate a 7B step)."""
        targets = labels[:, 1:].to(hidden.device)  # (B, S-1)
        where = targets != IGNORE_INDEX
        if not where.any():
            return None
        logits = self.logits(hidden[:, :-1][where])  # (n_targets, V)
        return nn.functional.cross_entropy(logits.float(), targets[where])

    def seg_hidden(self, hidden: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Per row, the hidden states at the ``<|seg|>`` tokens of the model's own turns: ``[(n_b, D)]``.

        ``labels`` equal the input ids on target tokens, so ``labels == seg`` finds the produced
        ``<|seg|>`` tokens and skips the prompt's mentions of the tag.
        """
        is_seg = labels.to(hidden.device) == self.token_ids.seg  # (B, S)
        return [hidden[b][is_seg[b]] for b in range(hidden.shape[0])]

    def token_logprobs(self, sequences: list[Sequence], *, temperature: float = 1.0) -> list[torch.Tensor]:
        """Per sequence, the log-probability of each target token under the model, ``[(n_b,)]``,
        from one forward over the whole sequence (Stage 3 recomputes rollout log-probs with it)."""
        batch = self.collate(sequences)
        hidden = self.language_model(self.embed(batch), batch.position_ids, batch.attention_mask).last_hidden_state
        targets = batch.labels[:, 1:].to(hidden.device)  # (B, S-1): token t+1 is predicted at t
        where = targets != IGNORE_INDEX  # (B, S-1)
        # one LM-head call for the whole batch (a sharded head is gathered once per forward, on every process)
        logits = self.logits(hidden[:, :-1][where]).float() / temperature  # (n, V), rows in (b, t) order
        logprobs = torch.log_softmax(logits, -1).gather(1, targets[where][:, None])[:, 0]  # (n,)
        return list(logprobs.split(where.sum(1).tolist()))

    # -- masks ----------------------------------------------------------------------------------

    def encode_for_masks(self, images: list[Image.Image]) -> ImageEmbeddings:
        """SAM's frozen image embeddings of the conversations' images."""
        return self.mask_decoder.encode(self.mask_decoder.preprocess(images))

    def decode_masks(self, image_embeddings: ImageEmbeddings, seg_states: list[torch.Tensor]) -> list[MaskPrediction]:
        """Per image, masks for its ``<|seg|>`` states ``(n_b, D)``: projector -> SAM mask decoder. The
        images with the same number of states are decoded in one call (``decode_batch``)."""
        groups: dict[int, list[int]] = {}
        for b, states in enumerate(seg_states):
            groups.setdefault(int(states.shape[0]), []).append(b)
        out: list[MaskPrediction | None] = [None] * len(seg_states)
        dtype = self.projector.fc1.weight.dtype
        for rows in groups.values():
            prompts = self.projector(torch.stack([seg_states[b] for b in rows]).to(dtype))  # (G, n, 256)
            for b, pred in zip(rows, self.mask_decoder.decode_batch(image_embeddings.take(rows), prompts)):
                out[b] = pred
        return out

    def embeddings_for_masks(self, images: list[Image.Image],
                             reuse: list[ImageEmbeddings | None] | None = None) -> ImageEmbeddings:
        """SAM's embeddings of ``images``, one stacked encoder call for those without an entry in
        ``reuse`` (the single-image embeddings an earlier pass computed: Stage 2's pass 1). Reuse
        needs a frozen encoder path (``SamMaskDecoder.encoder_frozen``) while gradients are on: an
        embedding computed without gradient would otherwise cut them."""
        reuse = reuse if reuse is not None else [None] * len(images)
        if len(reuse) != len(images):
            raise ValueError(f"{len(images)} images but {len(reuse)} embeddings to reuse")
        need = [i for i, r in enumerate(reuse) if r is None]
        if len(need) < len(images) and torch.is_grad_enabled() and not self.mask_decoder.encoder_frozen:
            raise ValueError("SAM's encoder path trains: embeddings from an earlier pass cannot be reused")
        encoded = self.encode_for_masks([images[i] for i in need]) if need else None
        if len(need) == len(images):
            return encoded
        at = {i: k for k, i in enumerate(need)}
        return ImageEmbeddings.cat([reuse[i] if reuse[i] is not None else encoded.select(at[i])
                                    for i in range(len(images))])

    def forward(self, sequences: list[Sequence], images: list[Image.Image] | None = None,
                gt_masks: list[list] | None = None, weights: LossWeights | None = None,
                image_embeddings: list[ImageEmbeddings | None] | None = None) -> SegAnswerOutput:
        """Training forward: LM loss on target tokens, SAM 2 losses on the ``<|seg|>`` masks.

        ``images[b]`` is the image the ``<|seg|>`` tokens of ``sequences[b]`` segment;
        ``gt_masks[b]`` holds one bool ``(H, W)`` mask per ``<|seg|>`` token of that sequence. A
        sequence without a ``<|seg|>`` target (a plain question and answer) trains the LM loss only;
        its entry of ``masks`` is None, as is that of a sequence whose image is None (its ``gt_masks``
        entry is then ``[]``). ``image_embeddings[b]``, when given, is SAM's embedding of ``images[b]``
        from an earlier pass (one image, e.g. ``out.image_embeddings.select(i)``), used instead of
        running the encoder again (``embeddings_for_masks``).
        """
        weights = weights or LossWeights()
        batch = self.collate(sequences)
        embeds = self.embed(batch)
        hidden = self.language_model(embeds, batch.position_ids, batch.attention_mask).last_hidden_state
        lm = self.lm_loss(hidden, batch.labels)
        masks: list[MaskPrediction | None] = []
        parts: dict[str, torch.Tensor] = {}
        if images is not None:
            seg_states = self.seg_hidden(hidden, batch.labels)
            # rows that ask for a mask (a row whose image is None is trained on its tokens only)
            rows = [b for b, states in enumerate(seg_states) if states.shape[0] and images[b] is not None]
            reuse = None if image_embeddings is None else [image_embeddings[b] for b in rows]
            embeddings = self.embeddings_for_masks([images[b] for b in rows], reuse) if rows else None
            decoded = self.decode_masks(embeddings, [seg_states[b] for b in rows]) if rows else []
            by_row = dict(zip(rows, decoded))
            masks = [by_row.get(b) for b in range(len(sequences))]
            if gt_masks is not None:
                parts = self._mask_losses(masks, gt_masks)
        loss = total_loss(lm, parts, weights)
        if not torch.is_tensor(loss):
            raise ValueError("nothing to train on: no target tokens and no ground-truth masks in the batch")
        return SegAnswerOutput(loss, lm, parts, masks, hidden, embeddings if images is not None else None,
                               rows if images is not None else [])

    def point_prompt_losses(self, image_embeddings: ImageEmbeddings, rows: list[int], gt_masks: list[list],
                            points: list[list]) -> dict[str, torch.Tensor]:
        """SAM 2.1's losses for masks prompted by clicks instead of ``<|seg|>`` states:
        ``image_embeddings.select(i)`` is SAM's embedding of the image of row ``rows[i]`` (a forward's
        ``out.image_embeddings`` and ``out.mask_rows``, or ``encode_for_masks`` of every image), and
        ``points[b][i]`` is an (x, y) pixel of that image inside ``gt_masks[b][i]``. SAM's promptable
        pretraining in the demo's stand-in (phase ``points``, and beside ``<|seg|>`` in ``standin``)."""
        preds, targets = [], []
        for i, b in enumerate(rows):
            if not points[b]:
                continue
            h, w = gt_masks[b][0].shape
            preds.append(self.mask_decoder.decode(image_embeddings.select(i), self._click_prompts(points[b], w, h)))
            targets.append(gt_masks[b][: len(points[b])])
        return self._mask_losses(preds, targets) if preds else {}

    @torch.no_grad()
    def clicked_masks(self, images: list[Image.Image], targets: list[np.ndarray]) -> list[np.ndarray]:
        """SAM 2.1's bool ``(H, W)`` mask of each image from one click on its target: the target's
        pixel nearest its centroid (an empty target gives an empty mask). What the mask decoder can
        do with a perfect point prompt, the language model aside."""
        embeddings = self.encode_for_masks(images)
        masks = []
        for i, (image, target) in enumerate(zip(images, targets)):
            ys, xs = np.nonzero(target)
            if not len(ys):
                masks.append(np.zeros(target.shape, dtype=bool))
                continue
            k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            clicks = self._click_prompts([(float(xs[k]), float(ys[k]))], image.width, image.height)
            pred = self.mask_decoder.decode(embeddings.select(i), clicks)
            masks.append((upsample_logits(pred.low_res_logits[:1], target.shape)[0] > 0).cpu().numpy())
        return masks

    def _click_prompts(self, points: list[tuple[float, float]], width: int, height: int) -> torch.Tensor:
        """SAM 2.1's point prompts of clicks given as (x, y) pixels of a ``width`` x ``height`` image
        (as ``stage1.click_points`` picks them), scaled to SAM's square input."""
        S = self.mask_decoder.image_size
        xy = torch.tensor([[x * S / width, y * S / height] for x, y in points], dtype=torch.float32,
                          device=next(self.mask_decoder.parameters()).device)
        return self.mask_decoder.point_prompts(xy)

    def _mask_losses(self, masks: list[MaskPrediction | None], gt_masks: list[list]) -> dict[str, torch.Tensor]:
        S = self.mask_decoder.image_size
        logits, targets, ious, objs = [], [], [], []
        for b, (pred, gts) in enumerate(zip(masks, gt_masks)):
            if len(gts) != (0 if pred is None else pred.low_res_logits.shape[0]):
                raise SegTokenError(
                    f"sequence {b} has {0 if pred is None else pred.low_res_logits.shape[0]} {tokens.SEG_TOKEN} token(s) "
                    f"but {len(gts)} ground-truth mask(s)"
                )
            if not gts:
                continue
            logits.append(upsample_logits(pred.low_res_logits, (S, S)))  # (n, S, S)
            targets.append(resize_masks(gts, S).to(logits[-1].device))  # (n, S, S)
            ious.append(pred.iou)
            objs.append(pred.object_logits)
        if not logits:
            return {}
        return mask_losses(torch.cat(logits), torch.cat(targets), torch.cat(ious).float(), torch.cat(objs).float())

    # -- inference ------------------------------------------------------------------------------

    @torch.no_grad()
    def segment_batch(self, images: list[Image.Image], expressions: list[str]) -> list[tuple[np.ndarray, float, float]]:
        """Stage 1 referring segmentation of several (image, expression) pairs in one forward:
        the paper's Prompt 1 and Response 1, teacher-forced, the mask read at ``<|seg|>``.

        Returns per pair the bool ``(H, W)`` mask, the predicted IoU and the object score (probability).
        """
        sequences = [stage1_sequence(self, dense, expr) for dense, expr in zip(self.global_views(images), expressions)]
        out = self(sequences, images)  # through __call__: a sharded model's root gathers what SAM needs
        masks = binary_masks([pred.low_res_logits[0] for pred in out.masks], [(img.height, img.width) for img in images])
        return [(mask, float(pred.iou[0]), float(torch.sigmoid(pred.object_logits[0])))
                for mask, pred in zip(masks, out.masks)]

    def segment(self, image: Image.Image, expression: str) -> tuple[np.ndarray, float, float]:
        """One pair of ``segment_batch``."""
        return self.segment_batch([image], [expression])[0]


def resize_masks(masks: list, size: int) -> torch.Tensor:
    """Bool ``(H, W)`` masks (numpy or torch) -> float ``(n, size, size)`` by nearest neighbour,
    the same square resize SAM's input gets."""
    out = []
    for m in masks:
        t = torch.as_tensor(np.asarray(m.cpu() if torch.is_tensor(m) else m), dtype=torch.float32)
        if t.ndim != 2:
            raise ValueError(f"a ground-truth mask must be (H, W), got shape {tuple(t.shape)}")
        out.append(nn.functional.interpolate(t[None, None], size=(size, size), mode="nearest")[0, 0])
    return torch.stack(out)


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file names itself in the error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:
        raise ModelFolderError(f"cannot read {path}: {e}") from None
