"""Configs: shipped YAMLs parse, flags override YAML, bad keys and values are one clear error."""

from __future__ import annotations

import pytest

from seganswer_cli.config import (
    Stage1Config,
    Stage2Config,
    Stage3Config,
    load_config,
    shipped_configs,
    to_dict,
)
from seganswer_cli.errors import UsageError


def test_every_shipped_yaml_parses():
    shipped = shipped_configs()
    assert {"stage1-tiny", "stage1-7b"} <= set(shipped)
    classes = {"standin": Stage1Config, "stage1": Stage1Config, "stage2": Stage2Config, "stage3": Stage3Config}
    for name in shipped:
        cls = classes[name.split("-")[0]]  # every shipped file is named <stage>-<recipe>
        cfg = load_config(cls, name)
        assert isinstance(cfg, cls)
        assert cfg.resolved().optim.lr > 0 and cfg.resolved().epochs > 0


def test_7b_recipe_is_the_papers():
    cfg = load_config(Stage1Config, "stage1-7b")
    assert cfg.model == "qwen2.5-vl-7b"
    projector = load_config(Stage1Config, "stage1-7b", {"phase": "projector"}).resolved()
    lora = load_config(Stage1Config, "stage1-7b", {"phase": "lora"}).resolved()
    assert (projector.optim.lr, projector.epochs) == (1e-3, 5)
    assert (lora.optim.lr, lora.epochs) == (2e-5, 3)


@pytest.mark.parametrize("stage, cls", [("stage1", Stage1Config), ("stage2", Stage2Config), ("stage3", Stage3Config)])
def test_qwen3_vl_recipes_are_the_7b_ones_on_the_other_model(stage, cls):
    """``base: <stage>-7b``: every setting of the paper's recipe, only the model (and its local-copy
    hint) differs."""
    qwen3 = to_dict(load_config(cls, f"{stage}-qwen3-vl-8b").resolved())
    paper = to_dict(load_config(cls, f"{stage}-7b").resolved())
    differs = {k for k in paper if paper[k] != qwen3[k]}
    assert differs == ({"model"} if stage == "stage1" else set())
    if stage == "stage1":
        assert qwen3["model"] == "qwen3-vl-8b"


def test_a_recipe_over_a_base_recipe(tmp_path):
    (tmp_path / "base.yaml").write_text("batch_size: 3\noptim:\n  lr: 0.1\n  weight_decay: 0.2\n")
    (tmp_path / "own.yaml").write_text(f"base: {tmp_path / 'base.yaml'}\noptim:\n  lr: 0.5\n")
    cfg = load_config(Stage1Config, tmp_path / "own.yaml")
    assert (cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (3, 0.5, 0.2)  # nested keys merged
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(UsageError, match="lead back to it"):
        load_config(Stage1Config, tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("base: [1]\n")
    with pytest.raises(UsageError, match="base must name a recipe"):
        load_config(Stage1Config, tmp_path / "bad.yaml")


def test_flags_override_yaml_and_yaml_overrides_defaults():
    cfg = load_config(Stage1Config, "stage1-tiny", {"optim.lr": 0.5, "max_steps": 7, "batch_size": None})
    assert cfg.optim.lr == 0.5 and cfg.max_steps == 7
    assert cfg.batch_size == 4  # None = flag not given: the YAML's value stays
    assert Stage1Config().batch_size == 1
    assert cfg.optim.schedule == "constant" and cfg.lora.rank == 8


def test_to_dict_round_trips():
    from seganswer_cli.config import from_dict

    cfg = load_config(Stage1Config, "stage1-7b", {"phase": "lora"}).resolved()
    assert from_dict(Stage1Config, to_dict(cfg)) == cfg


def test_bad_config_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(UsageError, match="unknown key.*learning_rate"):
        load_config(Stage1Config, bad)
    with pytest.raises(UsageError, match="config not found"):
        load_config(Stage1Config, tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="unknown phase"):
        Stage1Config(phase="full")
    with pytest.raises(UsageError, match="unknown loss term"):
        Stage1Config(loss_weights={"bce": 1.0})


def test_lr_schedule():
    from seganswer_cli.train.stage_setup import lr_schedule

    cosine = lr_schedule("cosine", warmup=2, total=10, min_ratio=0.0)
    assert [round(cosine(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    linear = lr_schedule("linear", warmup=0, total=4, min_ratio=0.5)
    assert [linear(s) for s in (0, 2, 4)] == [1.0, 0.75, 0.5]
    assert lr_schedule("constant", warmup=1, total=5, min_ratio=0.0)(3) == 1.0
