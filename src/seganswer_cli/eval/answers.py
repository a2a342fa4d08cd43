"""Rule-based answer scoring; no model, no judge. Shared by evaluation and the RL reward.

The answer of an output is ``conversation.answer_of``'s, the one rule the reasoning loop and Stage 3's
rewards use too: the last model turn's ``<answer>`` content (``tag``), or what follows an ``<answer>``
never closed (``unclosed``), or the last turn's text (``untagged``). The rules below then read an
option letter, a yes/no or a short text from it; each result records which rule fired, as
``"<source>:<method>"``:

Multiple choice (``extract_choice``), first match wins:
  ``letter``        the text is just an option letter: ``B``, ``(B)``, ``B.``, ``B)``, ``[B]`` (any case:
                    ``(b)``), or starts with an upper-case one: ``B. text``, ``(B) text``
  ``answer_prefix`` a phrase names the letter: ``Answer: B``, ``the answer is (B)``, ``option B``,
                    ``\\boxed{B}``; the last such phrase wins
  ``option_text``   exactly one option's text appears in the output (whole words, case-insensitive);
                    if several do, the one that equals the whole answer wins, else nothing is extracted
Yes/no (``extract_yes_no``):
  ``yes_no``        the answer starts with yes/no (``Yes, there is``, ``No.``)
  ``negation``      the first sentence has a negation word -> ``no`` (broader than POPE's official
                    rule, which ``pope.py`` applies as the official script does)
  ``contains_yes``  ``yes`` appears as a word and no ``no`` -> ``yes``
Free text / numbers: ``exact`` after ``normalize_text``; ``number`` when both parse as equal numbers.
Maths (``answer_kind="math"``, ``same_maths``), cheap rules first: the same text (spaces ignored); a
word answer (``looks_mathematical`` false) after ``normalize_text``; a plain-number truth equal to
the answer's number; then ``verify_math`` (math_verify: LaTeX or plain expressions read into SymPy,
compared numerically and symbolically: ``3/4``, ``0.75``, ``\\boxed{\\frac34}`` all equal
``\\frac{3}{4}``). ``normalize_text`` is not used on maths: it would make ``-3`` equal ``3``.

When nothing matches the rule is ``none`` and the answer is wrong. All functions are pure
(``verify_math`` has a time limit, see there).
"""

from __future__ import annotations

import functools
import math
import re
import string
from dataclasses import dataclass
from typing import Literal

from seganswer_cli.eval.items import EvalItem, SampleResult
from seganswer_cli.model.conversation import answer_of


@dataclass(frozen=True)
class Extraction:
    """The extracted answer (``None`` when no rule fired) and the rule that produced it."""

    value: str | None
    rule: str


_LETTER_ALONE = r"[\(\[\{]?\s*([A-Z])\s*[\)\]\}]?"
_BOXED = re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*\(?([A-Za-z])\)?\s*\}?\s*\}")
_PREFIX = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:|=|-)?\s*(?:option\s*)?[:\s]*" + _LETTER_ALONE + r"(?![A-Za-z])",
    re.IGNORECASE,
)


def extract_choice(text: str, options: dict[str, str]) -> Extraction:
    """The option letter chosen in ``text`` (a model output), given ``options`` (letter -> text).

    >>> opts = {"A": "red", "B": "blue"}
    >>> extract_choice("<answer>(B)</answer>", opts)
    Extraction(value='B', rule='tag:letter')
    >>> extract_choice("I think the answer is A.", opts)
    Extraction(value='A', rule='untagged:answer_prefix')
    >>> extract_choice("<answer>It is blue.</answer>", opts)
    Extraction(value='B', rule='tag:option_text')
    """
    answer = answer_of(text)
    span, source = answer.value or "", answer.source
    letters = set(options) or set(string.ascii_uppercase[:4])
    for method, found in (
        ("letter", _bare_letter(span, letters)),
        ("answer_prefix", _prefixed_letter(span, letters)),
        ("option_text", _option_by_text(span, options)),
    ):
        if found is not None:
            return Extraction(found, f"{source}:{method}")
    return Extraction(None, "none")


def _bare_letter(span: str, letters: set[str]) -> str | None:
    # "B", "(B)", "B.", "B)", "[B]" alone, or "B. blue" / "(B) blue" / "B: blue" leading an explanation
    # a span that is nothing but a letter may be lower case ("(a)" is how MMVP writes options)
    match = re.fullmatch(_LETTER_ALONE + r"\s*[\.:\)]?\s*", span.strip(), re.IGNORECASE)
    if match is None:
        match = re.match(r"\s*(?:\(([A-Z])\)|([A-Z])[\.\):])(?:\s|$)", span)
        letter = None if match is None else (match.group(1) or match.group(2))
    else:
        letter = match.group(1).upper()
    return letter if letter in letters else None


def _prefixed_letter(span: str, letters: set[str]) -> str | None:
    found = [m.group(1).upper() for m in _BOXED.finditer(span)]
    found += [m.group(1) for m in _PREFIX.finditer(span) if m.group(1).isupper()]
    found = [f for f in found if f in letters]
    return found[-1] if found else None


