"""The conversation: how a sample is asked, the paper's turns, the second look, and the one answer rule.

Everything that talks to the model lays its turns out here: Stage 1 and the demo's stand-in, Stage 2's
training conversations and its pass 1, the reasoning loop (``infer``, ``eval``, Stage 3's rollouts),
and everything that reads an output (the loop's ``Trajectory.answer``, the benchmark scorers, Stage 3's
rewards) reads it with ``answer_of`` and ``well_formed``. So the conversation the model is trained on
is the one it is asked at inference by construction, and an output scores the same wherever it is read.
The texts themselves (special tokens, the paper's prompt templates) are ``tokens.py``'s.

How a sample is asked (``prompt_and_answer``): multiple choice in the LLaVA/V* layout (question,
``(A) text`` lines, "Answer with the option's letter from the given choices directly.") or, when the
sample says so, VLMEvalKit's, answered with the option's letter; a yes/no question with "Please answer
yes or no."; free text asked as it is and answered with the answer. ``vlmevalkit_prompt`` is
the ``Hint:``/``Question:``/``Options:`` layout of MMBench and HR-Bench.

The paper's turns (each function returns a ``Sequence`` or extends a ``SequenceBuilder``)::

    exchange_sequence    image + prompt -> reply [-> prompt -> reply ...]   (Stage 1, plain questions)
    stage1_sequence      image + 'Segment the "..." in the image.' -> 'It is <|seg|>.'
    reasoning_start      Prompt 1: image + "Question: ..." + the reasoning instruction
    seg_request          Prompt 1 -> Response 1 "To find the answer, it should first observe <|seg|>."
    reasoning_sequence   Prompt 1 -> Response 1 -> Prompt 2 (the segmented region) -> Response 2
                         "<answer> ... </answer>."; or Prompt 1 -> the answer at once
    second_look_turn     Prompt 2 after a reply: the segmented view(s) as a user turn without text
    open_direct_answer   the model's turn opened with ``<answer>`` (``--roi none``; ``opening="forced"``)
    open_forced_look     Response 1 given up to its ``<|seg|>``, ``close_forced_look`` the rest
                         (``opening="forced"`` for ``--roi mask|bbox``)

The reasoning loop builds the same tokens incrementally: ``reasoning_start``, the generated reply
(its ``<|im_end|>`` included), ``SequenceBuilder.after_reply`` and ``second_look_turn``, exactly the
calls ``reasoning_sequence`` makes after ``SequenceBuilder.assistant``.

The answer rule (``answer_of``), one for the whole package. An output is the model's turns as the
loop decodes them, each closed turn ending in ``<|im_end|>``; only the **last** turn answers:

- chat special tokens (``<|im_end|>``, ``<|seg|>``, ...) are never part of an answer;
- a last turn that asks for a region (it holds ``<|seg|>``) and has no ``<answer>`` answers nothing;
- the text after the last ``<answer>`` (any case) up to its ``</answer>`` is the answer (``tag``), or
  up to the end of the turn when it was never closed (``unclosed``: generation stopped);
- without a tag the turn's whole text is the answer (``untagged``); the benchmark scorers then apply
  their own rules (option letters, yes/no, numbers);
- whitespace is collapsed and one trailing period dropped; nothing left is ``missing``;
- a fragment of the reasoning preamble (``To``, ``To first observe triangle``: words of Response 1
  where an answer should be) or a text holding a broken answer tag (``red </answer red``) is no
  answer either (``missing``): a barely trained model writes such things, and reporting them as
  answers would score noise. ``Answer.reason`` says why an output has no answer.

``well_formed`` is the format the reasoning prompt asks for (Stage 3's format reward): every turn
before the last asks for a region and answers nothing; the last holds no ``<|seg|>`` and exactly one
non-empty ``<answer>...</answer>``, followed by at most a period.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

from seganswer_cli.model import tokens

if TYPE_CHECKING:
    from seganswer_cli.model.sequence import Sequence, SequenceBuilder
    from seganswer_cli.model.sparse_patches import DenseImage, SegmentedView

# -- how a sample is asked ------------------------------------------------------------------------

LLAVA_INSTRUCTION = "Answer with the option's letter from the given choices directly."
VLMEVALKIT_INSTRUCTION = "Please select the correct answer from the options above."
YES_NO_INSTRUCTION = "Please answer yes or no."
"""The instruction after a yes/no question (POPE's and HallusionBench's prompts, as LLaVA asks them)."""


def lettered(choices: list[str]) -> dict[str, str]:
    """``["cat", "dog"]`` -> ``{"A": "cat", "B": "dog"}``.

    >>> lettered(["cat", "dog"])
    {'A': 'cat', 'B': 'dog'}
    """
    return dict(zip(string.ascii_uppercase, choices, strict=False))


def llava_prompt(question: str, options: dict[str, str]) -> str:
    """Question, ``(A) text`` lines, then the LLaVA letter instruction (V*'s own jsonl prompt).

    >>> print(llava_prompt("Which?", {"A": "cat", "B": "dog"}))
    Which?
    (A) cat
    (B) dog
    Answer with the option's letter from the given choices directly.
    """
    lines = [question] + [f"({letter}) {text}" for letter, text in options.items()]
    return "\n".join(lines + [LLAVA_INSTRUCTION])


def vlmevalkit_prompt(question: str, options: dict[str, str], hint: str | None = None) -> str:
    """``Hint:``/``Question:``/``Options:`` layout used by VLMEvalKit for MMBench and HR-Bench.

    >>> print(vlmevalkit_prompt("Which?", {"A": "cat", "B": "dog"}))
    Question: Which?
    Options:
    A. cat
    B. dog
    Please select the correct answer from the options above.
    """
    lines = [f"Hint: {hint}"] if hint else []
    lines.append(f"Question: {question}")
    if options:
        lines.append("Options:")
        lines += [f"{letter}. {text}" for letter, text in options.items()]
        lines.append(VLMEVALKIT_INSTRUCTION)
    return "\n".join(lines)


def prompt_and_answer(sample) -> tuple[str, str]:
    """The question as the model is asked it and the answer it should give (a ``data.VQASample``):
    multiple choice in the LLaVA layout (or VLMEvalKit's, when ``extra["prompt_format"]`` is
    ``mmbench``) answered with the option's letter; a yes/no question (``prompt_format`` ``yesno``)
    followed by ``YES_NO_INSTRUCTION`` and answered ``yes`` or ``no``; free text asked as it is and
    answered with the answer itself. ``shapes-vqa`` asks its questions with it, Stage 2 and the
    stand-in train on it and Stage 3 rolls out on it, so what training teaches is what is asked.

    >>> from types import SimpleNamespace as Sample
    >>> prompt_and_answer(Sample(question="Which colour?", options=["red", "blue"], answer_letter="B", answer="blue"))[1]
    'B'
    >>> prompt_and_answer(Sample(question="Which colour?", options=[], answer_letter=None, answer="blue"))
    ('Which colour?', 'blue')
    >>> prompt_and_answer(Sample(question="Is it red?", options=[], answer_letter=None, answer="no",
    ...                          extra={"prompt_format": "yesno"}))
    ('Is it red?\\nPlease answer yes or no.', 'no')
    """
    layout = (getattr(sample, "extra", None) or {}).get("prompt_format")
    if sample.options:
        if layout == "mmbench":
            return vlmevalkit_prompt(sample.question, lettered(sample.options)), str(sample.answer_letter)
        return llava_prompt(sample.question, lettered(sample.options)), str(sample.answer_letter)
    if layout == "yesno":
        return f"{sample.question}\n{YES_NO_INSTRUCTION}", sample.answer
    return sample.question, sample.answer


# -- the paper's turns ----------------------------------------------------------------------------


def exchange_sequence(model, image: DenseImage, turns: list[tuple[str, str]],
                      system: str = tokens.DEFAULT_SYSTEM) -> Sequence:
    """``image`` + ``turns[0]``'s prompt -> its reply, then each further (prompt, reply) about the same
    image; the replies (and their ``<|im_end|>``) are the targets. ``model`` gives the builder."""
    b = model.builder().system(system)
    for index, (prompt, reply) in enumerate(turns):
        b.user(prompt, image=image if index == 0 else None)
        b.assistant(reply)
    return b.build()


def stage1_sequence(model, image: DenseImage, expression: str, response: str = tokens.STAGE1_RESPONSE) -> Sequence:
    """The paper's Stage 1 conversation: image + ``Segment the "..." in the image.`` -> ``It is <|seg|>.``"""
    return exchange_sequence(model, image, [(tokens.stage1_prompt(expression), response)])


def echo_response(expression: str) -> str:
    """The demo stand-in's Response 1, ``It is <|seg|> red star.``: the token after ``<|seg|>`` is the
    expression's first word, so the next-token loss makes the hidden state at ``<|seg|>`` depend
    on the expression. With the paper's ``It is <|seg|>.`` a randomly initialised model learns one
    state for every expression and SAM's decoder learns to ignore its prompt (a mask per image,
    not per expression); a pretrained LLM has no such problem.

    >>> echo_response("the red star")
    'It is <|seg|> red star.'
    """
    words = expression.strip().removesuffix(".")
    return f"It is {tokens.SEG_TOKEN} {words.removeprefix('the ')}."


def reasoning_start(model, image: DenseImage, question: str, *, system: str = tokens.DEFAULT_SYSTEM) -> SequenceBuilder:
    """Prompt 1 of the reasoning conversation (paper §3.2): the image, ``Question: ...`` and the
    instruction; the model's turn follows."""
    return model.builder().system(system).user(tokens.reasoning_prompt(question), image=image)


def seg_request(model, image: DenseImage, question: str) -> Sequence:
    """Prompt 1 -> Response 1 (``... observe <|seg|>.``): what Stage 2's pass 1 runs. The state at
    ``<|seg|>`` depends only on the tokens before it, so it equals the state the reasoning loop reads."""
    return reasoning_start(model, image, question).assistant(tokens.SEG_RESPONSE).build()


def second_look_turn(builder: SequenceBuilder, view: SegmentedView | list[SegmentedView]) -> SequenceBuilder:
    """Prompt 2: the segmented region(s) of interest as a user turn without text, after a reply."""
    return builder.user("", view=view)


def reasoning_sequence(model, image: DenseImage, question: str, answer: str,
                       view: SegmentedView | list[SegmentedView] | None = None) -> Sequence:
    """The paper's Stage 2 conversation: Prompt 1 -> Response 1 (``... observe <|seg|>.``) -> Prompt 2
    (the segmented view) -> Response 2 (``<answer> ... </answer>.``). With ``view=None`` the model
    answers at once (Response 1 is the answer): segmenting is a choice."""
    b = reasoning_start(model, image, question)
    if view is not None:
        second_look_turn(b.assistant(tokens.SEG_RESPONSE), view)
    return b.assistant(tokens.answer_response(answer)).build()


def open_forced_look(builder: SequenceBuilder) -> SequenceBuilder:
    """The model's first turn given (not targets) up to and including its ``<|seg|>``: Response 1
    (``... observe <|seg|>``), the reasoning loop's ``opening="forced"`` for ``--roi mask|bbox``;
    ``close_forced_look`` gives the rest once that ``<|seg|>`` is fed. Special tokens split the
    text, so the two parts are the ids of Response 1 tokenised whole."""
    return builder.text(tokens.SEG_RESPONSE[: tokens.SEG_RESPONSE.index(tokens.SEG_TOKEN) + len(tokens.SEG_TOKEN)])


def close_forced_look(builder: SequenceBuilder) -> SequenceBuilder:
    """The rest of the given Response 1 after its ``<|seg|>`` (``.``) and the turn's ``<|im_end|>``."""
    rest = tokens.SEG_RESPONSE[tokens.SEG_RESPONSE.index(tokens.SEG_TOKEN) + len(tokens.SEG_TOKEN):]
    return builder.text(rest + tokens.IM_END)


def open_direct_answer(builder: SequenceBuilder) -> SequenceBuilder:
    """The model's turn opened with ``<answer>`` (given, not a target): the direct-answer format that
    Stage 2 trains beside the segmenting one, used by ``--roi none``."""
    return builder.text(tokens.ANSWER_OPEN)


# -- the answer rule --------------------------------------------------------------------------------

_CHAT_TOKEN = re.compile(r"<\|[a-z_]+\|>")
_OPEN = re.compile(re.escape(tokens.ANSWER_OPEN), re.IGNORECASE)
_CLOSE = re.compile(re.escape(tokens.ANSWER_CLOSE), re.IGNORECASE)

_BROKEN_TAG = re.compile(r"<\s*/?\s*answer(?!\s*>)|(?<![<\w/])/?answer>", re.IGNORECASE)
_PREAMBLE_WORDS = re.findall(r"[a-z]+", tokens.SEG_RESPONSE.replace(tokens.SEG_TOKEN, "").lower())
"""Response 1's words: to find the answer it should first observe."""

#: Where an answer came from (``Answer.source``).
ANSWER_SOURCES = ("tag", "unclosed", "untagged", "missing")
#: Why an output has no answer (``Answer.reason`` when ``value`` is None).
NO_ANSWER_REASONS = {
    "asks_for_region": "the last turn asks for a region (<|seg|>) and gives no <answer>",
    "empty": "no text is left once the chat tokens are removed",
    "preamble": "the text is a fragment of the reasoning preamble, not an answer",
    "broken_tag": "the text holds a broken answer tag",
}


@dataclass(frozen=True)
class Answer:
    """The answer of an output (None when there is none), where it came from (``ANSWER_SOURCES``)
    and, without one, why (a key of ``NO_ANSWER_REASONS``)."""

    value: str | None
    source: str
    reason: str | None = None

    def __repr__(self) -> str:
        extra = f", reason={self.reason!r}" if self.reason is not None else ""
        return f"Answer(value={self.value!r}, source={self.source!r}{extra})"


def _no_answer(reason: str) -> Answer:
    return Answer(None, "missing", reason)


def is_preamble_fragment(text: str) -> bool:
    """Whether ``text`` is words of the reasoning preamble rather than an answer: the preamble's
    first words (``To``, ``To find the``), or ``To ...`` with its verb ``observe``.

    >>> [is_preamble_fragment(t) for t in ("To", "To find the answer", "To first observe triangle",
    ...                                    "to the left", "red", "It is observed")]
    [True, True, True, False, False, False]
    """
    words = re.findall(r"[a-z]+", text.lower())
    if not words or words[0] != _PREAMBLE_WORDS[0]:
        return False
    return words == _PREAMBLE_WORDS[: len(words)] or _PREAMBLE_WORDS[-1] in words


def model_turns(output: str) -> list[str]:
    """The model's turns of an output: split after each ``<|im_end|>`` (the last turn may be open),
    each stripped; an empty text after the last ``<|im_end|>`` is no turn.

    >>> model_turns("observe <|seg|>.<|im_end|><answer> a </answer>")
    ['observe <|seg|>.', '<answer> a </answer>']
    >>> model_turns("<answer> a </answer>.<|im_end|>")
    ['<answer> a </answer>.']
    """
    turns = [part.strip() for part in output.split(tokens.IM_END)]
    return [t for i, t in enumerate(turns) if t or i < len(turns) - 1]


def closes_answer(text: str) -> bool:
    """Whether ``text`` holds a ``</answer>`` (any case): the reasoning loop stops there."""
    return _CLOSE.search(text) is not None


def answer_of(output: str) -> Answer:
    """The answer of a model output under the one rule (module docstring).

    >>> answer_of("To find the answer, it should first observe <|seg|>.<|im_end|><answer> red </answer>.<|im_end|>")
    Answer(value='red', source='tag')
    >>> answer_of("<answer>A</answer> wait <answer> C"), answer_of("<ANSWER> red </ANSWER>")
    (Answer(value='C', source='unclosed'), Answer(value='red', source='tag'))
    >>> answer_of("<answer> blue<|im_end|>"), answer_of("No, there is no dog.")
    (Answer(value='blue', source='unclosed'), Answer(value='No, there is no dog', source='untagged'))
    >>> answer_of("It is <|seg|>.<|im_end|>"), answer_of("<|im_end|>")
    (Answer(value=None, source='missing', reason='asks_for_region'), Answer(value=None, source='missing', reason='empty'))
    >>> answer_of("To first observe triangle"), answer_of("<answer> To square </answer square")
    (Answer(value=None, source='missing', reason='preamble'), Answer(value=None, source='missing', reason='broken_tag'))
    """
    turns = model_turns(output)
    last = turns[-1] if turns else ""
    opens = list(_OPEN.finditer(last))
    if not opens and tokens.SEG_TOKEN in last:
        return _no_answer("asks_for_region")  # the turn asked for a region: it answers nothing
    last = _CHAT_TOKEN.sub(" ", last)
    opens = list(_OPEN.finditer(last))
    if opens:
        tail = last[opens[-1].end() :]
        close = _CLOSE.search(tail)
        text, source = (tail[: close.start()], "tag") if close else (tail, "unclosed")
    else:
        text, source = _CLOSE.sub(" ", last), "untagged"
    text = " ".join(text.split())
    text = text.removesuffix(".").strip()
    if not text:
        return _no_answer("empty")
    if _BROKEN_TAG.search(text):
        return _no_answer("broken_tag")
    if is_preamble_fragment(text):
        return _no_answer("preamble")
    return Answer(text, source)


def well_formed(output: str) -> bool:
    """Whether an output follows the reasoning prompt's format (module docstring).

    >>> [well_formed(o) for o in ("To find it, observe <|seg|>.<|im_end|><answer> red </answer>",
    ...                           "<answer> red </answer>.<|im_end|>", "red<|im_end|>",
    ...                           "<|seg|><answer> red </answer>", "<answer>A</answer> wait <answer> C")]
    [True, True, False, False, False]
    """
    turns = model_turns(output)
    if not turns:
        return False
    *looks, final = turns
    for turn in looks:
        if tokens.SEG_TOKEN not in turn or _OPEN.search(turn) or _CLOSE.search(turn):
            return False
    if tokens.SEG_TOKEN in final:
        return False
    opens, closes = list(_OPEN.finditer(final)), list(_CLOSE.finditer(final))
    if len(opens) != 1 or len(closes) != 1 or closes[0].start() < opens[0].end():
        return False
    inside = final[opens[0].end() : closes[0].start()]
    after = final[closes[0].end() :]
    return bool(_CHAT_TOKEN.sub("", inside).strip()) and after.strip() in ("", ".")
