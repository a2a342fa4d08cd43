"""The shapes world's language: the referring-expression and question grammar, parsed against a scene graph.

The scene graph kept with every sample (``extra["scene"]``, see ``shapes_scenes``) is enough to
re-derive the ground truth:

* ``resolve(expression, scene)`` parses a referring expression of the shapes grammar and returns the
  ids of the shapes it names (or raises ``ExpressionError`` when it names none or is ambiguous);
* ``answer_question(question, scene)`` parses a generated question and computes its answer;
* ``more_expressions(scene, n, seed=...)`` describes further single shapes of a scene.

The grammar takes the words people use as well as the generator's own: ``small``, ``tiny`` and
``little`` mean ``smallest``; ``big``, ``large`` and ``biggest`` mean ``largest``; ``object`` means
``shape``. ``QUESTION_TEMPLATES`` lists each question type's phrasings (the first is the one a
``phrasings="fixed"`` world always asks), and ``answer_question`` parses every one of them, so a
question is generated and re-derived from one table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from seganswer_cli.data.shapes_scenes import COLOURS, EXPRESSION_FAMILIES, KINDS, Scene, Shape, visible_mask

RELATIONS = ("left of", "right of", "above", "below")


# ---------------------------------------------------------------------------------------------
# the referring-expression grammar: parse and resolve


class ExpressionError(ValueError):
    """An expression that does not parse, names nothing, or names more than it should."""


@dataclass(frozen=True)
class _NounPhrase:
    colour: str | None
    noun: str  # a kind or "shape"
    superlative: str | None = None  # "largest" | "smallest"
    relation: str | None = None
    anchor: _NounPhrase | None = None


_WORD = re.compile(r"[a-z]+")
#: Words of ordinary questions read as the grammar's own (``the small square`` is ``the smallest square``).
SYNONYMS = {"small": "smallest", "tiny": "smallest", "little": "smallest", "big": "largest", "large": "largest",
            "biggest": "largest", "object": "shape", "objects": "shapes"}
#: How a description's words may be said instead (``vary_description``); the first is the grammar's.
_SAID_AS = {"smallest": ("smallest", "small", "tiny", "little"), "largest": ("largest", "big", "large", "biggest"),
            "shape": ("shape", "shape", "object")}


def _words(text: str) -> list[str]:
    return [SYNONYMS.get(w, w) for w in _WORD.findall(text.lower())]


#: Words that make a question about the shapes world: a colour, a kind (or its plural), or what is asked.
WORLD_WORDS = frozenset([*COLOURS, "color", "colour", "colors", "colours", *KINDS, *(k + "s" for k in KINDS), "shape", "shapes",
                         "many", "count", "number", "there", "largest", "smallest"])


def about_the_world(question: str) -> bool:
    """Whether ``question`` names anything of the shapes world (``WORLD_WORDS``, synonyms read)."""
    return any(w in WORLD_WORDS for w in _words(question))


def vary_description(rng: np.random.Generator, text: str) -> str:
    """``text`` with its superlative and its ``shape`` said another way at random (same meaning:
    ``resolve`` reads every variant as the original).

    >>> vary_description(np.random.default_rng(1), "the smallest red shape") in (
    ...     "the smallest red shape", "the small red shape", "the tiny red shape", "the little red shape",
    ...     "the smallest red object", "the small red object", "the tiny red object", "the little red object")
    True
    """
    words = text.split(" ")
    return " ".join(choices[int(rng.integers(len(choices)))] if (choices := _SAID_AS.get(w)) else w for w in words)


def _parse_np(words: list[str], allow_relation: bool = True) -> _NounPhrase:
    if not words or words[0] != "the":
        raise ExpressionError(f"expected 'the ...', got {' '.join(words)!r}")
    i = 1
    superlative = colour = None
    if i < len(words) and words[i] in ("largest", "smallest"):
        superlative, i = words[i], i + 1
    if i < len(words) and words[i] in COLOURS:
        colour, i = words[i], i + 1
    if i >= len(words) or (words[i] not in KINDS and words[i] != "shape"):
        raise ExpressionError(f"expected a shape kind or 'shape' in {' '.join(words)!r}")
    noun, i = words[i], i + 1
    if i == len(words):
        return _NounPhrase(colour, noun, superlative)
    if not allow_relation:
        raise ExpressionError(f"unexpected words after the anchor in {' '.join(words)!r}")
    rest = " ".join(words[i:])
    for relation in RELATIONS:
        if rest.startswith(relation + " "):
            anchor_words = words[i + len(relation.split()):]
            return _NounPhrase(colour, noun, superlative, relation, _parse_np(anchor_words, allow_relation=False))
    raise ExpressionError(f"expected one of {RELATIONS} in {' '.join(words)!r}")


def matches(scene: Scene, colour: str | None, noun: str) -> list[Shape]:
    return [s for s in scene.shapes if (colour is None or s.colour == colour) and (noun == "shape" or s.kind == noun)]


def holds(relation: str, a: Shape, b: Shape) -> bool:
    """Whether ``a`` is ``relation`` ``b``: its box lies wholly on that side of ``b``'s box."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return {"left of": ax1 <= bx0, "right of": ax0 >= bx1, "above": ay1 <= by0, "below": ay0 >= by1}[relation]


