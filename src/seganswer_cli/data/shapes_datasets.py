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
``seganswer eval vstar`` and its protocols (option order) run offline on the shapes world;
``write_pope_layout`` writes yes/no questions in POPE's layout (three settings) for ``eval pope``.

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
from seganswer_cli.data.shapes_language import (
    QUESTION_TEMPLATES,
    ask,
    holds,
    matches,
    pick,
    resolve,
    unique_descriptions,
    vary_description,
)
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
_KIND_CODES = {"refseg": 1, "vqa": 2, "rl": 3, "qseg": 4, "pope": 5}


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


def _said(rng: np.random.Generator, config: ShapesConfig, qtype: str, **slots: str) -> str:
    """The question of ``qtype`` with ``slots``: its first wording, or with ``phrasings="varied"`` any
    wording of ``QUESTION_TEMPLATES`` with its descriptions said another way."""
    templates = QUESTION_TEMPLATES[qtype]
    if config.phrasings == "fixed":
        return ask(templates[0], **slots)
    template = templates[int(rng.integers(len(templates)))]
    return ask(template, **{k: vary_description(rng, v) if k in ("a", "b") else v for k, v in slots.items()})


def _question(scene: Scene, rng: np.random.Generator, config: ShapesConfig, *, for_rl: bool) -> dict | None:
    """A question about the scene's target (its last shape): type, text, answer, answering shape ids."""
    target = scene.shapes[-1]
    kinds = [k for k in QUESTION_TYPES if k in config.question_types and (for_rl or k != "count")]
    for qtype in [kinds[int(i)] for i in rng.permutation(len(kinds))]:
        if qtype == "colour":
            desc = pick(rng, unique_descriptions(scene, target, use_colour=False), config.expressions)
            if desc:
                return {"type": "colour", "question": _said(rng, config, "colour", a=desc), "answer": target.colour,
                        "ids": [target.id], "pool": config.colours}
        elif qtype == "shape":
            desc = pick(rng, unique_descriptions(scene, target, use_kind=False), config.expressions)
            if desc:
                return {"type": "shape", "question": _said(rng, config, "shape", a=desc), "answer": target.kind,
                        "ids": [target.id], "pool": config.kinds}
        elif qtype == "position":
            found = _position_question(scene, target, rng, config)
            if found:
                return found
        elif qtype == "count":
            colour = target.colour if rng.random() < 0.5 else None
            kind = None if colour else target.kind
            ids = [s.id for s in matches(scene, colour, kind or "shape")]
            what = f"{colour} shapes" if colour else f"{kind}s"
            return {"type": "count", "question": _said(rng, config, "count", what=what), "answer": str(len(ids)),
                    "ids": ids, "pool": ()}
    return None


def _position_question(scene: Scene, target: Shape, rng: np.random.Generator, config: ShapesConfig) -> dict | None:
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
        for axis, words in (("horizontal", ("left", "right")), ("vertical", ("above", "below"))):
            relations = ("left of", "right of") if axis == "horizontal" else words
            for word, relation in zip(words, relations, strict=True):
                if holds(relation, target, other):
                    return {"type": "position", "question": _said(rng, config, axis, a=target_desc, b=other_desc),
                            "answer": word, "ids": [target.id, other.id], "pool": words}
    return None


#: The yes/no questions' styles: POPE's existence question, and checks of the target's colour or kind.
YES_NO_STYLES = ("exists", "is_colour", "is_kind")


