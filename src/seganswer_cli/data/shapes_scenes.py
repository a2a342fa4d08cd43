"""The shapes world: seeded scenes of coloured shapes with exact ground truth, at any canvas size.

Every test and the shipped demo model train on it, offline. A scene is a list of shapes (kind,
colour, size, position) painted bottom to top over a grey background, optionally over grey
clutter specks and background noise; later shapes occlude earlier ones, never by more than
``max_occlusion`` of an object's area. The scene graph is kept with every sample
(``extra["scene"]``), so the ground truth can be re-derived from it:

* ``resolve(expression, scene)`` and ``answer_question(question, scene)`` (``shapes_language``)
  re-derive what an expression names and what a question's answer is;
* ``visible_mask(scene, ids)`` rasterizes the visible pixels of shapes from the graph alone.

This module holds the world and its pixels: the settings (``ShapesConfig``, the named ``WORLDS``),
the scene graph (``Shape``, ``Scene``), rasterization and scene generation. The expression and
question grammar is in ``shapes_language``; the samples and data set folders made from scenes are
in ``shapes_datasets``.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from seganswer_cli.errors import UsageError

#: Colour names and the exact RGB they are painted with (far apart, and far from the greys).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 135, 30),
    "cyan": (40, 200, 210),
    "pink": (245, 130, 190),
}
#: Shape kinds, each a plural by adding "s".
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")
BACKGROUND = (128, 128, 128)
CLUTTER_GREYS = ((80, 80, 80), (100, 100, 100), (160, 160, 160), (180, 180, 180))
BACKGROUNDS = ("grey", "varied")
MC_LAYOUTS = ("vstar", "mmbench")
PHRASINGS = ("fixed", "varied")
#: Least RGB distance between a ``varied`` background and every shape colour (and between clutter and
#: the shapes), so that no shape ever fades into what is behind it.
MIN_CONTRAST = 90.0
QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "position", "count")
EXPRESSION_FAMILIES: tuple[str, ...] = ("simple", "superlative", "relation")


@dataclass
class ShapesConfig:
    """Parameters of the shapes world. Defaults give a 256 x 256 canvas with 3-7 shapes."""

    width: int = 256
    """Canvas width in pixels (any size: 64 for unit tests, 4096 for "high-resolution" scenes)."""
    height: int = 256
    """Canvas height in pixels."""
    min_objects: int = 3
    """Fewest shapes in a scene (the VQA/RL target included)."""
    max_objects: int = 7
    """Most shapes in a scene."""
    min_size: int = 16
    """Smallest shape, as the side of the square it is drawn in (pixels)."""
    max_size: int = 64
    """Largest shape side (pixels); must fit the canvas."""
    target_min_size: int | None = None
    """Smallest side of the VQA/RL target; None means ``min_size``. Set it to a few dozen pixels on a
    large canvas to make targets hard to read at a low global pixel budget but easy once zoomed."""
    target_max_size: int | None = None
    """Largest side of the VQA/RL target; None means ``min_size + (max_size - min_size) // 4``."""
    kinds: tuple[str, ...] = KINDS
    """Shape kinds to draw from (subset of ``KINDS``)."""
    colours: tuple[str, ...] = tuple(COLOURS)
    """Colour names to draw from (subset of ``COLOURS``); at least 2."""
    distractor_similarity: float = 0.5
    """Probability that a distractor copies the kind or the colour of the target (0: independent
    attributes; 1: every distractor shares one attribute with it)."""
    max_occlusion: float = 0.35
    """Largest fraction of a shape that shapes above it may hide (keeps every shape recognisable)."""
    clutter: int = 0
    """Grey specks (2-6 px) scattered under the shapes; never referred to or counted."""
    background_noise: float = 0.0
    """Standard deviation (0-255 scale) of Gaussian noise on the background; shapes stay exact colours.
    With ``background="varied"`` it is the largest: each scene draws its own between 0 and this, and half
    the scenes are plain."""
    background: str = "grey"
    """``grey``: every scene on the mid grey ``BACKGROUND``; ``varied``: each scene on its own plain grey
    (any level) or muted colour, at least ``MIN_CONTRAST`` from every shape colour."""
    canvas_sides: tuple[int, int] | None = None
    """``(min, max)``: each scene draws its own width and height in this range (many sizes and aspect
    ratios), within ``max_canvas_pixels``; None: every scene is ``width`` x ``height``. Shape sizes must
    fit the smallest side."""
    max_canvas_pixels: int | None = None
    """With ``canvas_sides``: largest width x height of a canvas (the rest are drawn again)."""
    max_aspect: float = 2.5
    """With ``canvas_sides``: largest ratio of a canvas's long side to its short side (2.5: from square
    to wider than 16:9 and phone portraits; the rest are drawn again)."""
    size_margin: float = 1.3
    """"the largest/smallest X" is used only when the extreme is this many times the runner-up's side."""
    multi_object: float = 0.2
    """Fraction of referring expressions naming several objects (``all red shapes``, ``the A and the B``)."""
    multiple_choice: float = 0.5
    """Fraction of VQA questions posed as multiple choice (the rest are free text or yes/no)."""
    mc_layouts: tuple[str, ...] = ("vstar",)
    """Layouts a multiple-choice question is asked in, one drawn per question: ``vstar`` (the
    question, ``(A) ...`` lines, the LLaVA letter instruction) and ``mmbench`` (VLMEvalKit's
    ``Question:``/``Options:`` layout); both answered with the letter."""
    yes_no: float = 0.0
    """Fraction of VQA questions asked as yes/no (POPE's "Is there a ... in the image?" or a check of
    the target's colour or kind), half of them answered yes; drawn before ``multiple_choice``."""
    phrasings: str = "fixed"
    """``fixed``: each question type in its one original wording; ``varied``: any phrasing of
    ``shapes_language.QUESTION_TEMPLATES``, descriptions said other ways (``small`` for ``smallest``)."""
    near_target: float = 0.0
    """Fraction of small-target scenes (VQA/RL) whose target is placed next to a distractor, its box
    within ``target size`` pixels of the distractor's: a box around the target then holds part of
    the distractor too, a mask does not."""
    question_types: tuple[str, ...] = QUESTION_TYPES
    """VQA/RL question types to draw from (``count`` is asked in RL prompts only)."""
    expressions: tuple[str, ...] = EXPRESSION_FAMILIES
    """Families of single-object descriptions: ``simple`` (the red star), ``superlative`` (the
    smallest star), ``relation`` (the star left of the blue circle)."""

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise UsageError(f"canvas must be at least 16x16, got {self.width}x{self.height}")
        if self.canvas_sides is not None:
            self.canvas_sides = (int(self.canvas_sides[0]), int(self.canvas_sides[1]))
            lo_side, hi_side = self.canvas_sides
            if not 16 <= lo_side <= hi_side:
                raise UsageError(f"canvas_sides must be (min, max) with 16 <= min <= max, got {self.canvas_sides}")
            if self.max_aspect < 1.0:
                raise UsageError(f"max_aspect must be >= 1, got {self.max_aspect}")
            if self.max_canvas_pixels is not None and self.max_canvas_pixels < lo_side * lo_side:
                raise UsageError(f"max_canvas_pixels {self.max_canvas_pixels} is below the smallest canvas "
                                 f"{lo_side}x{lo_side}")
        self.mc_layouts = tuple(self.mc_layouts)
        if not self.mc_layouts or set(self.mc_layouts) - set(MC_LAYOUTS):
            raise UsageError(f"mc_layouts must be a non-empty subset of {MC_LAYOUTS}, got {self.mc_layouts}")
        if self.multiple_choice + self.yes_no > 1.0:
            raise UsageError(f"multiple_choice + yes_no must be <= 1, got {self.multiple_choice} + {self.yes_no}")
        if self.phrasings not in PHRASINGS:
            raise UsageError(f"phrasings must be one of {', '.join(PHRASINGS)}, got {self.phrasings!r}")
        if self.background not in BACKGROUNDS:
            raise UsageError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise UsageError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 4 <= self.min_size <= self.max_size <= self.smallest_side:
            raise UsageError(
                f"need 4 <= min_size <= max_size <= canvas side, got {self.min_size}, {self.max_size} "
                f"on {self.canvas_text}"
            )
        unknown = set(self.kinds) - set(KINDS) | set(self.colours) - set(COLOURS)
        if unknown or not self.kinds or len(self.colours) < 2:
            raise UsageError(f"kinds must come from {KINDS}, colours (>= 2) from {tuple(COLOURS)}; bad: {unknown}")
        self.kinds, self.colours = tuple(self.kinds), tuple(self.colours)
        lo, hi = self.target_size_range
        if not 4 <= lo <= hi <= self.smallest_side:
            raise UsageError(f"target size range {lo}..{hi} does not fit the canvas")
        for name in ("distractor_similarity", "max_occlusion", "multi_object", "multiple_choice", "near_target",
                     "yes_no"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.size_margin < 1.0 or self.clutter < 0 or self.background_noise < 0:
            raise UsageError("size_margin must be >= 1; clutter and background_noise >= 0")
        self.question_types, self.expressions = tuple(self.question_types), tuple(self.expressions)
        if not self.question_types or set(self.question_types) - set(QUESTION_TYPES):
            raise UsageError(f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {self.question_types}")
        if "simple" not in self.expressions or set(self.expressions) - set(EXPRESSION_FAMILIES):
            raise UsageError(f"expressions must include 'simple' and come from {EXPRESSION_FAMILIES}, "
                             f"got {self.expressions}")

    @property
    def smallest_side(self) -> int:
        """The shortest side any canvas of this world can have."""
        return self.canvas_sides[0] if self.canvas_sides is not None else min(self.width, self.height)

    @property
    def canvas_text(self) -> str:
        """``640x480``, or ``192..800 px sides`` for a world of many canvases."""
        if self.canvas_sides is None:
            return f"{self.width}x{self.height}"
        return f"{self.canvas_sides[0]}..{self.canvas_sides[1]} px sides"

    @property
    def target_size_range(self) -> tuple[int, int]:
        """(min, max) side of the VQA/RL target."""
        lo = self.target_min_size if self.target_min_size is not None else self.min_size
        hi = self.target_max_size if self.target_max_size is not None else max(
            lo, self.min_size + (self.max_size - self.min_size) // 4)
        return lo, hi


@dataclass
class Shape:
    """One shape of a scene, drawn in the square ``[x, x + size) x [y, y + size)``."""

    id: int
    """Index in the scene's paint order (0 is painted first, at the bottom)."""
    kind: str
    """One of ``KINDS``."""
    colour: str
    """One of ``COLOURS``."""
    size: int
    """Side of the square the shape is drawn in, in pixels (what "largest"/"smallest" compare)."""
    x: int
    """Left edge (pixels)."""
    y: int
    """Top edge (pixels)."""

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) with exclusive x1, y1."""
        return (self.x, self.y, self.x + self.size, self.y + self.size)


@dataclass
class Scene:
    """A scene graph: everything needed to re-render the image and re-derive any ground truth."""

    width: int
    """Canvas width."""
    height: int
    """Canvas height."""
    shapes: list[Shape] = field(default_factory=list)
    """Shapes in paint order (later ones occlude earlier ones)."""
    size_margin: float = 1.3
    """Margin used by "largest"/"smallest" (copied from the config, needed to re-resolve)."""
    background: tuple[int, int, int] = BACKGROUND
    """RGB the canvas is painted with before the shapes."""
    noise: float = 0.0
    """Standard deviation of the Gaussian noise on the background (0: plain)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in ``extra["scene"]``)."""
        return {"width": self.width, "height": self.height, "size_margin": self.size_margin,
                "background": list(self.background), "noise": self.noise,
                "shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of ``to_dict`` (scenes written before backgrounds varied are on the mid grey)."""
        return cls(width=int(data["width"]), height=int(data["height"]), size_margin=float(data["size_margin"]),
                   background=tuple(int(v) for v in data.get("background", BACKGROUND)),
                   noise=float(data.get("noise", 0.0)), shapes=[Shape(**s) for s in data["shapes"]])


# ---------------------------------------------------------------------------------------------
# rasterization


@lru_cache(maxsize=4096)
def shape_mask(kind: str, size: int) -> np.ndarray:
    """(size, size) bool mask of a shape kind drawn in its square (read-only, cached)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    s = size - 1  # last pixel index
    c = s / 2.0
    if kind == "circle":
        draw.ellipse([0, 0, s, s], fill=1)
    elif kind == "square":
        draw.rectangle([0, 0, s, s], fill=1)
    else:
        if kind == "triangle":
            points = [(c, 0), (s, s), (0, s)]
        elif kind == "diamond":
            points = [(c, 0), (s, c), (c, s), (0, c)]
        elif kind == "hexagon":
            angles = np.deg2rad(np.arange(6) * 60.0)
            points = [(c + c * np.cos(a), c + c * np.sin(a)) for a in angles]
        elif kind == "star":
            angles = np.deg2rad(-90.0 + np.arange(10) * 36.0)
            radii = np.where(np.arange(10) % 2 == 0, c, c * 0.45)
            points = [(c + r * np.cos(a), c + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]
        else:
            raise ValueError(f"unknown shape kind {kind!r}")
        draw.polygon([(float(px), float(py)) for px, py in points], fill=1)
    mask = np.asarray(canvas, dtype=bool).copy()
    mask.flags.writeable = False
    return mask


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def local_visible_masks(shapes: list[Shape]) -> list[np.ndarray]:
    """Per shape, its (size, size) mask minus what the shapes painted after it cover."""
    visible = []
    for i, shape in enumerate(shapes):
        mask = shape_mask(shape.kind, shape.size).copy()
        for above in shapes[i + 1:]:
            region = _overlap(shape.box, above.box)
            if region is None:
                continue
            x0, y0, x1, y1 = region
            cover = shape_mask(above.kind, above.size)[y0 - above.y:y1 - above.y, x0 - above.x:x1 - above.x]
            mask[y0 - shape.y:y1 - shape.y, x0 - shape.x:x1 - shape.x] &= ~cover
        visible.append(mask)
    return visible


def visible_mask(scene: Scene, ids: list[int] | set[int]) -> np.ndarray:
    """(H, W) bool mask of the visible pixels of the shapes ``ids``, from the scene graph alone."""
    full = np.zeros((scene.height, scene.width), dtype=bool)
    locals_ = local_visible_masks(scene.shapes)
    for shape_id in ids:
        shape = scene.shapes[shape_id]
        full[shape.y:shape.y + shape.size, shape.x:shape.x + shape.size] |= locals_[shape_id]
    return full


def render(scene: Scene, config: ShapesConfig, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 image: background (+ clutter, + noise), then the shapes in paint order."""
    image = np.empty((scene.height, scene.width, 3), dtype=np.uint8)
    image[:] = scene.background
    specks = CLUTTER_GREYS if scene.background == BACKGROUND else _clutter_tones(scene.background)
    for _ in range(config.clutter):
        side = int(rng.integers(2, 7))
        x, y = int(rng.integers(0, scene.width - side)), int(rng.integers(0, scene.height - side))
        image[y:y + side, x:x + side] = specks[int(rng.integers(len(specks)))]
    if scene.noise > 0:
        noise = rng.normal(0.0, scene.noise, size=image.shape)
        image = np.clip(image.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)
    for shape in scene.shapes:  # painted after the noise, so shape pixels are exact colours
        window = image[shape.y:shape.y + shape.size, shape.x:shape.x + shape.size]
        window[shape_mask(shape.kind, shape.size)] = COLOURS[shape.colour]
    return image


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _clutter_tones(background: tuple[int, int, int]) -> tuple[tuple[int, int, int], ...]:
    """Speck colours for a background: it, darker and lighter by 20 and 40 levels (as the mid grey's
    specks are), keeping those that stay ``MIN_CONTRAST`` from every shape colour."""
    tones = []
    for delta in (-40, -20, 20, 40):
        tone = tuple(int(np.clip(v + delta, 0, 255)) for v in background)
        if all(_distance(tone, c) >= MIN_CONTRAST for c in COLOURS.values()):
            tones.append(tone)
    return tuple(tones) or (background,)


def draw_background(config: ShapesConfig, rng: np.random.Generator) -> tuple[tuple[int, int, int], float]:
    """A scene's background colour and noise: the mid grey and ``background_noise`` for ``grey``
    worlds (no draw); for ``varied`` ones a grey of any level or a muted colour far from every shape
    colour, plain in three scenes of four, otherwise noisy up to ``background_noise`` (a noisy
    picture costs ~15x a plain one to write and read)."""
    if config.background == "grey":
        return BACKGROUND, config.background_noise
    while True:
        if rng.random() < 0.5:
            level = int(rng.integers(0, 256))
            colour = (level, level, level)
        else:  # a muted colour: a grey pulled a little toward a random hue
            base = int(rng.integers(40, 220))
            colour = tuple(int(np.clip(base + d, 0, 255)) for d in rng.integers(-45, 46, size=3))
        if all(_distance(colour, c) >= MIN_CONTRAST for c in COLOURS.values()):
            break
    noise = 0.0 if rng.random() < 0.75 else float(rng.uniform(0.0, config.background_noise))
    return colour, noise


def draw_canvas(config: ShapesConfig, rng: np.random.Generator) -> tuple[int, int]:
    """A scene's (width, height): the world's fixed canvas (no draw), or one drawn in ``canvas_sides``."""
    if config.canvas_sides is None:
        return config.width, config.height
    lo, hi = config.canvas_sides
    while True:
        width, height = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        if (config.max_canvas_pixels is None or width * height <= config.max_canvas_pixels) and \
                max(width, height) <= config.max_aspect * min(width, height):
            return width, height


def encode_png(image: np.ndarray, noisy: bool = False) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array (deterministic: no metadata, fixed compression). A
    ``noisy`` background barely compresses whatever the level, so it is written at level 1 (twice
    as fast as level 6, 10 % larger)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", compress_level=1 if noisy else 6)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# scenes


def _place(shapes: list[Shape], kind: str, colour: str, size: int, config: ShapesConfig,
           rng: np.random.Generator, attempts: int = 60, near: Shape | None = None) -> Shape | None:
    """A new shape on top of ``shapes`` hiding at most ``max_occlusion`` of any of them, or None;
    with ``near``, its box at most ``size`` pixels from that shape's box."""
    x_range, y_range = (0, config.width - size), (0, config.height - size)
    if near is not None:
        x_range = (max(0, near.x - 2 * size), min(config.width - size, near.x + near.size + size))
        y_range = (max(0, near.y - 2 * size), min(config.height - size, near.y + near.size + size))
    for _ in range(attempts):
        x = int(rng.integers(x_range[0], x_range[1] + 1))
        y = int(rng.integers(y_range[0], y_range[1] + 1))
        candidate = Shape(id=len(shapes), kind=kind, colour=colour, size=size, x=x, y=y)
        trial = [*shapes, candidate]
        if all(vis.sum() >= (1.0 - config.max_occlusion) * shape_mask(s.kind, s.size).sum()
               for s, vis in zip(trial, local_visible_masks(trial), strict=True)):
            return candidate
    return None


def _attributes(rng: np.random.Generator, config: ShapesConfig, like: tuple[str, str] | None) -> tuple[str, str]:
    kind = config.kinds[int(rng.integers(len(config.kinds)))]
    colour = config.colours[int(rng.integers(len(config.colours)))]
    if like is not None and rng.random() < config.distractor_similarity:
        if rng.random() < 0.5:
            kind = like[0]
        else:
            colour = like[1]
    return kind, colour


def generate_scene(config: ShapesConfig, rng: np.random.Generator, *, small_target: bool = False) -> Scene:
    """A random scene. With ``small_target`` the last (topmost, fully visible) shape is the target,
    sized in ``config.target_size_range``, and distractors resemble it per ``distractor_similarity``.
    Worlds of many canvases and backgrounds draw the scene's own first."""
    if config.canvas_sides is not None:
        width, height = draw_canvas(config, rng)
        config = dataclasses.replace(config, width=width, height=height, canvas_sides=None)
    background, noise = draw_background(config, rng)
    for _ in range(100):
        count = int(rng.integers(config.min_objects, config.max_objects + 1))
        target_attrs = _attributes(rng, config, None)
        shapes: list[Shape] = []
        n_distractors = count - 1 if small_target else count
        for _ in range(n_distractors):
            kind, colour = _attributes(rng, config, target_attrs if small_target else None)
            size = int(rng.integers(config.min_size, config.max_size + 1))
            placed = _place(shapes, kind, colour, size, config, rng)
            if placed is not None:
                shapes.append(placed)
        if small_target:
            lo, hi = config.target_size_range
            near = None
            if config.near_target > 0 and shapes and rng.random() < config.near_target:
                near = shapes[int(rng.integers(len(shapes)))]
            placed = _place(shapes, *target_attrs, int(rng.integers(lo, hi + 1)), config, rng, near=near)
            if placed is not None:
                shapes.append(placed)
            else:
                continue
        if len(shapes) >= config.min_objects:
            return Scene(width=config.width, height=config.height, shapes=shapes, size_margin=config.size_margin,
                         background=background, noise=noise)
    raise UsageError(
        f"could not place {config.min_objects}+ shapes of {config.min_size}-{config.max_size} px on a "
        f"{config.canvas_text} canvas within max_occlusion={config.max_occlusion}; "
        "use a bigger canvas, smaller shapes or fewer objects"
    )



#: Named worlds for ``seganswer data synth --world NAME`` (explicit options override their settings).
#: ``demo`` is the world the shipped ``shapes`` model is trained and evaluated on (docs/shapes-experiment.md):
#: a 640x480 canvas whose 20-32 px target is about one LLM token in the global view, among 2-4
#: larger shapes that share its colour or kind, next to one of them in 8 scenes of 10, asked as free
#: text (a 4 M-parameter model does not learn option letters in a CPU run); ``closeup`` shows the
#: same shapes large, one to three per small canvas (the demo's stand-in vision-language pretraining reads kinds from it); ``vstar-like``
#: hides a 16-24 px target among up to a dozen shapes and grey clutter on a 1024 x 1024 canvas; ``wide``
#: is the demo's vocabulary in the world a user brings: canvases of any size from 160 to 800 px a side
#: and aspect ratio up to 2.5 (at most 800 x 600), plain or noisy backgrounds of any grey or muted colour,
#: 1-12 shapes, targets down to 15 px, and the prompts users and benchmarks write: free text in many
#: phrasings, multiple choice in the V* and MMBench layouts, yes/no questions in POPE's style.
DEMO_KINDS = ("circle", "square", "triangle", "star")
DEMO_COLOURS = ("red", "green", "blue", "yellow")
WORLDS: dict[str, ShapesConfig] = {
    "default": ShapesConfig(),
    "demo": ShapesConfig(
        width=640, height=480, min_objects=3, max_objects=5, min_size=24, max_size=80,
        target_min_size=20, target_max_size=32, kinds=DEMO_KINDS, colours=DEMO_COLOURS,
        distractor_similarity=0.7, clutter=12, multi_object=0.1, multiple_choice=0.0, near_target=0.8,
        question_types=("colour", "shape"), expressions=("simple", "superlative"),
    ),
    "closeup": ShapesConfig(
        width=160, height=120, min_objects=1, max_objects=3, min_size=28, max_size=72,
        target_min_size=28, target_max_size=72, kinds=DEMO_KINDS, colours=DEMO_COLOURS,
        distractor_similarity=0.5, multi_object=0.1, multiple_choice=0.0,
        question_types=("colour", "shape"), expressions=("simple", "superlative"),
    ),
    "wide": ShapesConfig(
        width=640, height=480, canvas_sides=(160, 800), max_canvas_pixels=800 * 600, background="varied",
        background_noise=12.0, min_objects=1, max_objects=12, min_size=15, max_size=80,
        target_min_size=15, target_max_size=40, kinds=DEMO_KINDS, colours=DEMO_COLOURS,
        distractor_similarity=0.6, clutter=12, multi_object=0.1, near_target=0.5,
        multiple_choice=0.35, mc_layouts=("vstar", "mmbench"), yes_no=0.2, phrasings="varied",
        question_types=("colour", "shape"), expressions=("simple", "superlative"),
    ),
    "vstar-like": ShapesConfig(
        width=1024, height=1024, min_objects=6, max_objects=12, min_size=16, max_size=96,
        target_min_size=16, target_max_size=24, clutter=40,
    ),
}


def world(name: str, **overrides: Any) -> ShapesConfig:
    """The named world's settings with ``overrides`` (fields of ``ShapesConfig``) applied."""
    if name not in WORLDS:
        raise UsageError(f"unknown shapes world {name!r}; known: {', '.join(WORLDS)}")
    return dataclasses.replace(WORLDS[name], **overrides)