def _resolve_np(phrase: _NounPhrase, scene: Scene) -> Shape:
    candidates = matches(scene, phrase.colour, phrase.noun)
    if phrase.anchor is not None:
        anchor = _resolve_np(phrase.anchor, scene)
        candidates = [s for s in candidates if s.id != anchor.id and holds(phrase.relation, s, anchor)]
    if phrase.superlative is not None and len(candidates) > 1:
        ordered = sorted(candidates, key=lambda s: s.size, reverse=phrase.superlative == "largest")
        first, second = ordered[0].size, ordered[1].size
        ratio = first / second if phrase.superlative == "largest" else second / first
        if ratio < scene.size_margin:
            raise ExpressionError(f"no clearly {phrase.superlative} one ({first} vs {second} px)")
        candidates = ordered[:1]
    if len(candidates) != 1:
        raise ExpressionError(f"names {len(candidates)} shapes, expected exactly one")
    return candidates[0]


def resolve(expression: str, scene: Scene) -> list[int]:
    """Ids of the shapes a shapes-grammar expression names; ``ExpressionError`` if none or ambiguous.

    Grammar: ``the [largest|smallest] [COLOUR] KIND|shape [(left of|right of|above|below) the
    [COLOUR] KIND|shape]``, several such joined by `` and ``, or ``all [COLOUR] KINDs|shapes``.
    """
    words = _words(expression)
    if words[:1] == ["all"]:
        if len(words) not in (2, 3):
            raise ExpressionError(f"expected 'all [COLOUR] KINDs|shapes', got {expression!r}")
        colour = words[1] if len(words) == 3 else None
        plural = words[-1]
        noun = plural[:-1] if plural.endswith("s") else plural
        if (colour is not None and colour not in COLOURS) or (noun not in KINDS and noun != "shape"):
            raise ExpressionError(f"unknown colour or kind in {expression!r}")
        found = [s.id for s in matches(scene, colour, noun)]
        if not found:
            raise ExpressionError(f"{expression!r} names no shape")
        return found
    parts: list[list[str]] = [[]]
    for word in words:
        if word == "and":
            parts.append([])
        else:
            parts[-1].append(word)
    ids = [_resolve_np(_parse_np(part), scene).id for part in parts]
    if len(set(ids)) != len(ids):
        raise ExpressionError(f"{expression!r} names the same shape twice")
    return sorted(ids)


def _phrase(colour: str | None, noun: str, superlative: str | None = None) -> str:
    return " ".join(w for w in ("the", superlative, colour, noun) if w)


