"""Interleaved sequences of text, dense images and sparse segmented images, with 3-D positions.

Every caller that feeds the MLLM (Stage 1/2 training, the reasoning loop, Stage 3's log-prob
recomputation) builds its input with ``SequenceBuilder``, so token ids, M-RoPE positions and the
loss mask are laid out by one piece of code.

Position rule (Qwen2.5-VL's ``get_rope_index``, extended to sparse images):
- text tokens: ``(p, p, p)`` with ``p`` the next free position, then ``p += 1``;
- a dense image starting at ``p``: token of cell ``(r, c)`` gets ``(p, p + r, p + c)``; the next
  free position becomes ``p + max(rows, cols)``;
- a segmented view of image ``k``: each kept token gets image ``k``'s base plus its
  position in the original image's grid (``SegmentedView.positions``); the next free position
  becomes ``max(every position so far) + 1``;
- a ``bbox`` view is laid out like a new dense image (fresh positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from seganswer_cli.model import tokens
from seganswer_cli.model.mllm import TokenIds
from seganswer_cli.model.sparse_patches import DenseImage, SegmentedView

IGNORE_INDEX = -100


@dataclass
class VisualSlot:
    """One image's run of ``<|image_pad|>`` tokens in a sequence and the features that fill it."""

    start: int
    """Index of the slot's first pad token in the sequence."""
    image: DenseImage
    """The encoded pixels (for a segmented view: the whole crop)."""
    keep: torch.Tensor | None = None
    """Indices of the crop's cells that fill the slot (``None``: all cells, a dense image)."""

    @property
    def length(self) -> int:
        return self.image.num_tokens if self.keep is None else int(self.keep.numel())


@dataclass
class Sequence:
    """One conversation, ready to embed: ids, positions, loss mask and visual slots."""

    input_ids: torch.Tensor
    """``(S,)`` long."""
    position_ids: torch.Tensor
    """``(3, S)`` float: M-RoPE ``(t, h, w)`` per token (real-valued for zoomed segmented views)."""
    target_mask: torch.Tensor
    """``(S,)`` bool: tokens the model must produce (its own turns); the loss / RL mask."""
    visuals: list[VisualSlot]
    image_bases: list[float]
    """Base position of each dense image, in order (segmented views refer to these)."""
    next_position: float
    """Position the next appended token gets."""

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    def tail(self, start: int) -> Sequence:
        """The tokens from ``start`` on, with the visual slots that lie there (for feeding a new
        chunk of a conversation into a model that has cached everything before ``start``)."""
        visuals = [VisualSlot(v.start - start, v.image, v.keep) for v in self.visuals if v.start >= start]
        if any(v.start < start < v.start + v.length for v in self.visuals):
            raise ValueError(f"position {start} cuts an image's tokens in two")
        return Sequence(
            input_ids=self.input_ids[start:],
            position_ids=self.position_ids[:, start:],
            target_mask=self.target_mask[start:],
            visuals=visuals,
            image_bases=self.image_bases,
            next_position=self.next_position,
        )

    def labels(self) -> torch.Tensor:
        """``(S,)`` next-token targets aligned with ``input_ids`` (``IGNORE_INDEX`` off the target mask)."""
        return torch.where(self.target_mask, self.input_ids, torch.full_like(self.input_ids, IGNORE_INDEX))

    def seg_positions(self, seg_id: int) -> torch.Tensor:
        """Indices of the ``<|seg|>`` tokens the model produced (in its own turns), in order.

        The reasoning prompt itself names ``<|seg|>``; those mentions are input, not requests to segment.
        """
        return torch.nonzero((self.input_ids == seg_id) & self.target_mask, as_tuple=False).flatten()


