"""The decoder's KV cache of a batch whose rows come and go: the reasoning loop's continuous batching.

Each layer holds keys and values ``(B, heads, L, head_dim)``; ``attention`` ``(B, L)`` marks each
row's real columns (1) against padding (0). A row's columns may sit anywhere: the loop feeds every
token with its explicit 3-D M-RoPE position, so where a cached token lies in the column order changes
nothing it contributes (a padding column gets zero attention weight). What the column order does cost
is width: every decode step attends over all ``L`` columns. So after rows leave or join, ``compact``
moves each row's real columns, in order, to the right end and drops the columns no row uses: the batch
is then ``max(real length)`` wide, left-padded, as if its rows had started together.

    cache = RowCache.of(out.cache, attention)           # after a forward with use_cache=True
    kept = cache.select([0, 2])                          # rows 1 and 3 finished
    both = RowCache.join([kept, newcomers_cache])        # right-aligned, then compacted
    out = language_model(..., attention_mask=both.attention_with(chunk_mask), cache=both.to_cache())

Only full-attention layers (transformers' ``DynamicLayer``: Qwen2.5-VL's) are handled; a sliding-window
cache keeps a window, not a row's history, and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowCache:
    """Per-layer keys and values of B rows, with which columns of each row are real."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    """Per decoder layer, ``(keys, values)``, each ``(B, heads, L, head_dim)``."""
    attention: torch.Tensor
    """``(B, L)`` long: 1 where a row's column holds one of its tokens."""

    def __len__(self) -> int:
        return int(self.attention.shape[0])

    @property
    def width(self) -> int:
        return int(self.attention.shape[1])

    @classmethod
    def of(cls, cache, attention: torch.Tensor) -> RowCache:
        """The tensors of a transformers cache (no copy) with the attention mask it was built under."""
        layers = []
        for layer in cache.layers:
            if getattr(layer, "is_sliding", False):
                raise ValueError("a sliding-window KV cache cannot be split into rows")
            layers.append((layer.keys, layer.values))
        return cls(layers, attention)

    def to_cache(self):
        """A transformers ``DynamicCache`` holding these tensors, for the next forward."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=self.layers)

    def select(self, rows: list[int]) -> RowCache:
        """Rows ``rows`` in that order, compacted (columns only the dropped rows used go)."""
        if rows == list(range(len(self))):
            return self
        index = torch.tensor(rows, dtype=torch.long, device=self.attention.device)
        layers = [(k.index_select(0, index.to(k.device)), v.index_select(0, index.to(v.device))) for k, v in self.layers]
        return RowCache(layers, self.attention.index_select(0, index)).compact()

    @staticmethod
    def empty_like(cache: RowCache, rows: int) -> RowCache:
        """``rows`` rows with no columns (rows about to be prefilled), shaped like ``cache``."""
        layers = [(k.new_zeros(rows, k.shape[1], 0, k.shape[3]), v.new_zeros(rows, v.shape[1], 0, v.shape[3]))
                  for k, v in cache.layers]
        return RowCache(layers, cache.attention.new_zeros(rows, 0))

    @staticmethod
    def join(parts: list[RowCache]) -> RowCache:
        """The rows of ``parts`` one after the other, each part left-padded to the widest, compacted."""
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0].compact()
        width = max(p.width for p in parts)
        padded = [p._left_pad(width - p.width) for p in parts]
        layers = [(torch.cat([p.layers[i][0] for p in padded]), torch.cat([p.layers[i][1] for p in padded]))
                  for i in range(len(padded[0].layers))]
        return RowCache(layers, torch.cat([p.attention for p in padded])).compact()

    def compact(self) -> RowCache:
        """Each row's real columns, in order, at the right end; columns no row uses dropped."""
        real = self.attention.bool()  # (B, L)
        width = int(real.sum(1).max()) if len(self) else 0
        if width == self.width and _right_aligned(real):
            return self
        # a stable sort of 0/1 puts each row's padding first and its real columns after, both in order
        order = torch.argsort(real.to(torch.int8), dim=1, stable=True)[:, self.width - width :]  # (B, width)
        layers = []
        for k, v in self.layers:
            index = order.to(k.device)[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (B, heads, width, head_dim)
            layers.append((k.gather(2, index), v.gather(2, index)))
        return RowCache(layers, torch.gather(self.attention, 1, order))

    def _left_pad(self, columns: int) -> RowCache:
        if columns == 0:
            return self
        layers = [(torch.nn.functional.pad(k, (0, 0, columns, 0)), torch.nn.functional.pad(v, (0, 0, columns, 0)))
                  for k, v in self.layers]
        return RowCache(layers, torch.nn.functional.pad(self.attention, (columns, 0)))


def _right_aligned(real: torch.Tensor) -> bool:
    """Whether every row of the bool ``(B, L)`` mask is padding then real columns, with no gap."""
    return bool((real[:, 1:] >= real[:, :-1]).all())