def unique_descriptions(scene: Scene, target: Shape, *, use_colour: bool = True, use_kind: bool = True,
                         use_relations: bool = True) -> dict[str, list[str]]:
    """Expressions naming exactly ``target``, by family (simple, superlative, relation)."""

    def ok(text: str) -> bool:
        try:
            return resolve(text, scene) == [target.id]
        except ExpressionError:
            return False

    heads = []  # (colour, noun) pairs allowed for the target's own noun phrase
    if use_colour and use_kind:
        heads.append((target.colour, target.kind))
    if use_kind:
        heads.append((None, target.kind))
    if use_colour:
        heads.append((target.colour, "shape"))
    heads.append((None, "shape"))
    simple = [p for c, n in heads if (p := _phrase(c, n)) and ok(p)]
    superlative = [p for c, n in heads for sup in ("largest", "smallest")
                   if len(matches(scene, c, n)) > 1 and (p := _phrase(c, n, sup)) and ok(p)]
    relation = []
    if use_relations:
        for anchor in scene.shapes:
            if anchor.id == target.id:
                continue
            anchor_texts = [p for c, n in ((anchor.colour, anchor.kind), (None, anchor.kind), (anchor.colour, "shape"))
                            if (p := _phrase(c, n)) and _only(scene, p, anchor.id)]
            for rel in RELATIONS:
                if not anchor_texts or not holds(rel, target, anchor):
                    continue
                for c, n in heads:
                    text = f"{_phrase(c, n)} {rel} {anchor_texts[0]}"
                    if ok(text):
                        relation.append(text)
    return {"simple": simple, "superlative": superlative, "relation": relation}


def _only(scene: Scene, text: str, shape_id: int) -> bool:
    try:
        return resolve(text, scene) == [shape_id]
    except ExpressionError:
        return False


def pick(rng: np.random.Generator, families: dict[str, list[str]],
          allowed: tuple[str, ...] = EXPRESSION_FAMILIES) -> str | None:
    """A description: first a family at random (so relations are as common as simple ones), then one of it."""
    available = [name for name in EXPRESSION_FAMILIES if name in allowed and families.get(name)]
    if not available:
        return None
    family = families[available[int(rng.integers(len(available)))]]
    return family[int(rng.integers(len(family)))]


#: Each question type's phrasings: ``{a}`` (and ``{b}``) a description, ``{what}`` a plural, ``{colour}``
#: and ``{kind}`` words. The first of each is the generator's original wording.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("What is the colour of {a}?", "What colour is {a}?", "What color is {a}?",
               "What is the color of {a}?", "Which colour is {a}?", "Tell me the colour of {a}.",
               "Can you tell me what colour {a} is?", "{A} is what colour?"),
    "shape": ("What shape is {a}?", "What is the shape of {a}?", "Which shape is {a}?",
              "What kind of shape is {a}?", "Tell me the shape of {a}.", "{A} is what shape?"),
    "horizontal": ("Is {a} to the left or to the right of {b}?", "Is {a} left or right of {b}?",
                   "Is {a} on the left or on the right of {b}?"),
    "vertical": ("Is {a} above or below {b}?", "Is {a} higher or lower than {b}?"),
    "count": ("How many {what} are there in the image?", "How many {what} are there?",
              "Count the {what} in the image."),
    # yes/no: POPE's own template first, then verifications of the target's colour or kind
    "exists": ("Is there a {colour} {kind} in the image?", "Is there any {colour} {kind} in the picture?",
               "Does the image contain a {colour} {kind}?"),
    "is_colour": ("Is {a} {colour}?", "Is the colour of {a} {colour}?"),
    "is_kind": ("Is {a} a {kind}?",),
}
_POSITION_WORDS = {"horizontal": (("left", "left of"), ("right", "right of")),
                   "vertical": (("above", "above"), ("below", "below"))}