@dataclass
class SequenceBuilder:
    """Append text, images and segmented views; ``build()`` returns the ``Sequence``."""

    tokenizer: object
    ids: TokenIds
    _input_ids: list[int] = field(default_factory=list)
    _positions: list[torch.Tensor] = field(default_factory=list)
    _targets: list[bool] = field(default_factory=list)
    _visuals: list[VisualSlot] = field(default_factory=list)
    _image_bases: list[float] = field(default_factory=list)
    _next: float = 0.0
    _max: float = -1.0

    def __len__(self) -> int:
        return len(self._input_ids)

    @property
    def next_position(self) -> float:
        return self._next

    def _append(self, ids: list[int], positions: torch.Tensor, target: bool) -> None:
        # positions: (3, len(ids))
        self._input_ids.extend(ids)
        self._positions.append(positions)
        self._targets.extend([target] * len(ids))
        if positions.numel():
            self._max = max(self._max, float(positions.max()))

    def token_ids(self, ids: list[int], *, target: bool = False) -> SequenceBuilder:
        """Append already-tokenised text (e.g. generated tokens)."""
        n = len(ids)
        pos = (torch.arange(n, dtype=torch.float32) + self._next).expand(3, n)  # (3, n)
        self._append(list(ids), pos, target)
        self._next += n
        return self

    def text(self, text: str, *, target: bool = False) -> SequenceBuilder:
        """Append text; special tokens in it (``<|im_start|>``, ``<|seg|>``, ...) become single tokens."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.token_ids(ids, target=target)

    def image(self, image: DenseImage) -> SequenceBuilder:
        """Append ``<|vision_start|>``, one pad per cell at dense positions, ``<|vision_end|>``."""
        self.token_ids([self.ids.vision_start])
        base = self._next
        rel = image.relative_positions()  # (3, N)
        self._visuals.append(VisualSlot(start=len(self._input_ids), image=image))
        self._append([self.ids.image_pad] * image.num_tokens, rel + base, target=False)
        self._image_bases.append(base)
        self._next = base + image.position_extent
        return self.token_ids([self.ids.vision_end])

    def segmented(self, view: SegmentedView, *, of_image: int = 0) -> SequenceBuilder:
        """Append a segmented view of dense image ``of_image``: kept tokens at original positions."""
        if view.positions is None:  # bbox: a new image with fresh positions, only its kept cells
            self.token_ids([self.ids.vision_start])
            base = self._next
            rel = view.crop.relative_positions()[:, view.keep]  # (3, K)
            self._visuals.append(VisualSlot(start=len(self._input_ids), image=view.crop, keep=view.keep))
            self._append([self.ids.image_pad] * view.num_tokens, rel + base, target=False)
            self._next = base + view.crop.position_extent
            return self.token_ids([self.ids.vision_end])
        if of_image >= len(self._image_bases):
            raise ValueError(f"segmented view of image {of_image}, but the sequence has {len(self._image_bases)} image(s)")
        self.token_ids([self.ids.vision_start])
        base = self._image_bases[of_image]
        pos = view.positions.clone()  # (3, K)
        pos += base
        self._visuals.append(VisualSlot(start=len(self._input_ids), image=view.crop, keep=view.keep))
        self._append([self.ids.image_pad] * view.num_tokens, pos, target=False)
        self._next = self._max + 1
        return self.token_ids([self.ids.vision_end])

    # -- Chat-format helpers: the turns of the paper's conversations -----------------------------

    def system(self, system: str = tokens.DEFAULT_SYSTEM) -> SequenceBuilder:
        return self.text(tokens.system_turn(system))

    def user(self, text: str = "", *, image: DenseImage | None = None,
             view: SegmentedView | list[SegmentedView] | None = None, of_image: int = 0) -> SequenceBuilder:
        """A user turn: optional image and/or segmented view(s) first, then text, then the turn close
        and the assistant turn's opening (the model's reply follows)."""
        self.text(tokens.user_turn_open())
        if image is not None:
            self.image(image)
        for v in [view] if isinstance(view, SegmentedView) else view or []:
            self.segmented(v, of_image=of_image)
        return self.text(text + tokens.turn_close() + tokens.assistant_turn_open())

    def assistant(self, text: str) -> SequenceBuilder:
        """The model's reply and its ``<|im_end|>`` (both targets), then ``after_reply``."""
        self.text(text + tokens.IM_END, target=True)
        return self.after_reply()

    def after_reply(self) -> SequenceBuilder:
        """The newline that follows a reply's ``<|im_end|>`` (not a target), given or generated."""
        return self.text("\n")

    def ids_from(self, start: int) -> list[int]:
        """Token ids appended from index ``start`` on."""
        return self._input_ids[start:]

    def tail(self, start: int) -> Sequence:
        """``build().tail(start)`` without assembling the whole sequence: the reasoning loop asks
        for the few tokens it has not fed yet at every step."""
        pieces, have = [], 0
        for chunk in reversed(self._positions):  # each append is one chunk of positions
            if have >= len(self._input_ids) - start:
                break
            pieces.append(chunk)
            have += chunk.shape[1]
        positions = torch.cat(pieces[::-1], dim=1)[:, have - (len(self._input_ids) - start) :]  # (3, S - start)
        visuals = [VisualSlot(v.start - start, v.image, v.keep) for v in self._visuals if v.start >= start]
        return Sequence(
            input_ids=torch.tensor(self._input_ids[start:], dtype=torch.long),
            position_ids=positions,
            target_mask=torch.tensor(self._targets[start:], dtype=torch.bool),
            visuals=visuals,
            image_bases=list(self._image_bases),
            next_position=self._next,
        )

    def build(self) -> Sequence:
        positions = torch.cat(self._positions, dim=1) if self._positions else torch.zeros(3, 0)
        return Sequence(
            input_ids=torch.tensor(self._input_ids, dtype=torch.long),
            position_ids=positions,
            target_mask=torch.tensor(self._targets, dtype=torch.bool),
            visuals=list(self._visuals),
            image_bases=list(self._image_bases),
            next_position=self._next,
        )


@dataclass
class Batch:
    """Sequences padded to one length, with per-row visual slots (shifted by the padding)."""

    input_ids: torch.Tensor
    """``(B, S)`` long."""
    position_ids: torch.Tensor
    """``(3, B, S)`` float."""
    attention_mask: torch.Tensor
    """``(B, S)`` long: 1 for real tokens."""
    labels: torch.Tensor
    """``(B, S)`` long, ``IGNORE_INDEX`` on padding and non-target tokens."""
    visuals: list[list[VisualSlot]]
    """Per row, its visual slots with ``start`` in padded coordinates."""

    def to(self, device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.visuals,
        )


def collate(sequences: list[Sequence], pad_id: int, *, padding_side: str = "right") -> Batch:
    """Pad sequences to the longest; ``left`` padding for generation, ``right`` for training."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    length = max(len(s) for s in sequences)
    B = len(sequences)
    input_ids = torch.full((B, length), pad_id, dtype=torch.long)
    labels = torch.full((B, length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(3, B, length)
    attention_mask = torch.zeros(B, length, dtype=torch.long)
    visuals = []
    for b, s in enumerate(sequences):
        n = len(s)
        off = length - n if padding_side == "left" else 0
        input_ids[b, off : off + n] = s.input_ids
        labels[b, off : off + n] = s.labels()
        position_ids[:, b, off : off + n] = s.position_ids
        attention_mask[b, off : off + n] = 1
        visuals.append([VisualSlot(v.start + off, v.image, v.keep) for v in s.visuals])
    return Batch(input_ids, position_ids, attention_mask, labels, visuals)
