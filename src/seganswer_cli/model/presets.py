"""Named model configurations: ``tiny`` and ``shapes-base`` (built in code), ``shapes`` (a trained
model folder shipped inside the package), ``qwen2.5-vl-7b`` (the paper's) and ``qwen2.5-vl-7b-zoom``
(the same with a zoomed second look); on the second backbone (``backbones``), ``qwen3-vl-8b``
(Qwen3-VL-8B-Instruct + SAM 2.1) and its toy-width stand-ins ``tiny-qwen3-vl`` and
``shapes-base-qwen3-vl``.

A preset says where the MLLM and SAM 2.1 come from and how the segmented second look is built;
``SegAnswerModel.from_preset(name)`` assembles it (or loads the shipped folder of a packaged
preset), ``save_pretrained`` writes it as one folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path

from seganswer_cli.errors import UsageError

CROP_MODES: tuple[str, ...] = ("cells", "box")
"""What a zoomed second look cuts out (``ViewConfig.crop``)."""


@dataclass
class ViewConfig:
    """How the segmented second look is built (see ``sparse_patches``)."""

    zoom: bool = True
    """Re-encode the mask's region from the native image at up to the pixel budget (the zoom-in).
    Not the paper's second look, which keeps each segmented patch at its own position in the original
    image (``qwen2.5-vl-7b`` has it off): zoomed, several tokens share one original cell, at
    fractional positions. The built-in demo presets zoom (their global view is coarse)."""
    min_overlap: float = 0.0
    """Keep a cell when the mask covers more than this fraction of it (0: any pixel)."""
    zoom_min_pixels: int | None = None
    """Smallest encoded size of the crop in pixels (None: the processor's ``min_pixels``)."""
    zoom_max_pixels: int | None = None
    """Largest encoded size of the crop in pixels (None: the processor's ``max_pixels``)."""
    background: tuple[int, int, int] = (0, 0, 0)
    """RGB colour painted over pixels outside the mask before encoding."""
    crop: str = "cells"
    """What the zoom re-encodes: ``cells``, the global view's cells that cover the mask's box (at a
    high global resolution, the mask's box to the nearest 28 px); ``box``, the mask's box grown by
    ``crop_margin``, for a global view so coarse that a small region is a corner of one cell."""
    crop_margin: float = 0.25
    """With ``crop="box"``: the margin on every side, as a fraction of the box's longer side."""

    def __post_init__(self):
        if not 0.0 <= self.min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in [0, 1), got {self.min_overlap}")
        self.background = tuple(int(c) for c in self.background)
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be an RGB triple in 0..255, got {self.background}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {self.crop!r}")
        if not 0.0 <= self.crop_margin <= 4.0:
            raise ValueError(f"crop_margin must be in [0, 4], got {self.crop_margin}")

    @classmethod
    def from_dict(cls, d: dict) -> ViewConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Preset:
    """Where a model's parts come from."""

    name: str
    description: str
    mllm: str | None
    """Hub id or folder of the MLLM; None: the tiny model built in code."""
    sam: str | None
    """Hub id or folder of SAM 2.1 (Hugging Face format); None: the tiny SAM built in code."""
    tiny_mllm: dict = field(default_factory=dict)
    """Arguments of ``build_tiny_mllm`` (tiny presets only)."""
    tiny_sam: dict = field(default_factory=dict)
    """Arguments of ``build_tiny_sam`` (tiny presets only)."""
    view: ViewConfig = field(default_factory=ViewConfig)
    packaged: str | None = None
    """A trained model folder shipped inside the package (``seganswer_cli/assets/<packaged>``);
    loading the preset loads it instead of building a random model."""
    backbone: str = "qwen2.5-vl"
    """The MLLM's architecture (``backbones.BACKBONES``): what a tiny preset builds, what the MLLM
    of a hub preset (or the local copy given for it) must be."""
    world: str | None = None
    """The toy world a model of this preset was trained on (``shapes``: flat-coloured shapes on
    plain or noisy backgrounds), whose answers about other pictures mean little; None: any picture."""

    def to_dict(self) -> dict:
        return asdict(self)


#: The demo architecture: a global view of at most 36 LLM tokens (a 640x480 scene at ~0.3x, so a
#: 20-32 px target is under one token) and a second look of 36 tokens' worth of pixels cut around
#: the mask's box (margin 0.25 of its longer side), where a 20-32 px target is ~110 px across.
SHAPES_MLLM = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384,
                   vision_depth=3, vision_hidden_size=64, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 36)
SHAPES_VIEW = ViewConfig(zoom=True, zoom_min_pixels=28 * 28 * 36, zoom_max_pixels=28 * 28 * 36, crop="box", crop_margin=0.25)

SHAPES_BASE = Preset(
    name="shapes-base",
    description="Random-init architecture of the shipped demo model (recipes/shapes-demo.sh starts here).",
    mllm=None,
    sam=None,
    tiny_mllm=SHAPES_MLLM,
    tiny_sam=dict(image_size=256),
    view=SHAPES_VIEW,
    world="shapes",
)