def _option_by_text(span: str, options: dict[str, str]) -> str | None:
    normalized = normalize_text(span)
    if not normalized:
        return None
    exact = [k for k, v in options.items() if normalize_text(v) and normalize_text(v) == normalized]
    if len(exact) == 1:
        return exact[0]
    contained = [
        k
        for k, v in options.items()
        if normalize_text(v) and re.search(rf"(?<!\w){re.escape(normalize_text(v))}(?!\w)", normalized)
    ]
    return contained[0] if len(contained) == 1 else None


_NEGATIONS = {
    "no",
    "not",
    "none",
    "nothing",
    "neither",
    "nor",
    "never",
    "isn't",
    "aren't",
    "doesn't",
    "don't",
    "cannot",
    "can't",
    "wasn't",
    "weren't",
    "isnt",
    "arent",
    "doesnt",
    "dont",
    "cant",
}


def extract_yes_no(text: str) -> Extraction:
    """``yes``/``no`` from a model output (rules in the module docstring).

    >>> extract_yes_no("<answer>Yes, there is a dog.</answer>")
    Extraction(value='yes', rule='tag:yes_no')
    >>> extract_yes_no("There is not a dog in the image.")
    Extraction(value='no', rule='untagged:negation')
    """
    answer = answer_of(text)
    span, source = answer.value or "", answer.source
    words = re.findall(r"[a-z']+", span.lower())
    if words and words[0] in ("yes", "no"):
        return Extraction(words[0], f"{source}:yes_no")
    first_sentence = re.findall(r"[a-z']+", re.split(r"[.!?\n]", span.lower(), maxsplit=1)[0])
    if _NEGATIONS & set(first_sentence):
        return Extraction("no", f"{source}:negation")
    if "yes" in words and "no" not in words:
        return Extraction("yes", f"{source}:contains_yes")
    return Extraction(None, "none")


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style short-answer normalisation).

    >>> normalize_text("  The Red-Car! ")
    'red car'
    """
    text = text.lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:\s*/\s*\d+)?\s*%?")


def normalize_number(text: str) -> float | None:
    """The single number a short answer states, or ``None``: ``1,234``, ``-3.5``, ``1/2``, ``50%`` (0.5),
    ``three``.

    >>> normalize_number("about 1,200 people"), normalize_number("50%"), normalize_number("three")
    (1200.0, 0.5, 3.0)
    """
    stripped = text.strip().lower().rstrip(".")
    if stripped in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[stripped])
    found = [m.group(0).strip() for m in _NUMBER.finditer(text) if re.search(r"\d", m.group(0))]
    if len(found) != 1:
        words = [w for w in re.findall(r"[a-z]+", stripped) if w in _NUMBER_WORDS]
        return float(_NUMBER_WORDS[words[0]]) if not found and len(words) == 1 else None
    token = found[0].replace(",", "").replace(" ", "")
    percent = token.endswith("%")
    token = token.rstrip("%")
    try:
        if "/" in token:
            numerator, denominator = token.split("/")
            value = float(numerator) / float(denominator)
        else:
            value = float(token)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


_MATHS_SIGN = re.compile(r"[\d\\^_=+*/<>]")


def looks_mathematical(text: str) -> bool:
    """Whether an answer is worth a symbolic check: it has a digit, a LaTeX command or an operator.
    Words are not: read as maths ``red`` is the product ``E*d*r`` (``e`` is Euler's number) and would
    equal ``der``.

    >>> looks_mathematical(r"\\frac{3}{4}"), looks_mathematical("x^2"), looks_mathematical("red")
    (True, True, False)
    """
    return _MATHS_SIGN.search(text) is not None


MathVerdict = Literal["equal", "different", "unparsed", "timeout", "error"]


@functools.lru_cache(maxsize=8192)  # pure; a group of rollouts repeats its answers
def verify_math(answer: str, truth: str, timeout_s: int = 5) -> MathVerdict:
    """Whether ``answer`` states the same mathematical object as ``truth``, by math_verify (``parse``
    reads LaTeX or plain expressions into SymPy, ``verify`` compares them numerically, then
    symbolically): ``equal`` or ``different``; ``unparsed`` when either side is not maths it can read;
    ``timeout`` when parsing or comparing took over ``timeout_s`` seconds (SymPy can take minutes on a
    hostile expression); ``error`` when the comparison raised.

    Each side is read as one expression, ``$...$`` (read bare, ``2\\sqrt{3}`` is ``2``), unless it
    marks its maths already (``\\boxed{...}``, ``$``). The time limit is math_verify's ``SIGALRM``,
    which only the main thread can set: elsewhere there is none.

    >>> verify_math("0.75", r"\\frac{3}{4}"), verify_math(r"\\boxed{\\frac34}", "3/4"), verify_math("0.7", "3/4")
    ('equal', 'equal', 'different')
    >>> verify_math(r"\\frac{", "3/4")
    'unparsed'
    """
    import threading

    # imported here: math_verify brings SymPy and ANTLR (half a second), which eval never needs otherwise
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    seconds = timeout_s if threading.current_thread() is threading.main_thread() else None
    try:
        parsed = [parse(_as_maths(side), fallback_mode="no_fallback", parsing_timeout=seconds, raise_on_error=True)
                  for side in (truth, answer)]
    except TimeoutException:  # a BaseException: no ``except Exception`` above would stop it
        return "timeout"
    except Exception:  # noqa: BLE001 - whatever the parser raises, the text is not maths it reads
        return "unparsed"
    if not all(parsed):
        return "unparsed"
    try:
        return "equal" if verify(parsed[0], parsed[1], timeout_seconds=seconds, raise_on_error=True) else "different"
    except TimeoutException:
        return "timeout"
    except Exception:  # noqa: BLE001 - SymPy may raise on any pair; a reward must not
        return "error"


def _as_maths(text: str) -> str:
    text = text.strip()
    return text if "$" in text or "\\boxed" in text else f"${text}$"


_PLAIN_NUMBER = re.compile(r"\s*" + _NUMBER.pattern + r"\s*")


def same_maths(answer: str, truth: str) -> bool:
    """Whether a maths answer is right (rules in the module docstring).

    >>> same_maths("3/4", r"\\frac{3}{4}"), same_maths("-3", "3"), same_maths("Triangle.", "triangle")
    (True, False, True)
    """
    if "".join(answer.split()).rstrip(".") == "".join(truth.split()).rstrip("."):
        return True
    if not looks_mathematical(truth):
        return normalize_text(answer) == normalize_text(truth)
    if re.search(r"\d", truth) and _PLAIN_NUMBER.fullmatch(truth):
        got, want = normalize_number(answer), normalize_number(truth)
        if got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            return True
    return verify_math(answer, truth) == "equal"


def extract_for(text: str, item: EvalItem) -> Extraction:
    """Extract the answer in the form ``item.answer_kind`` calls for."""
    if item.answer_kind == "choice":
        return extract_choice(text, item.options)
    if item.answer_kind == "yesno":
        return extract_yes_no(text)
    answer = answer_of(text)
    if answer.value is None:
        return Extraction(None, "none")
    method = item.answer_kind if item.answer_kind in ("number", "math") else "exact"
    return Extraction(answer.value, f"{answer.source}:{method}")


def is_correct(extracted: str | None, item: EvalItem) -> bool:
    """Whether an extracted answer matches ``item.answer`` under the item's answer kind."""
    if extracted is None:
        return False
    if item.answer_kind in ("choice", "yesno"):
        return extracted.strip().lower() == item.answer.strip().lower()
    if item.answer_kind == "number":
        got, want = normalize_number(extracted), normalize_number(item.answer)
        return got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    if item.answer_kind == "math":
        return same_maths(extracted, item.answer)
    if normalize_text(extracted) == normalize_text(item.answer):
        return True
    got, want = normalize_number(extracted), normalize_number(item.answer)
    return got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)


