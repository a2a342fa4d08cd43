"""The ``shapes`` preset: a trained model folder shipped inside the package, and the CLI's default.

The real folder is trained elsewhere; these tests point the asset location at a stand-in (a ``tiny``
model written by ``save_pretrained``), so they stay fast and do not depend on it.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from seganswer_cli.errors import ModelFolderError, UsageError
from seganswer_cli.model import SegAnswerModel, presets
from test_cli_train import run_cli

REINSTALL = "pip install --force-reinstall seganswer"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """``(model, assets)``: a tiny model and an assets folder holding it as ``shapes/``."""
    model = SegAnswerModel.from_preset("tiny")
    assets = tmp_path_factory.mktemp("assets")
    model.save_pretrained(assets / "shapes")
    return model, assets


@pytest.fixture
def assets(standin, tmp_path, monkeypatch):
    """A fresh copy of the stand-in assets folder (tests may damage it), installed as the package's."""
    root = tmp_path / "assets"
    shutil.copytree(standin[1], root)
    monkeypatch.setattr(presets, "assets_root", lambda: root)
    return root


def assert_reinstall_line(error: ModelFolderError, what: str):
    message = str(error)
    assert "\n" not in message
    assert message.startswith("the shipped 'shapes' model is missing or damaged")
    assert what in message and REINSTALL in message and "pip install . again" in message


def test_packaged_folder_is_inside_the_package():
    assert presets.packaged_folder("shapes") == presets.assets_root() / "shapes"
    assert presets.assets_root().parent.name == "seganswer_cli"
    with pytest.raises(UsageError, match="built in code"):
        presets.packaged_folder("tiny")


@pytest.mark.parametrize("load", [SegAnswerModel.from_preset, SegAnswerModel.from_pretrained])
def test_shapes_loads_the_packaged_folder_bit_identically(standin, assets, load):
    model, _ = standin
    loaded = load("shapes")
    expected, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded.view_config == model.view_config


def test_packaged_preset_takes_no_replacement_parts(assets):
    with pytest.raises(UsageError, match="trained model folder"):
        SegAnswerModel.from_preset("shapes", mllm_path="some/mllm")


def test_missing_folder_says_how_to_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "assets_root", lambda: tmp_path / "nothing")
    with pytest.raises(ModelFolderError) as e:
        SegAnswerModel.from_preset("shapes")
    assert_reinstall_line(e.value, "does not exist")


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _wrong_projector(path):
    from safetensors.torch import save_file

    save_file({"fc1.weight": torch.zeros(8, 8), "fc1.bias": torch.zeros(8),
               "fc2.weight": torch.zeros(4, 8), "fc2.bias": torch.zeros(4)}, path)


def _other_sam_config(path):
    config = json.loads(path.read_text())
    config["mask_decoder_config"]["hidden_size"] *= 2
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "file, damage, what",
    [
        ("mask_decoder.safetensors", _truncate, "mask_decoder.safetensors"),
        ("projector.safetensors", lambda p: p.unlink(), "missing projector.safetensors"),
        ("seganswer.json", lambda p: p.write_text("{not json"), "not valid JSON"),
        ("mllm/model.safetensors", lambda p: p.unlink(), "mllm: no weights (expected one of model.safetensors"),
        ("projector.safetensors", _wrong_projector, "maps 8 -> 4"),
        ("mask_decoder_config.json", _other_sam_config, "mask_decoder_config.json describes"),
    ],
    ids=["truncated-sam", "no-projector", "bad-json", "no-mllm-weights", "wrong-projector", "wrong-sam-shapes"],
)
def test_damaged_folder_is_one_line_that_says_how_to_reinstall(assets, file, damage, what):
    damage(assets / "shapes" / file)
    with pytest.raises(ModelFolderError) as e:
        SegAnswerModel.from_preset("shapes")
    assert_reinstall_line(e.value, what)


def test_cli_defaults_to_shapes_and_a_missing_one_is_one_line(tmp_path, monkeypatch, capsys, noise_image):
    monkeypatch.setattr(presets, "assets_root", lambda: tmp_path / "nothing")
    noise_image.save(tmp_path / "img.png")
    for args in (["infer", tmp_path / "img.png", "What colour is the disc?"],
                 ["segment", tmp_path / "img.png", "the disc"],
                 ["model", "info", "shapes"]):
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 1 and out == "" and "Traceback" not in err, err
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]  # after infer's settings line
        assert "the shipped 'shapes' model is missing or damaged" in line and REINSTALL in line


def test_cli_segment_and_model_info_use_the_shipped_model(assets, tmp_path, monkeypatch, capsys, noise_image):
    noise_image.save(tmp_path / "img.png")
    code, out, err = run_cli(monkeypatch, capsys, "segment", tmp_path / "img.png", "the disc", "--json")
    assert code == 0, err
    assert json.loads(out)["mask"]["size"] == [180, 240]
    code, out, err = run_cli(monkeypatch, capsys, "model", "info", "shapes", "--json")
    assert code == 0, err
    assert json.loads(out)["preset"] == "tiny"  # the stand-in's own card
