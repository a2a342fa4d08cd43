"""Shared fixtures: tiny models built in code (seconds on CPU), deterministic images and masks."""

import numpy as np
import pytest
from PIL import Image

from seganswer_cli.model.conversation import reasoning_sequence


@pytest.fixture(scope="session")
def tiny_model():
    """One tiny SegAnswerModel for the session; tests that change weights build their own."""
    from seganswer_cli.model import SegAnswerModel

    return SegAnswerModel.from_preset("tiny")


#: The tiny preset of each backbone (Qwen2.5-VL, Qwen3-VL): the tests that anchor the model code to
#: transformers' own run on each.
BACKBONE_PRESETS = ("tiny", "tiny-qwen3-vl")


@pytest.fixture(scope="session", params=BACKBONE_PRESETS)
def backbone_model(request):
    """A tiny SegAnswerModel of each backbone (the test runs once per backbone); ``tiny_model`` for Qwen2.5-VL."""
    from seganswer_cli.model import SegAnswerModel

    return request.getfixturevalue("tiny_model") if request.param == "tiny" else SegAnswerModel.from_preset(request.param)


@pytest.fixture
def noise_image():
    """A 180x240 RGB image of seeded noise (every pixel distinct enough to catch misplaced crops)."""
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(180, 240, 3) * 255).astype(np.uint8))


@pytest.fixture
def blob_mask():
    """A non-rectangular mask on the 180x240 image: a disc plus a thin bar."""
    yy, xx = np.mgrid[:180, :240]
    mask = (yy - 70) ** 2 + (xx - 90) ** 2 < 35**2
    mask[130:136, 100:200] = True
    return mask


def _noise(seed, h=180, w=240):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8))


def _patterned(preset: str):
    """A tiny model of ``preset`` taught (by overfitting two conversations, ~2 s) the paper's Stage 2
    pattern: ``... observe <|seg|>.`` -> segmented region -> ``<answer> ... </answer>.``

    Returns ``(model, cases)``, each case ``(image, question, mask, answer)``. Random weights never
    emit ``<|seg|>``; this model does, so the reasoning loop's seg path runs for real.
    """
    import torch

    from seganswer_cli.model import SegAnswerModel

    torch.manual_seed(0)
    model = SegAnswerModel.from_preset(preset).train()
    cases = []
    for seed, question, box, answer in [(0, "What colour is the disc?", (40, 100, 60, 150), "red"),
                                         (1, "Which shape is on the left?", (90, 160, 20, 80), "square")]:
        mask = np.zeros((180, 240), bool)
        mask[box[0] : box[1], box[2] : box[3]] = True
        cases.append((_noise(seed), question, mask, answer))
    sequences = [
        reasoning_sequence(model, model.global_view(image), question, answer, view=model.segmented_view(image, mask))
        for image, question, mask, answer in cases
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(120):
        loss = model(sequences).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), cases


@pytest.fixture(scope="session")
def patterned_model():
    """The patterned tiny Qwen2.5-VL (``_patterned``)."""
    return _patterned("tiny")


@pytest.fixture(scope="session")
def patterned_qwen3_model():
    """The patterned tiny Qwen3-VL (``_patterned``)."""
    return _patterned("tiny-qwen3-vl")


@pytest.fixture(scope="session", params=BACKBONE_PRESETS)
def patterned_backbone_model(request):
    """The patterned tiny model of each backbone (``_patterned``)."""
    name = {"tiny": "patterned_model", "tiny-qwen3-vl": "patterned_qwen3_model"}[request.param]
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def published_mllm(tmp_path_factory):
    """A shrunk random-weight Qwen2.5-VL folder in the published layout of Qwen2.5-VL-7B-Instruct
    (bf16, spare embedding rows, its own generation_config.json; ``published_mllm.py``)."""
    from published_mllm import write_published_mllm

    return write_published_mllm(tmp_path_factory.mktemp("published") / "qwen2.5-vl")


@pytest.fixture(scope="session")
def published_sam(tmp_path_factory):
    """A tiny SAM 2.1 saved as a transformers ``Sam2Model`` folder (what ``--sam`` takes)."""
    from seganswer_cli.model.mask_decoder import build_tiny_sam

    folder = tmp_path_factory.mktemp("published") / "sam2.1"
    build_tiny_sam(image_size=128).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def published_model(tmp_path_factory, published_mllm, published_sam):
    """``seganswer model init qwen2.5-vl-7b --mllm DIR --sam DIR`` on the published-layout folders."""
    from typer.testing import CliRunner

    from seganswer_cli.cli import app

    out = tmp_path_factory.mktemp("published") / "model"
    result = CliRunner().invoke(app, ["model", "init", "qwen2.5-vl-7b", "--mllm", str(published_mllm),
                                      "--sam", str(published_sam), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
