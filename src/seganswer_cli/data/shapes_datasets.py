"""Shapes-world data sets: samples drawn from seeded scenes, written as seganswer dataset folders.

Four sample kinds come out of the shapes world (``shapes_scenes``, ``shapes_language``):

* ``refseg``: ``SegSample`` with expressions such as ``the red triangle``, ``the largest circle``,
  ``the square left of the blue star``, ``the green shape``, ``all red shapes``, ``the red star and
  the blue circle``, each naming exactly the object(s) whose visible pixels form the mask;
* ``vqa``: ``VQASample`` in the V*/VisualCoT style about a small target drawn on top: its colour,
  its shape, or its position relative to another object, as multiple choice (options + letter) or
  free text, with the masks of the answering objects in ``region_masks``;
* ``rl``: ``VQASample`` prompts with one exact verifiable answer (ViRL39K style): counts, colours,
  shapes, positions;
* ``qseg``: ``SegSample`` whose query is a question, with the mask of the region answering it
  (ReasonSeg style).

``write_vstar_layout`` writes the multiple-choice ``vqa`` questions in V* Bench's published layout
(``test_questions.jsonl`` + per-image annotations listing the right option first), so that
``seganswer eval vstar`` and its protocols (option order) run offline on the shapes world.

The same seed gives byte-identical output: each sample ``i`` draws from its own generator seeded
by ``(seed, kind, i)``, so the first samples do not change when ``n`` grows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from seganswer_cli.data.samples import OPTION_LETTERS, ImageRef, LazyMask, SegSample, VQASample
from seganswer_cli.data.shapes_language import holds, matches, pick, resolve, unique_descriptions
from seganswer_cli.data.shapes_scenes import (
    QUESTION_TYPES,
    Scene,
    Shape,
    ShapesConfig,
    encode_png,
    generate_scene,
    render,
    visible_mask,
)
from seganswer_cli.errors import UsageError

SAMPLE_KINDS = ("refseg", "vqa", "rl", "qseg")
_KIND_CODES = {"refseg": 1, "vqa": 2, "rl": 3, "qseg": 4}


# ---------------------------------------------------------------------------------------------
# samples


def _sample_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _KIND_CODES[kind], index])


def _mask_of(scene: Scene, ids: list[int]) -> LazyMask:
    return LazyMask.from_array(visible_mask(scene, ids))


def _refseg_sample(scene: Scene, rng: np.random.Generator, config: ShapesConfig) -> tuple[str, list[int]] | None:
    if rng.random() < config.multi_object:
        options = []
        for colour in sorted({s.colour for s in scene.shapes}):
            if len(matches(scene, colour, "shape")) >= 2:
                options.append(f"all {colour} shapes")
        for kind in sorted({s.kind for s in scene.shapes}):
            if len(matches(scene, None, kind)) >= 2:
                options.append(f"all {kind}s")
        simple = {s.id: d["simple"] for s in scene.shapes if (d := unique_descriptions(scene, s, use_relations=False))}
        described = [i for i, texts in simple.items() if texts]
        if len(described) >= 2:
            a, b = rng.choice(described, size=2, replace=False)
            options.append(f"{simple[int(a)][0]} and {simple[int(b)][0]}")
        if options:
            text = options[int(rng.integers(len(options)))]
            return text, resolve(text, scene)
    order = rng.permutation(len(scene.shapes))
    for index in order:
        target = scene.shapes[int(index)]
        text = pick(rng, unique_descriptions(scene, target), config.expressions)
        if text is not None:
            return text, [target.id]
    return None


def _options(rng: np.random.Generator, answer: str, pool: tuple[str, ...], k: int = 4) -> tuple[list[str], str]:
    others = [p for p in pool if p != answer]
    chosen = [others[int(i)] for i in rng.permutation(len(others))[:k - 1]]
    options = [answer, *chosen]
    options = [options[int(i)] for i in rng.permutation(len(options))]
    return options, OPTION_LETTERS[options.index(answer)]


def _question(scene: Scene, rng: np.random.Generator, config: ShapesConfig, *, for_rl: bool) -> dict | None:
    """A question about the scene's target (its last shape): type, text, answer, answering shape ids."""
    target = scene.shapes[-1]
    kinds = [k for k in QUESTION_TYPES if k in config.question_types and (for_rl or k != "count")]
    for qtype in [kinds[int(i)] for i in rng.permutation(len(kinds))]:
        if qtype == "colour":
            desc = pick(rng, unique_descriptions(scene, target, use_colour=False), config.expressions)
            if desc:
                return {"type": "colour", "question": f"What is the colour of {desc}?", "answer": target.colour,
                        "ids": [target.id], "pool": config.colours}
        elif qtype == "shape":
            desc = pick(rng, unique_descriptions(scene, target, use_kind=False), config.expressions)
            if desc:
                return {"type": "shape", "question": f"What shape is {desc}?", "answer": target.kind,
                        "ids": [target.id], "pool": config.kinds}
        elif qtype == "position":
            found = _position_question(scene, target, rng)
            if found:
                return found
        elif qtype == "count":
            colour = target.colour if rng.random() < 0.5 else None
            kind = None if colour else target.kind
            ids = [s.id for s in matches(scene, colour, kind or "shape")]
            what = f"{colour} shapes" if colour else f"{kind}s"
            return {"type": "count", "question": f"How many {what} are there in the image?", "answer": str(len(ids)),
                    "ids": ids, "pool": ()}
    return None


