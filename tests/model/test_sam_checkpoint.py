"""SAM 2.1 from Meta's own checkpoint layout (``{"model": state_dict}`` + Hydra yaml).

The reference for the names is ``data/sam2_meta_tiny_keys.json``: every weight of a tiny
``SAM2Base`` built by Meta's own code, with the name transformers' conversion script gives it. The
test writes a checkpoint in that layout from a tiny transformers ``Sam2Model`` and checks that the
converted model gives the same masks as the same weights loaded from a transformers folder.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seganswer_cli.errors import ModelFolderError
from seganswer_cli.model.mask_decoder import SamMaskDecoder, build_tiny_sam, load_sam
from seganswer_cli.model.sam_checkpoint import convert_state_dict, hf_key, load_meta_sam, sam2_config

REFERENCE = json.loads((Path(__file__).parent / "data" / "sam2_meta_tiny_keys.json").read_text())["keys"]

#: The image model of a tiny SAM 2.1 in Meta's yaml layout (the tiny SAM of the tests, with SAM
#: 2.1's own mask-decoder MLP of 2048, which Meta's layout fixes). The video modules of a real
#: yaml are left out: conversion does not read them.
TINY_META_YAML = """\
# @package _global_
model:
  _target_: sam2.modeling.sam2_base.SAM2Base
  image_encoder:
    _target_: sam2.modeling.backbones.image_encoder.ImageEncoder
    scalp: 1
    trunk:
      _target_: sam2.modeling.backbones.hieradet.Hiera
      embed_dim: {embed_dim}
      num_heads: 1
      head_mul: 1.0
      stages: [1, 1, 2, 1]
      global_att_blocks: [3]
      window_pos_embed_bkg_spatial_size: [7, 7]
      window_spec: [8, 4, 14, 7]
    neck:
      _target_: sam2.modeling.backbones.image_encoder.FpnNeck
      d_model: 256
      backbone_channel_list: {channels}
      fpn_top_down_levels: [2, 3]
      fpn_interp_model: nearest
  image_size: 128
  use_high_res_features_in_sam: true
  pred_obj_scores: true
  pred_obj_scores_mlp: true
"""


def tiny_yaml(embed_dim: int = 16) -> str:
    return TINY_META_YAML.format(embed_dim=embed_dim, channels=[8 * embed_dim, 4 * embed_dim, 2 * embed_dim, embed_dim])


def test_names_equal_transformers_conversion_of_meta_keys():
    for meta_key, ref in REFERENCE.items():
        assert hf_key(meta_key) == ref["transformers"], meta_key


def meta_state_of(sam) -> dict[str, torch.Tensor]:
    """``sam``'s weights under Meta's names and shapes (the reference's list), video-only weights random."""
    hf = sam.state_dict()
    gen = torch.Generator().manual_seed(0)
    state = {}
    for meta_key, ref in REFERENCE.items():
        name = ref["transformers"]
        if name is None:
            state[meta_key] = torch.randn(ref["shape"], generator=gen)
        elif name.startswith("prompt_encoder.point_embed."):  # Meta: four (1, 256) embeddings
            row = int(name.split(".")[2])
            state[meta_key] = hf["prompt_encoder.point_embed.weight"][row : row + 1].clone()
        else:
            state[meta_key] = hf[name].clone()
        assert list(state[meta_key].shape) == ref["shape"], meta_key
    return state


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam(image_size=128, seed=3, mlp_dim=2048)


@pytest.fixture(scope="module")
def checkpoints(tiny_sam, tmp_path_factory):
    """The same weights twice: a transformers folder, and Meta's ``.pt`` + yaml."""
    root = tmp_path_factory.mktemp("sam")
    tiny_sam.save_pretrained(root / "hf")
    torch.save({"model": meta_state_of(tiny_sam)}, root / "tiny.pt")
    (root / "tiny.yaml").write_text(tiny_yaml())
    return root


def test_every_weight_is_converted(tiny_sam):
    state = convert_state_dict(meta_state_of(tiny_sam))
    expected = tiny_sam.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_config_from_meta_yaml_equals_the_model_it_describes(tiny_sam):
    import yaml

    converted = sam2_config(yaml.safe_load(tiny_yaml())["model"]).to_dict()
    reference = tiny_sam.config.to_dict()
    for part in ("vision_config", "prompt_encoder_config", "mask_decoder_config"):
        assert converted[part] == reference[part], part
    assert converted["architectures"] == ["Sam2Model"]


def test_meta_checkpoint_masks_equal_transformers_folder(checkpoints):
    """Converted on load (``--sam tiny.pt``, its yaml beside it) and loaded from the transformers
    folder: the same image features, and exactly the same mask logits and IoU for point and token prompts."""
    from_meta = SamMaskDecoder(load_sam(str(checkpoints / "tiny.pt")))
    from_hf = SamMaskDecoder(load_sam(str(checkpoints / "hf")))
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 128, 128)
    prompts = torch.randn(3, 256)
    points = torch.tensor([[30.0, 40.0], [100.0, 64.0]])
    with torch.no_grad():
        a, b = from_meta.encode(pixels), from_hf.encode(pixels)
        assert torch.equal(a.embeddings, b.embeddings)
        for p in (prompts, from_meta.point_prompts(points)):
            ma, mb = from_meta.decode(a, p), from_hf.decode(b, p)
            assert torch.equal(ma.low_res_logits, mb.low_res_logits) and torch.equal(ma.iou, mb.iou)
            # the object score differs by one float32 rounding (3.7e-9) between the two loading paths
            torch.testing.assert_close(ma.object_logits, mb.object_logits, rtol=0, atol=1e-7)
            assert (ma.low_res_logits > 0).any() and (ma.low_res_logits < 0).any()  # a real mask, not constant


