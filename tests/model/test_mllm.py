"""<|seg|> in the tokenizer and the embedding matrix."""

import torch

from seganswer_cli.model import tokens
from seganswer_cli.model.mllm import TokenIds, add_seg_token, build_tiny_mllm, build_tiny_tokenizer


def test_seg_token_is_one_special_token_with_an_embedding_row():
    mllm, processor = build_tiny_mllm()
    tok = processor.tokenizer
    ids = tok("It is <|seg|>.", add_special_tokens=False)["input_ids"]
    seg = TokenIds.from_tokenizer(tok).seg
    assert ids.count(seg) == 1
    assert mllm.get_input_embeddings().weight.shape[0] == len(tok)
    assert mllm.get_output_embeddings().weight.shape[0] == len(tok)
    emb = mllm.get_input_embeddings().weight
    torch.testing.assert_close(emb[seg], emb[:seg].mean(0))
    assert add_seg_token(mllm, processor) == seg  # idempotent
    assert mllm.get_input_embeddings().weight.shape[0] == len(tok)


def test_tiny_tokenizer_round_trips_and_is_deterministic():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    text = tokens.reasoning_prompt("What is the colour of the small star?") + " Ünïcödé 123"
    assert a(text)["input_ids"] == b(text)["input_ids"]
    assert a.decode(a(text)["input_ids"]) == text
    assert len(a(text)["input_ids"]) < len(text.encode()) / 2  # merges learned from the templates