def _yes_no_question(scene: Scene, rng: np.random.Generator, config: ShapesConfig) -> dict | None:
    """A yes/no question about the scene's target, answered yes half the time.

    ``exists``: "Is there a red star in the image?" naming the target's colour and kind (yes; the
    shapes of that colour and kind answer it) or the target's kind with a colour no shape of that
    kind has (no; the target is where one would look). ``is_colour`` / ``is_kind``: the target
    described without that attribute, asked with its own (yes) or another one of the world (no).
    """
    target = scene.shapes[-1]
    yes = bool(rng.random() < 0.5)
    styles = [s for s in YES_NO_STYLES if s == "exists" or {"is_colour": "colour", "is_kind": "shape"}[s]
              in config.question_types]
    for style in [styles[int(i)] for i in rng.permutation(len(styles))]:
        if style == "exists":
            colour = target.colour
            if not yes:
                absent = [c for c in config.colours if not matches(scene, c, target.kind)]
                if not absent:
                    continue
                colour = absent[int(rng.integers(len(absent)))]
            ids = [s.id for s in matches(scene, colour, target.kind)] or [target.id]
            return {"type": "exists", "question": _said(rng, config, "exists", colour=colour, kind=target.kind),
                    "answer": "yes" if yes else "no", "ids": ids}
        use_colour = style == "is_kind"
        desc = pick(rng, unique_descriptions(scene, target, use_colour=use_colour, use_kind=not use_colour),
                    config.expressions)
        if not desc:
            continue
        own, pool, slot = ((target.colour, config.colours, "colour") if style == "is_colour"
                           else (target.kind, config.kinds, "kind"))
        others = [v for v in pool if v != own]
        value = own if yes else others[int(rng.integers(len(others)))]
        return {"type": "colour" if style == "is_colour" else "shape",
                "question": _said(rng, config, style, a=desc, **{slot: value}),
                "answer": "yes" if yes else "no", "ids": [target.id]}
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
                id=f"shapes:refseg:{seed}:{index}", image=_image_ref(image, index, scene), expression=text,
                mask=_mask_of(scene, ids), source="shapes",
                extra={"scene": scene.to_dict(), "target_ids": ids},
            )
        question = _question(scene, rng, config, for_rl=kind == "rl")
        if question is None:
            continue
        asked_yes_no = kind == "vqa" and config.yes_no > 0 and rng.random() < config.yes_no
        if asked_yes_no:
            question = _yes_no_question(scene, rng, config)
            if question is None:
                continue
        image = render(scene, config, rng)
        extra = {"scene": scene.to_dict(), "target_ids": question["ids"], "question_type": question["type"]}
        if kind == "qseg":  # ReasonSeg-style: the query is a question, the mask is the region answering it
            return SegSample(
                id=f"shapes:qseg:{seed}:{index}", image=_image_ref(image, index, scene), expression=question["question"],
                mask=_mask_of(scene, question["ids"]), source="shapes-qseg", extra=extra)
        masks = [_mask_of(scene, [i]) for i in question["ids"]]
        if kind == "rl":
            return VQASample(
                id=f"shapes:rl:{seed}:{index}", image=_image_ref(image, index, scene), question=question["question"],
                answer=question["answer"], source="shapes-rl",
                answer_type="number" if question["type"] == "count" else "text", region_masks=masks, extra=extra)
        sample_id = f"shapes:vqa:{seed}:{index}"
        if asked_yes_no:
            return VQASample(
                id=sample_id, image=_image_ref(image, index, scene), question=question["question"], answer=question["answer"],
                source="shapes-vqa", answer_type="text", region_masks=masks,
                extra={**extra, "prompt_format": "yesno"})
        # the chance of multiple choice among the questions not asked as yes/no
        if rng.random() < config.multiple_choice / (1.0 - config.yes_no):
            layout = config.mc_layouts[int(rng.integers(len(config.mc_layouts)))] if len(config.mc_layouts) > 1 \
                else config.mc_layouts[0]
            options, letter = _options(rng, question["answer"], tuple(question["pool"]))
            return VQASample(
                id=sample_id, image=_image_ref(image, index, scene), question=question["question"],
                answer=question["answer"], source="shapes-vqa", options=options, answer_letter=letter,
                answer_type="choice", region_masks=masks, extra={**extra, "prompt_format": layout})
        return VQASample(
            id=sample_id, image=_image_ref(image, index, scene), question=question["question"],
            answer=question["answer"], source="shapes-vqa", answer_type="text", region_masks=masks, extra=extra)
    raise UsageError(f"could not make a {kind} sample from 100 scenes; loosen the shapes-world settings")


