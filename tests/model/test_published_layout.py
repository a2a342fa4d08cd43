"""The 7B preset on a shrunk folder in Qwen2.5-VL-7B-Instruct's published layout (``published_mllm.py``):
an embedding with more rows than the tokenizer has tokens, bf16 weights, the checkpoint's own
generation settings; bad MLLM sources refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from seganswer_cli.cli import app
from seganswer_cli.model import SegAnswerModel
from seganswer_cli.reasoning import ReasoningLoop, ReasoningSettings, generation_config_note

runner = CliRunner()


@pytest.fixture(scope="module")
def model(published_model):
    return SegAnswerModel.from_pretrained(published_model)


def _checkpoint_rows(mllm_folder):
    """The published folder's input-embedding and LM-head matrices, as stored."""
    raw = load_file(mllm_folder / "model.safetensors")
    emb = next(v for k, v in raw.items() if k.endswith("embed_tokens.weight"))
    head = next(v for k, v in raw.items() if k.endswith("lm_head.weight"))
    return emb, head


def test_seg_token_lands_on_a_spare_row_and_is_initialised(model, published_mllm):
    emb0, head0 = _checkpoint_rows(published_mllm)
    seg, known = model.token_ids.seg, len(model.tokenizer)
    assert known == seg + 1 < emb0.shape[0]  # a spare row of the checkpoint: no row was added
    emb = model.mllm.get_input_embeddings().weight
    head = model.mllm.get_output_embeddings().weight
    assert emb.shape == emb0.shape and head.shape == head0.shape and emb.dtype == torch.bfloat16
    for now, stored in ((emb, emb0), (head, head0)):
        assert not torch.equal(now[seg], stored[seg])  # not the checkpoint's spare-row content
        torch.testing.assert_close(now[seg].float(), stored[:seg].float().mean(0).to(torch.bfloat16).float())
        assert torch.equal(now[:seg], stored[:seg]) and torch.equal(now[known:], stored[known:])


def test_model_info_names_tokenizer_length_and_embedding_rows(published_model, published_mllm):
    result = runner.invoke(app, ["model", "info", str(published_model), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    rows = json.loads((published_mllm / "config.json").read_text())["text_config"]["vocab_size"]
    assert facts["embedding_rows"] == facts["lm_head_rows"] == rows
    assert facts["tokenizer_length"] == facts["seg_token_id"] + 1 < rows
    table = runner.invoke(app, ["model", "info", str(published_model)])
    assert "tokenizer_length" in table.stdout and "embedding_rows" in table.stdout


@pytest.mark.parametrize("sample", [False, True])
def test_no_chosen_id_outside_the_tokenizer(model, sample):
    """The LM head's spare rows are made to dominate (100x copies of real rows): unmasked, most of the
    mass is there; the loop still never picks one, greedy or sampled at temperature 1.0."""
    known = len(model.tokenizer)
    head = model.mllm.get_output_embeddings().weight
    saved = head.detach().clone()
    spare = head.shape[0] - known
    with torch.no_grad():
        head[known:] = 100 * head[:spare]
    try:
        settings = ReasoningSettings(sample=sample, temperature=1.0, seed=0, max_new_tokens=60, max_seg_steps=0)
        loop = ReasoningLoop(model, settings)
        images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "white", "black")]
        trajectories = loop.run(images, ["What colour is it?"] * 4)
        state = torch.randn(8, head.shape[1], dtype=head.dtype)
        spare_mass = torch.softmax(model.logits(state).float(), -1)[:, known:].sum(-1).mean()
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert spare_mass > 0.5  # the test bites: without the mask most choices would be padding ids
    chosen = torch.cat([t.sequence.input_ids[t.sequence.target_mask] for t in trajectories])
    assert len(chosen) >= 4 * 20 and int(chosen.max()) < known


def test_generation_config_is_overridden_and_said_so(model, published_model, published_mllm):
    stored = json.loads((published_mllm / "generation_config.json").read_text())
    assert stored.get("repetition_penalty", 1.0) != 1.0 or stored.get("top_k") is not None
    note = generation_config_note(model)
    assert note and "is not used" in note and "repetition_penalty" in note
    # greedy ignores the repetition penalty: the loop's first choice is the plain argmax
    image = Image.new("RGB", (64, 64), "red")
    result = runner.invoke(app, ["infer", "--model", str(published_model), "--max-new-tokens", "2",
                                 str(_save(image, published_model.parent / "red.png")), "What colour is it?"])
    # random weights: an answer, or none (NoAnswer: exit 3 from the executable; 2 tokens cut most answers)
    assert result.exit_code == 0 or type(result.exception).__name__ == "NoAnswer", result.output
    assert "generation_config.json" in result.stderr and "is not used" in result.stderr


def _save(image, path):
    image.save(path)
    return path


def test_bad_mllm_sources_are_refused_in_one_line(monkeypatch, capsys, tmp_path, published_mllm, published_sam):
    """A hub id while offline, a missing folder, a folder without weights, a tokenizer without its chat
    template: each one line on stderr naming the source and what is wrong, a non-zero exit, nothing written."""
    import shutil

    from seganswer_cli.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(published_mllm, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    no_template = tmp_path / "no-template"
    shutil.copytree(published_mllm, no_template, ignore=shutil.ignore_patterns("chat_template.*"))
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    cases = [
        ("someone/some-model", "cannot be downloaded as a hub id while offline"),
        (tmp_path / "missing" / "folder", "MLLM folder not found"),
        (no_weights, "no weights"),
        (no_template, "has no chat template"),
    ]
    for i, (mllm, expected) in enumerate(cases):
        out = tmp_path / f"out{i}"
        monkeypatch.setattr("sys.argv", ["seganswer", "model", "init", "qwen2.5-vl-7b", "--mllm", str(mllm),
                                         "--sam", str(published_sam), "--out", str(out)])
        with pytest.raises(SystemExit) as info:
            main()
        err = capsys.readouterr().err.strip()
        assert info.value.code not in (0, None), (mllm, err)
        assert err.count("\n") == 0 and expected in err and str(mllm) in err and "Traceback" not in err, err
        assert not out.exists() or not any(out.iterdir())
