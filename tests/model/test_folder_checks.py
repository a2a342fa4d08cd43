"""Model folders are checked before anything heavy is built (``folder_checks``): each bad folder is
one line on stderr naming the file, a non-zero exit, and no file changed. The folder without
``mllm/config.json`` (which transformers would build as a default 72B model) and the folder whose
config describes a far larger model than its weights run in a subprocess under a 4 GB address-space
limit: they must fail with our line, fast, not by running out of memory."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from seganswer_cli.cli import main
from seganswer_cli.errors import ModelFolderError
from seganswer_cli.model.folder_checks import safetensors_header, weight_entries

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shapes-4.png"
#: Address-space limit of the subprocess runs: enough to import torch and load a tiny model, far
#: too little for the 72B model a default configuration describes.
MEMORY_LIMIT = 4 * 1024**3


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["seganswer", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def assert_refused(monkeypatch, capsys, folder: Path, line: str, *args):
    """``seganswer model info FOLDER`` (or ``args``) exits non-zero with exactly ``error: LINE``, nothing changed."""
    before = checksums(folder)
    code, err = run_cli(monkeypatch, capsys, *(args or ("model", "info", folder)))
    assert code not in (0, None), err
    assert err.strip() == f"error: {line}", err
    assert checksums(folder) == before


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    """The tiny model as a seganswer folder (copy it before damaging it)."""
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("saved") / "m")


@pytest.fixture
def damaged(saved, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(saved, copy)
    return copy


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return subprocess.run([sys.executable, "-m", "seganswer_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=240, preexec_fn=_limited, env=env)


# -- the memory guard, under a memory limit -----------------------------------------------------------


def _no_config(folder):
    (folder / "mllm" / "config.json").unlink()
    return f"{folder / 'mllm'}: no config.json (not a transformers model folder)"


def _far_larger_config(folder):
    def wider(d):
        d["text_config"].update(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                                layer_types=["full_attention"] * 80)
    edit_json(folder / "mllm" / "config.json", wider)
    return f"{folder / 'mllm' / 'config.json'} describes "


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_no_config, _far_larger_config], ids=["no-config", "far-larger-config"])
def test_a_config_that_does_not_fit_the_weights_is_refused_under_a_memory_limit(damaged, damage):
    expected = damage(damaged)
    before = checksums(damaged)
    out = run_limited("infer", EXAMPLE, "What is the red shape?", "--model", damaged)
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    assert out.returncode == 1, out.stderr[-2000:]
    assert last.startswith(f"error: {expected}"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr
    if damage is _far_larger_config:
        assert "parameters but its weight files hold" in last and "nothing was built" in last
    assert checksums(damaged) == before


# -- damaged files, in process ------------------------------------------------------------------------


def test_truncated_mllm_weights_are_one_line(monkeypatch, capsys, damaged):
    path = damaged / "mllm" / "model.safetensors"
    entries = safetensors_header(path)
    last = max(entries, key=lambda k: entries[k].numel)  # any tensor past the cut is named
    truncate(path, path.stat().st_size // 2)
    code, err = run_cli(monkeypatch, capsys, "model", "info", damaged)
    assert code == 1 and err.strip().startswith(f"error: {path} is truncated: ") and err.count("\n") == 1, err
    assert "-byte file" in err and last  # names the byte it needs and the file's size


@pytest.mark.parametrize("name", ["mask_decoder.safetensors", "projector.safetensors"])
def test_truncated_sam_and_projector_weights_are_one_line(monkeypatch, capsys, damaged, name):
    path = damaged / name
    truncate(path, path.stat().st_size - 100)
    code, err = run_cli(monkeypatch, capsys, "model", "info", damaged)
    assert code == 1 and err.strip().startswith(f"error: {path} is truncated: ") and err.count("\n") == 1, err


def test_a_weight_file_cut_inside_its_header(monkeypatch, capsys, damaged):
    path = damaged / "mllm" / "model.safetensors"
    truncate(path, 4)
    assert_refused(monkeypatch, capsys, damaged, f"{path} is truncated or not a safetensors file (4 bytes)")


def test_a_tensor_shape_the_config_does_not_imply(monkeypatch, capsys, damaged):
    """A config narrower than its weights (so the memory guard passes and the shapes are compared)."""
    config = damaged / "mllm" / "config.json"
    text = json.loads(config.read_text())["text_config"]
    width, inner = text["hidden_size"], text["intermediate_size"]
    edit_json(config, lambda d: d["text_config"].update(intermediate_size=inner // 2))
    weights = damaged / "mllm" / "model.safetensors"
    assert_refused(monkeypatch, capsys, damaged,
                   f"{weights}: model.language_model.layers.0.mlp.gate_proj.weight has shape [{inner}, {width}] but "
                   f"{config} implies [{inner // 2}, {width}]")


def test_a_config_that_is_not_json(monkeypatch, capsys, damaged):
    config = damaged / "mask_decoder_config.json"
    config.write_text('{"model_type": "sam2",')
    code, err = run_cli(monkeypatch, capsys, "model", "info", damaged)
    assert code == 1 and err.strip().startswith(f"error: {config}: not valid JSON") and err.count("\n") == 1, err


def test_a_projector_for_another_model(monkeypatch, capsys, damaged):
    save_file({"fc1.weight": torch.zeros(32, 32), "fc1.bias": torch.zeros(32), "fc2.weight": torch.zeros(256, 32),
               "fc2.bias": torch.zeros(256)}, damaged / "projector.safetensors")
    assert_refused(monkeypatch, capsys, damaged,
                   f"{damaged / 'projector.safetensors'} maps 32 -> 256 but the model needs 64 -> 256 "
                   "(mllm/config.json's hidden size -> mask_decoder_config.json's prompt size)")


def test_missing_tokenizer(monkeypatch, capsys, damaged):
    (damaged / "mllm" / "tokenizer.json").unlink()
    assert_refused(monkeypatch, capsys, damaged,
                   f"{damaged / 'mllm'}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")


# -- --mllm and --sam folders -------------------------------------------------------------------------


def test_truncated_mllm_and_sam_folders_for_a_preset(monkeypatch, capsys, tmp_path, published_mllm, published_sam):
    mllm, sam = tmp_path / "mllm", tmp_path / "sam"
    shutil.copytree(published_mllm, mllm)
    shutil.copytree(published_sam, sam)
    truncate(sam / "model.safetensors", 1000)
    out = tmp_path / "out"
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen2.5-vl-7b", "--mllm", mllm, "--sam", sam, "--out", out)
    assert code == 1 and err.strip().startswith(f"error: {sam / 'model.safetensors'} is truncated") and err.count("\n") == 1, err
    assert not out.exists() or not any(out.iterdir())
    shutil.copy(published_sam / "model.safetensors", sam / "model.safetensors")
    truncate(mllm / "model.safetensors", (mllm / "model.safetensors").stat().st_size - 1)
    before = checksums(mllm)
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen2.5-vl-7b", "--mllm", mllm, "--sam", sam, "--out", out)
    assert code == 1 and err.strip().startswith(f"error: {mllm / 'model.safetensors'} is truncated") and err.count("\n") == 1, err
    assert checksums(mllm) == before and (not out.exists() or not any(out.iterdir()))


def test_mllm_folder_without_weights_or_chat_template(monkeypatch, capsys, tmp_path, published_mllm, published_sam):
    """Issue 25's bad inputs: config and tokenizer but no weights; a tokenizer without the chat template."""
    no_weights = tmp_path / "no-weights"
    shutil.copytree(published_mllm, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    assert_refused(monkeypatch, capsys, no_weights,
                   f"{no_weights}: no weights (expected one of model.safetensors, model.safetensors.index.json, "
                   "pytorch_model.bin, pytorch_model.bin.index.json)",
                   "model", "init", "qwen2.5-vl-7b", "--mllm", no_weights, "--sam", published_sam, "--out", tmp_path / "o1")
    no_template = tmp_path / "no-template"
    shutil.copytree(published_mllm, no_template, ignore=shutil.ignore_patterns("chat_template.*"))
    edit_json(no_template / "tokenizer_config.json", lambda d: d.pop("chat_template", None))
    assert_refused(monkeypatch, capsys, no_template,
                   f"{no_template}: the tokenizer has no chat template (chat_template.json, chat_template.jinja or "
                   "tokenizer_config.json's chat_template)",
                   "model", "init", "qwen2.5-vl-7b", "--mllm", no_template, "--sam", published_sam, "--out", tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_meta_sam_checkpoint_of_another_size_than_its_yaml(monkeypatch, capsys, tmp_path):
    """Issue 25's bad input: Meta's ``.pt`` beside a yaml of another size (``x.pt`` + ``x.yaml``)."""
    from test_sam_checkpoint import meta_state_of, tiny_yaml

    from seganswer_cli.model.mask_decoder import build_tiny_sam

    folder = tmp_path / "sam"
    folder.mkdir()
    torch.save({"model": meta_state_of(build_tiny_sam(image_size=128, seed=3, mlp_dim=2048))}, folder / "tiny.pt")
    (folder / "tiny.yaml").write_text(tiny_yaml(embed_dim=32))
    before = checksums(folder)
    code, err = run_cli(monkeypatch, capsys, "model", "init", "tiny", "--sam", folder / "tiny.pt", "--out", tmp_path / "o")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: {folder / 'tiny.pt'} does not match {folder / 'tiny.yaml'}: ") and "another size" in err
    assert checksums(folder) == before and not (tmp_path / "o").exists()


def test_truncated_meta_sam_checkpoint(monkeypatch, capsys, tmp_path):
    from test_sam_checkpoint import meta_state_of, tiny_yaml

    from seganswer_cli.model.mask_decoder import build_tiny_sam

    checkpoint = tmp_path / "tiny.pt"
    torch.save({"model": meta_state_of(build_tiny_sam(image_size=128, seed=3, mlp_dim=2048))}, checkpoint)
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())
    truncate(checkpoint, checkpoint.stat().st_size // 2)
    code, err = run_cli(monkeypatch, capsys, "model", "init", "tiny", "--sam", checkpoint, "--out", tmp_path / "o")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: {checkpoint} is not a SAM 2 checkpoint (cannot read it: "), err


# -- the header reader itself -------------------------------------------------------------------------


def test_header_equals_safetensors_own_reading(saved):
    path = saved / "mllm" / "model.safetensors"
    entries = safetensors_header(path)
    with safe_open(path, "pt") as f:
        assert sorted(f.keys()) == sorted(entries)
        for name in entries:
            assert tuple(f.get_slice(name).get_shape()) == entries[name].shape


def test_sharded_weights_with_a_missing_shard(tmp_path):
    save_file({"a": torch.zeros(2, 3)}, tmp_path / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="lists model-00002-of-00002.safetensors, which is missing"):
        weight_entries(tmp_path)
    save_file({"c": torch.zeros(1)}, tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(ModelFolderError, match="places b in model-00002-of-00002.safetensors, which does not hold it"):
        weight_entries(tmp_path)
    save_file({"b": torch.zeros(4)}, tmp_path / "model-00002-of-00002.safetensors")
    assert {k: v.shape for k, v in weight_entries(tmp_path).items()} == {"a": (2, 3), "b": (4,)}


def test_a_json_file_that_cannot_be_read_is_one_line(tmp_path):
    from seganswer_cli.errors import read_json

    (tmp_path / "config.json").mkdir()  # reading it fails as an unreadable file does
    with pytest.raises(ModelFolderError, match=r"^cannot read .*config\.json: Is a directory$"):
        read_json(tmp_path / "config.json", ModelFolderError)