def _position_question(scene: Scene, target: Shape, rng: np.random.Generator) -> dict | None:
    target_desc = pick(rng, {"simple": unique_descriptions(scene, target, use_relations=False)["simple"]})
    if target_desc is None:
        return None
    for other_index in rng.permutation(len(scene.shapes)):
        other = scene.shapes[int(other_index)]
        if other.id == target.id:
            continue
        other_desc = pick(rng, {"simple": unique_descriptions(scene, other, use_relations=False)["simple"]})
        if other_desc is None:
            continue
        if holds("left of", target, other) or holds("right of", target, other):
            answer = "left" if holds("left of", target, other) else "right"
            return {"type": "position", "question": f"Is {target_desc} to the left or to the right of {other_desc}?",
                    "answer": answer, "ids": [target.id, other.id], "pool": ("left", "right")}
        if holds("above", target, other) or holds("below", target, other):
            answer = "above" if holds("above", target, other) else "below"
            return {"type": "position", "question": f"Is {target_desc} above or below {other_desc}?",
                    "answer": answer, "ids": [target.id, other.id], "pool": ("above", "below")}
    return None



def generate_samples(kind: str, n: int, config: ShapesConfig | None = None, *, seed: int = 0,
                     start: int = 0) -> Iterator[SegSample | VQASample]:
    """Yield ``n`` samples of ``kind`` (``refseg``, ``vqa`` or ``rl``); images embedded as PNG bytes.

    Sample ``i`` depends only on ``(seed, kind, i)``; ``start`` skips to sample ``start``.
    """
    if kind not in SAMPLE_KINDS:
        raise UsageError(f"kind must be one of {', '.join(SAMPLE_KINDS)}, got {kind!r}")
    if n < 0:
        raise UsageError(f"n must be >= 0, got {n}")
    config = config or ShapesConfig()
    for index in range(start, start + n):
        yield _one_sample(kind, index, config, seed)


def _one_sample(kind: str, index: int, config: ShapesConfig, seed: int) -> SegSample | VQASample:
    rng = _sample_rng(seed, kind, index)
    for _ in range(100):
        scene = generate_scene(config, rng, small_target=kind != "refseg")
        if kind == "refseg":
            found = _refseg_sample(scene, rng, config)
            if found is None:
                continue
            text, ids = found
            image = render(scene, config, rng)
            return SegSample(
                id=f"shapes:refseg:{seed}:{index}", image=_image_ref(image, index), expression=text,
                mask=_mask_of(scene, ids), source="shapes",
                extra={"scene": scene.to_dict(), "target_ids": ids},
            )
        question = _question(scene, rng, config, for_rl=kind == "rl")
        if question is None:
            continue
        image = render(scene, config, rng)
        extra = {"scene": scene.to_dict(), "target_ids": question["ids"], "question_type": question["type"]}
        if kind == "qseg":  # ReasonSeg-style: the query is a question, the mask is the region answering it
            return SegSample(
                id=f"shapes:qseg:{seed}:{index}", image=_image_ref(image, index), expression=question["question"],
                mask=_mask_of(scene, question["ids"]), source="shapes-qseg", extra=extra)
        masks = [_mask_of(scene, [i]) for i in question["ids"]]
        if kind == "rl":
            return VQASample(
                id=f"shapes:rl:{seed}:{index}", image=_image_ref(image, index), question=question["question"],
                answer=question["answer"], source="shapes-rl",
                answer_type="number" if question["type"] == "count" else "text", region_masks=masks, extra=extra)
        if rng.random() < config.multiple_choice:
            options, letter = _options(rng, question["answer"], tuple(question["pool"]))
            return VQASample(
                id=f"shapes:vqa:{seed}:{index}", image=_image_ref(image, index), question=question["question"],
                answer=question["answer"], source="shapes-vqa", options=options, answer_letter=letter,
                answer_type="choice", region_masks=masks, extra=extra)
        return VQASample(
            id=f"shapes:vqa:{seed}:{index}", image=_image_ref(image, index), question=question["question"],
            answer=question["answer"], source="shapes-vqa", answer_type="text", region_masks=masks, extra=extra)
    raise UsageError(f"could not make a {kind} sample from 100 scenes; loosen the shapes-world settings")


