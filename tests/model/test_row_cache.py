"""RowCache: rows of a KV cache selected, joined and compacted leave every row's next step unchanged."""

import torch

from seganswer_cli.model.row_cache import RowCache


def _prefill(model, rows: list[list[int]]):
    """Left-padded prefill of token rows at text positions 0..n-1; returns (RowCache, last states)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(3, len(rows), width)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = torch.tensor(r)
        positions[:, b, width - len(r) :] = torch.arange(len(r), dtype=torch.float32)
        attention[b, width - len(r) :] = 1
    embeds = model.mllm.get_input_embeddings()(ids)
    out = model.language_model(embeds, positions, attention, use_cache=True)
    return RowCache.of(out.cache, attention), out.last_hidden_state[:, -1]


def _next(model, cache: RowCache, tokens: list[int], positions: list[int]) -> torch.Tensor:
    """The states of one more token per row after ``cache``: ``(B, D)``."""
    ids = torch.tensor(tokens)[:, None]
    pos = torch.tensor(positions, dtype=torch.float32)[None, :, None].expand(3, -1, 1)
    attention = torch.cat([cache.attention, torch.ones(len(tokens), 1, dtype=torch.long)], dim=1)
    out = model.language_model(model.mllm.get_input_embeddings()(ids), pos, attention, cache=cache.to_cache(),
                               use_cache=True)
    return out.last_hidden_state[:, -1]


@torch.no_grad()
def test_select_join_and_compact_keep_each_rows_next_step(tiny_model):
    rows = [[5, 9, 11, 4], [7, 3], [8, 8, 2, 6, 1, 12]]
    whole, _ = _prefill(tiny_model, rows)
    expected = _next(tiny_model, whole, [10, 10, 10], [len(r) for r in rows])

    # rows prefilled apart, then joined: the same next step, and no wider than the longest row
    first, _ = _prefill(tiny_model, rows[:1])
    rest, _ = _prefill(tiny_model, rows[1:])
    joined = RowCache.join([first, rest])
    assert joined.width == 6 and joined.attention.sum(1).tolist() == [4, 2, 6]
    torch.testing.assert_close(_next(tiny_model, joined, [10, 10, 10], [4, 2, 6]), expected, atol=1e-5, rtol=1e-5)

    # the longest row leaves: the columns only it used go
    kept = whole.select([0, 1])
    assert kept.width == 4
    torch.testing.assert_close(_next(tiny_model, kept, [10, 10], [4, 2]), expected[:2], atol=1e-5, rtol=1e-5)

    # padding in the middle (a row fed one token while another fed a longer chunk) is squeezed out
    gapped = RowCache([(torch.cat([k[:, :, :2], torch.zeros_like(k[:, :, :3]), k[:, :, 2:]], 2),
                        torch.cat([v[:, :, :2], torch.zeros_like(v[:, :, :3]), v[:, :, 2:]], 2)) for k, v in whole.layers],
                      torch.cat([whole.attention[:, :2], torch.zeros(3, 3, dtype=torch.long), whole.attention[:, 2:]], 1))
    torch.testing.assert_close(_next(tiny_model, gapped, [10, 10, 10], [4, 2, 6]), expected, atol=1e-5, rtol=1e-5)
    dense = gapped.compact()
    assert dense.width == 6 and bool((dense.attention[:, 1:] >= dense.attention[:, :-1]).all())
    torch.testing.assert_close(_next(tiny_model, dense, [10, 10, 10], [4, 2, 6]), expected, atol=1e-5, rtol=1e-5)
    assert dense.compact() is dense  # already dense: nothing copied