#: The global view's pixel budget ``(min_pixels, max_pixels)`` of the 7B presets and of every 7B
#: recipe: Qwen2.5-VL-7B-Instruct's own processor (its ``preprocessor_config.json``: 4 to 16,384
#: tokens of 28x28 px), which no preset or recipe changes; the paper states no budget. A 1920x1080
#: photo is resized to 1932x1092 px, 69x39 cells: 2,691 visual tokens.
QWEN_7B_PIXELS = (56 * 56, 28 * 28 * 16384)

#: The paper's model. The second look keeps each segmented cell at its own position in the original
#: image (§3.2, Figure 1b): no zoom, so the kept tokens are the global view's cells, pixel for pixel,
#: at their integer grid positions. ``qwen2.5-vl-7b-zoom`` re-encodes the region instead.
QWEN_7B = Preset(
    name="qwen2.5-vl-7b",
    description="The paper's model: Qwen2.5-VL-7B-Instruct + SAM 2.1 Hiera-Large; second look without zoom, "
                "at the processor's own pixel budget (3,136 to 12,845,056 px).",
    mllm="Qwen/Qwen2.5-VL-7B-Instruct",
    sam="facebook/sam2.1-hiera-large",
    view=ViewConfig(zoom=False),
)

#: The shapes demo on Qwen3-VL: the same widths and depths, the same budgets in LLM tokens (36 of
#: 32 px instead of 28 px: a Qwen3-VL token covers 16-px patches).
SHAPES_BASE_QWEN3 = replace(
    SHAPES_BASE,
    name="shapes-base-qwen3-vl",
    description="shapes-base on the Qwen3-VL backbone (recipes/shapes-demo.sh with BACKBONE=qwen3-vl starts here).",
    tiny_mllm=dict(SHAPES_MLLM, min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 36),
    view=replace(SHAPES_VIEW, zoom_min_pixels=32 * 32 * 36, zoom_max_pixels=32 * 32 * 36),
    backbone="qwen3-vl",
)

#: Qwen3-VL-8B-Instruct's own pixel budget (its ``preprocessor_config.json``: 65,536 to 16,777,216
#: px, i.e. 64 to 16,384 tokens of 32x32 px), as ``QWEN_7B_PIXELS`` is Qwen2.5-VL-7B's.
QWEN3_8B_PIXELS = (256 * 256, 32 * 32 * 16384)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="Random-init Qwen2.5-VL and SAM 2.1 at toy width, built in code (tests, CPU).",
        mllm=None,
        sam=None,
        tiny_mllm=dict(hidden_size=64, num_layers=2, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64),
        tiny_sam=dict(image_size=128),
        view=ViewConfig(zoom=True, zoom_max_pixels=28 * 28 * 64),
    ),
    "shapes-base": SHAPES_BASE,
    "shapes": replace(
        SHAPES_BASE,
        name="shapes",
        description="The shipped demo model: shapes-base trained through the whole pipeline on the shapes world.",
        packaged="shapes",
    ),
    "qwen2.5-vl-7b": QWEN_7B,
    "qwen2.5-vl-7b-zoom": replace(
        QWEN_7B,
        name="qwen2.5-vl-7b-zoom",
        description="qwen2.5-vl-7b with a zoomed second look (not the paper's: kept cells sit at fractional "
                    "positions of the original grid, several per original cell).",
        view=ViewConfig(zoom=True),
    ),
    "tiny-qwen3-vl": Preset(
        name="tiny-qwen3-vl",
        description="Random-init Qwen3-VL (interleaved M-RoPE, DeepStack into 2 of 3 decoder layers) and SAM 2.1 "
                    "at toy width, built in code (tests, CPU).",
        mllm=None,
        sam=None,
        tiny_mllm=dict(hidden_size=64, num_layers=3, vision_depth=3, min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 64),
        tiny_sam=dict(image_size=128),
        view=ViewConfig(zoom=True, zoom_max_pixels=32 * 32 * 64),
        backbone="qwen3-vl",
    ),
    "shapes-base-qwen3-vl": SHAPES_BASE_QWEN3,
    "qwen3-vl-8b": Preset(
        name="qwen3-vl-8b",
        description="The paper's method on Qwen3-VL-8B-Instruct + SAM 2.1 Hiera-Large; second look without zoom, "
                    "at the processor's own pixel budget (65,536 to 16,777,216 px).",
        mllm="Qwen/Qwen3-VL-8B-Instruct",
        sam="facebook/sam2.1-hiera-large",
        view=ViewConfig(zoom=False),
        backbone="qwen3-vl",
    ),
}


def model_world(info: dict) -> str | None:
    """The toy world (``Preset.world``) of a model whose ``seganswer.json`` names ``info["preset"]``."""
    preset = PRESETS.get(str(info.get("preset")))
    return preset.world if preset is not None else None


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def assets_root() -> Path:
    """The folder the packaged model folders are installed in: ``seganswer_cli/assets``.

    Tests point it at a stand-in folder with ``monkeypatch.setattr(presets, "assets_root", ...)``.
    """
    return Path(str(resources.files("seganswer_cli") / "assets"))


def packaged_folder(preset: str | Preset) -> Path:
    """Where the trained model folder of a packaged preset (``shapes``) is installed."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.packaged is None:
        raise UsageError(f"preset {preset.name!r} is built in code; it ships no model folder")
    return assets_root() / preset.packaged