def _image_ref(image: np.ndarray, index: int, scene: Scene) -> ImageRef:
    return ImageRef(data=encode_png(image, noisy=scene.noise > 0), name=f"{index:06d}.png")


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
            scene = sample.extra["scene"]
            yield sample_to_record(sample, relative, scene["width"], scene["height"])

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
    config = replace(config or ShapesConfig(), multiple_choice=1.0, yes_no=0.0, mc_layouts=("vstar",))
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


#: POPE's three ways of choosing the absent object of a "no" question, in the shapes world's terms.
POPE_SETTINGS = ("random", "popular", "adversarial")


def _absent(scene: Scene, config: ShapesConfig, setting: str, rng: np.random.Generator) -> tuple[str, str]:
    """The (colour, kind) of a "no" question: a combination no shape of the scene has, chosen as POPE's
    setting chooses its absent object.

    ``random``: any absent combination of the world's colours and kinds. ``popular`` (POPE: the most
    frequent objects): one whose colour is the scene's most common colour or whose kind is its most
    common kind. ``adversarial`` (POPE: objects that co-occur with those present): one whose colour
    and kind are both in the scene, on different shapes, so only their binding is wrong. A setting
    with no candidate in a scene falls back to the one before it.
    """
    present = {(s.colour, s.kind) for s in scene.shapes}
    absent = [(c, k) for c in config.colours for k in config.kinds if (c, k) not in present]
    colours, kinds = [s.colour for s in scene.shapes], [s.kind for s in scene.shapes]
    common_colour = max(config.colours, key=colours.count)
    common_kind = max(config.kinds, key=kinds.count)
    candidates = {
        "random": absent,
        "popular": [(c, k) for c, k in absent if c == common_colour or k == common_kind],
        "adversarial": [(c, k) for c, k in absent if c in colours and k in kinds],
    }
    for name in reversed(POPE_SETTINGS[:POPE_SETTINGS.index(setting) + 1]):
        if candidates[name]:
            return candidates[name][int(rng.integers(len(candidates[name])))]
    raise UsageError("every colour and kind of the world is in the scene; use more colours or kinds for POPE")


def write_pope_layout(out: Path, n: int, config: ShapesConfig | None = None, *, seed: int = 0) -> Path:
    """``n`` scenes with one "yes" and one "no" question each per setting, in POPE's published layout::

        out/coco_pope_random.json        JSON lines {"question_id", "image", "text", "label"}:
        out/coco_pope_popular.json       "Is there a <colour> <kind> in the image?" (POPE's template),
        out/coco_pope_adversarial.json   yes for a shape of the scene, no as the setting chooses
        out/images/shapes_pope_<index>.png

    so that ``seganswer eval pope`` runs offline on the shapes world. A "yes" asks about the scene's
    target (its small topmost shape); the "no" of each setting is ``_absent``'s. Questions alternate
    yes, no per scene, as POPE's files do.
    """
    config = config or ShapesConfig()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    template = QUESTION_TEMPLATES["exists"][0]
    files = {setting: [] for setting in POPE_SETTINGS}
    for index in range(n):
        rng = _sample_rng(seed, "pope", index)
        scene = generate_scene(config, rng, small_target=True)
        name = f"shapes_pope_{index:06d}.png"
        (out / "images" / name).write_bytes(encode_png(render(scene, config, rng), noisy=scene.noise > 0))
        target = scene.shapes[-1]
        for setting, records in files.items():
            colour, kind = _absent(scene, config, setting, rng)
            for words, label in (((target.colour, target.kind), "yes"), ((colour, kind), "no")):
                text = ask(template, colour=words[0], kind=words[1])
                records.append({"question_id": len(records) + 1, "image": name, "text": text, "label": label})
    for setting, records in files.items():
        with (out / f"coco_pope_{setting}.json").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
    return out