def test_convert_sam_writes_a_transformers_folder(checkpoints, tmp_path):
    from typer.testing import CliRunner

    from seganswer_cli.cli import app

    out = tmp_path / "converted"
    result = CliRunner().invoke(app, ["model", "convert-sam", str(checkpoints / "tiny.pt"),
                                      "--config", str(checkpoints / "tiny.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Sam2Model"]
    reloaded, original = load_sam(str(out)).state_dict(), load_sam(str(checkpoints / "hf")).state_dict()
    assert all(torch.equal(reloaded[k], original[k]) for k in original)


def test_published_file_names_need_no_yaml(tmp_path):
    from seganswer_cli.model.sam_checkpoint import find_config

    section, source = find_config(tmp_path / "sam2.1_hiera_large.pt")
    config = sam2_config(section)
    backbone = config.vision_config.backbone_config
    assert backbone.embed_dim_per_stage == [144, 288, 576, 1152] and backbone.blocks_per_stage == [2, 6, 36, 4]
    assert backbone.window_size_per_stage == [8, 4, 16, 8] and config.prompt_encoder_config.image_size == 1024
    with pytest.raises(ModelFolderError, match="not a published SAM 2.1 file name"):
        find_config(tmp_path / "my_sam.pt")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "seganswer_cli", *args], capture_output=True, text=True, timeout=300)


def test_bad_checkpoints_are_one_line(checkpoints, tmp_path):
    other_size = tmp_path / "wide.yaml"
    other_size.write_text(tiny_yaml(embed_dim=32))
    with pytest.raises(ModelFolderError, match=r"tiny\.pt does not match .*wide\.yaml"):
        load_meta_sam(checkpoints / "tiny.pt", other_size)
    out = _run("model", "convert-sam", str(checkpoints / "tiny.pt"), "--config", str(other_size), "--out", str(tmp_path / "x"))
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "tiny.pt does not match" in out.stderr and "wide.yaml" in out.stderr and "Traceback" not in out.stderr

    not_sam = tmp_path / "classifier.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, not_sam)
    with pytest.raises(ModelFolderError, match="classifier.pt is not a SAM 2 checkpoint"):
        load_meta_sam(not_sam, checkpoints / "tiny.yaml")
    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a checkpoint\n")
    out = _run("model", "init", "tiny", "--sam", str(garbage), "--out", str(tmp_path / "y"))
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "notes.pt is not a SAM 2 checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_saved_mask_decoder_config_describes_the_image_model(tmp_path):
    """The published SAM 2.1 configs name ``Sam2VideoModel`` and carry video-only settings; the
    saved folder's ``mask_decoder_config.json`` describes the ``Sam2Model`` it holds."""
    from seganswer_cli.model import SegAnswerModel

    model = SegAnswerModel.from_preset("tiny")
    config = model.mask_decoder.sam.config
    config.architectures = ["Sam2VideoModel"]  # as loaded from facebook/sam2.1-hiera-large
    config.num_maskmem, config.memory_attention_hidden_size = 7, 256
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "mask_decoder_config.json").read_text())
    assert saved["architectures"] == ["Sam2Model"] and saved["model_type"] == "sam2"
    assert "num_maskmem" not in saved and "memory_attention_hidden_size" not in saved
    reloaded = SegAnswerModel.from_pretrained(tmp_path / "m")
    assert reloaded.mask_decoder.sam.config.vision_config.to_dict() == config.vision_config.to_dict()