_SLOT = {"a": r"(?P<a>.+?)", "A": r"(?P<a>.+?)", "b": r"(?P<b>.+?)", "what": r"(?P<what>.+?)",
         "colour": "(?P<colour>" + "|".join(COLOURS) + ")", "kind": "(?P<kind>" + "|".join((*KINDS, "shape")) + ")"}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # text, slot, text, slot, ...
    return re.compile("^" + "".join(_SLOT[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)) + "$",
                      re.IGNORECASE)


_QUESTION_PATTERNS = tuple((qtype, _pattern(t)) for qtype, templates in QUESTION_TEMPLATES.items() for t in templates)


def ask(template: str, **slots: str) -> str:
    """A question from a template: ``{A}`` is ``{a}`` with its first letter capitalised.

    >>> ask("{A} is what colour?", a="the small star")
    'The small star is what colour?'
    """
    if "a" in slots:
        slots["A"] = slots["a"][:1].upper() + slots["a"][1:]
    return template.format(**slots)


def answer_question(question: str, scene: Scene) -> str:
    """The answer to a generated question (any phrasing of ``QUESTION_TEMPLATES``), computed from the
    scene graph by parsing the question: a colour, a kind, a position word, a count, ``yes`` or ``no``.
    A question several phrasings match (``Is the colour of the star red?``) is read by the first whose
    descriptions name shapes of the scene."""
    error: ExpressionError | None = None
    for qtype, pattern in _QUESTION_PATTERNS:
        match = pattern.match(question.strip())
        if match:
            try:
                return _answer(qtype, match, question, scene)
            except ExpressionError as e:
                error = error or e
    raise error or ExpressionError(f"not a shapes-world question: {question!r}")


def _answer(qtype: str, match: re.Match, question: str, scene: Scene) -> str:
    if qtype == "count":
        return str(len(resolve(f"all {match['what']}", scene))) if _matches_any(match["what"], scene) else "0"
    if qtype == "exists":
        colour, kind = match["colour"].lower(), match["kind"].lower()
        return "yes" if matches(scene, colour, SYNONYMS.get(kind, kind)) else "no"
    (a,) = resolve(match["a"], scene)
    shape_a = scene.shapes[a]
    if qtype == "colour":
        return shape_a.colour
    if qtype == "shape":
        return shape_a.kind
    if qtype == "is_colour":
        return "yes" if shape_a.colour == match["colour"].lower() else "no"
    if qtype == "is_kind":
        return "yes" if shape_a.kind == match["kind"].lower() else "no"
    (b,) = resolve(match["b"], scene)
    shape_b = scene.shapes[b]
    for word, rel in _POSITION_WORDS[qtype]:
        if holds(rel, shape_a, shape_b):
            return word
    raise ExpressionError(f"the relation asked in {question!r} does not hold either way")


def _matches_any(what: str, scene: Scene) -> bool:
    try:
        resolve(f"all {what}", scene)
    except ExpressionError:
        return False
    return True


def more_expressions(scene: Scene | dict, n: int, *, seed: int | str, exclude: list[int] | None = None,
                     families: tuple[str, ...] = ("simple", "superlative")) -> list[tuple[str, np.ndarray]]:
    """Up to ``n`` further ``(expression, mask)`` pairs for other single shapes of a scene (never the
    shapes in ``exclude``), each naming exactly its shape; deterministic in ``seed``.

    The demo's stand-in pretraining asks for several shapes of one image in one conversation, so
    that only the expression tells the masks apart (a model that ignores it cannot fit them).
    """
    scene = Scene.from_dict(scene) if isinstance(scene, dict) else scene
    rng = np.random.default_rng(list(str(seed).encode()))
    out = []
    for index in rng.permutation(len(scene.shapes)):
        shape = scene.shapes[int(index)]
        if len(out) == n:
            break
        if shape.id in (exclude or []):
            continue
        text = pick(rng, unique_descriptions(scene, shape, use_relations="relation" in families), families)
        if text is not None:
            out.append((text, visible_mask(scene, [shape.id])))
    return out
