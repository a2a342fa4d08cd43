"""The ``qwen3-vl-8b`` preset on local folders: a shrunk Qwen3-VL folder in the published layout
(``published_mllm.write_published_qwen3_mllm``) and a SAM 2.1 folder become a seganswer model that
saves and loads back; an MLLM of the other backbone, or of an architecture seganswer does not run,
is refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_folder_checks import run_cli

from published_mllm import write_published_qwen3_mllm
from seganswer_cli.model import SegAnswerModel
from seganswer_cli.model.conversation import stage1_sequence

SUPPORTED = "supported MLLMs: Qwen2.5-VL (qwen2_5_vl), Qwen3-VL (qwen3_vl)"


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    return write_published_qwen3_mllm(tmp_path_factory.mktemp("published") / "qwen3-vl")


def test_model_init_of_the_8b_preset_from_local_folders(monkeypatch, capsys, tmp_path, qwen3_folder, published_sam,
                                                       noise_image, blob_mask):
    out = tmp_path / "model"
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen3-vl-8b", "--mllm", qwen3_folder,
                        "--sam", published_sam, "--out", out)
    assert code in (0, None), err
    card = json.loads((out / "seganswer.json").read_text())
    assert card["preset"] == "qwen3-vl-8b" and card["mllm_source"] == str(qwen3_folder)
    assert card["view"]["zoom"] is False  # the paper's second look
    model = SegAnswerModel.from_pretrained(out)
    assert type(model.mllm).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(model.processor).__name__ == "Qwen3VLProcessor" and model.image_processor.patch_size == 16
    assert model.token_ids.seg == len(model.tokenizer) - 1 < model.mllm.get_input_embeddings().weight.shape[0]
    # the folder loads back to the same model
    again = SegAnswerModel.from_pretrained(model.save_pretrained(tmp_path / "again"))
    seq = stage1_sequence(model, model.global_view(noise_image), "the disc")
    with torch.no_grad():
        a, b = model([seq], [noise_image], [[blob_mask]]), again([seq], [noise_image], [[blob_mask]])
    assert torch.equal(a.hidden_states, b.hidden_states) and a.loss.item() == b.loss.item()


def test_an_mllm_of_the_other_backbone_for_a_preset(monkeypatch, capsys, tmp_path, qwen3_folder, published_mllm,
                                                   published_sam):
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen2.5-vl-7b", "--mllm", qwen3_folder,
                        "--sam", published_sam, "--out", tmp_path / "a")
    assert code == 2 and err.strip() == (f"error: preset 'qwen2.5-vl-7b' is a qwen2.5-vl model but {qwen3_folder} "
                                         "holds a Qwen3-VL model; use a qwen3-vl preset or a qwen2.5-vl folder"), err
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen3-vl-8b", "--mllm", published_mllm,
                        "--sam", published_sam, "--out", tmp_path / "b")
    assert code == 2 and "holds a Qwen2.5-VL model" in err and err.count("\n") == 1, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_mllm_of_an_unsupported_architecture_names_the_supported_ones(monkeypatch, capsys, tmp_path, qwen3_folder,
                                                                         published_sam, tiny_model):
    other = tmp_path / "llava"
    shutil.copytree(qwen3_folder, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen3-vl-8b", "--mllm", other,
                        "--sam", published_sam, "--out", tmp_path / "out")
    assert code == 1 and err.strip() == (f"error: {other / 'config.json'} describes a 'llava' model, which seganswer "
                                         f"does not run; {SUPPORTED}"), err
    # a seganswer folder whose MLLM is of another architecture: the same line, for every command
    saved = tiny_model.save_pretrained(tmp_path / "saved")
    capsys.readouterr()  # the save's own progress lines
    mllm_config = saved / "mllm" / "config.json"
    mllm_config.write_text(json.dumps({**json.loads(mllm_config.read_text()), "model_type": "idefics3"}))
    for args in (("model", "info", saved), ("plan", "-c", "stage2-tiny", "-m", saved)):
        code, err = run_cli(monkeypatch, capsys, *args)
        assert code == 1 and err.strip() == (f"error: {mllm_config} describes a 'idefics3' model, which seganswer "
                                             f"does not run; {SUPPORTED}"), (args, err)