def _image_ref(image: np.ndarray, index: int) -> ImageRef:
    return ImageRef(data=encode_png(image), name=f"{index:06d}.png")


def write_synthetic(out: Path, kind: str, n: int, config: ShapesConfig | None = None, *, seed: int = 0) -> Path:
    """Generate ``n`` samples and write them as a seganswer dataset folder (see ``seganswer_format``)."""
    from seganswer_cli.data.seganswer_format import sample_to_record, write_dataset

    config = config or ShapesConfig()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def records() -> Iterator[dict]:
        for index, sample in enumerate(generate_samples(kind, n, config, seed=seed)):
            relative = f"images/{index:06d}.png"
            (out / relative).write_bytes(sample.image.data)
            yield sample_to_record(sample, relative, config.width, config.height)

    settings = {"generator": "shapes", "kind": kind, "n": n, "seed": seed, "config": asdict(config)}
    write_dataset(out, kind, records(), settings)
    return out


#: V* Bench's two subsets, by the shapes question type that matches each.
VSTAR_SUBSETS = {"colour": "direct_attributes", "shape": "direct_attributes", "position": "relative_position"}


def write_vstar_layout(out: Path, n: int, config: ShapesConfig | None = None, *, seed: int = 0) -> Path:
    """The first ``n`` ``vqa`` questions of ``seed``, asked as multiple choice, in V* Bench's layout::

        out/test_questions.jsonl       {"image", "text" (question, (A)... options, letter instruction),
                                        "category", "question_id", "label"}, options in the generator's order
        out/direct_attributes/          shapes_<index>.png + shapes_<index>.json {"question", "options":
        out/relative_position/          [the right one first, ...], "bbox": [[x, y, w, h]] of the target}

    Question ``index`` is the ``vqa`` sample of that index (the scene and question ``shapes-vqa`` asks
    with this seed and world), with four options.
    """
    from seganswer_cli.model.conversation import prompt_and_answer

    # V* asks only multiple choice: every question becomes one (the scene, question and image of sample i
    # are drawn before the choice, so they are those of shapes-vqa's sample i)
    config = replace(config or ShapesConfig(), multiple_choice=1.0)
    out = Path(out)
    records = []
    for index in range(n):
        sample = _one_sample("vqa", index, config, seed)
        category = VSTAR_SUBSETS[str(sample.extra["question_type"])]
        stem = f"shapes_{index:06d}"
        (out / category).mkdir(parents=True, exist_ok=True)
        (out / category / f"{stem}.png").write_bytes(sample.image.data)
        rows, cols = np.nonzero(sample.region())
        # V*'s bbox is [x, y, width, height] in pixels
        bbox = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
        others = [o for o in sample.options if o != sample.answer]
        annotation = {"question": sample.question, "options": [sample.answer, *others], "bbox": [bbox]}
        (out / category / f"{stem}.json").write_text(json.dumps(annotation, indent=4) + "\n", encoding="utf-8")
        text, letter = prompt_and_answer(sample)
        records.append({"image": f"{category}/{stem}.png", "text": text, "category": category,
                        "question_id": len(records), "label": letter})
    with (out / "test_questions.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return out