def score_answer(prediction_text: str, item: EvalItem) -> float:
    """1.0 if the answer in ``prediction_text`` is right for ``item``, else 0.0 (the RL accuracy reward).

    >>> item = EvalItem("q1", "vstar", None, "Color?", "", "B", options={"A": "red", "B": "blue"})
    >>> score_answer("<answer>B</answer>", item), score_answer("<answer>red</answer>", item)
    (1.0, 0.0)
    """
    if item.answer_kind == "mask":
        raise ValueError(f"{item.benchmark} is scored by mask IoU, not by answer text")
    return 1.0 if is_correct(extract_for(prediction_text, item).value, item) else 0.0


def score_sample(prediction_text: str, item: EvalItem) -> SampleResult:
    """The ``SampleResult`` for one model output: extracted answer, rule, correctness, group keys."""
    extraction = extract_for(prediction_text, item)
    return SampleResult(
        id=item.id,
        correct=is_correct(extraction.value, item),
        extracted=extraction.value,
        rule=extraction.rule,
        answer=item.answer,
        groups=dict(item.groups),
    )


def choice_by_likelihood(nll: dict[str, float], item: EvalItem) -> SampleResult:
    """The option of lowest mean negative log-likelihood (letter -> value), scored as the chosen
    letter (rule ``likelihood``): the likelihood protocol, where options are scored, not generated.

    >>> item = EvalItem("q1", "vstar", None, "Color?", "", "B", options={"A": "red", "B": "blue"})
    >>> result = choice_by_likelihood({"A": 2.5, "B": 0.75}, item)
    >>> result.extracted, result.rule, result.correct
    ('B', 'likelihood', True)
    """
    chosen = min(nll, key=nll.__getitem__)
    return SampleResult(id=item.id, correct=chosen == item.answer, extracted=chosen, rule="likelihood",
                        answer=item.answer, groups=dict(item.groups))
