"""Multiple-choice prompts as the benchmarks' usual harnesses write them, and option rotation.

VLMEvalKit style (MMBench, HR-Bench): ``Hint: ...`` / ``Question: ...`` / ``Options:`` / ``A. text`` /
``Please select the correct answer from the options above.``; LLaVA style (V*, MMVP): question, then
``(A) text`` lines, then ``Answer with the option's letter from the given choices directly.``
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seganswer_cli.data.samples import VQASample

VLMEVALKIT_INSTRUCTION = "Please select the correct answer from the options above."
LLAVA_INSTRUCTION = "Answer with the option's letter from the given choices directly."


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


def llava_prompt(question: str, options: dict[str, str]) -> str:
    """Question, ``(A) text`` lines, then the LLaVA letter instruction (V*'s own jsonl prompt)."""
    lines = [question] + [f"({letter}) {text}" for letter, text in options.items()]
    return "\n".join(lines + [LLAVA_INSTRUCTION])


def prompt_and_answer(sample: VQASample) -> tuple[str, str]:
    """The question as the model is asked it and the answer it should give: multiple choice in the
    LLaVA style answered with the option's letter, free text asked as-is and answered with the
    answer itself. ``shapes-vqa`` builds its prompts with it and Stage 2 its training turns, so
    what Stage 2 teaches is what the benchmark asks.

    >>> from seganswer_cli.data.samples import ImageRef, VQASample
    >>> image = ImageRef(data=b"png", name="x")
    >>> prompt_and_answer(VQASample("1", image, "Which colour?", "blue", "t", ["red", "blue"], "B"))[1]
    'B'
    >>> prompt_and_answer(VQASample("2", image, "Which colour?", "blue", "t"))
    ('Which colour?', 'blue')
    """
    if sample.options:
        return llava_prompt(sample.question, lettered(sample.options)), str(sample.answer_letter)
    return sample.question, sample.answer


def lettered(choices: list[str]) -> dict[str, str]:
    """``["cat", "dog"]`` -> ``{"A": "cat", "B": "dog"}``."""
    return dict(zip(string.ascii_uppercase, choices, strict=False))


def rotate(options: dict[str, str], answer: str, shift: int) -> tuple[dict[str, str], str]:
    """Options cyclically shifted by ``shift`` (the new ``A`` is the old option ``shift``), and the
    letter the right answer moves to. CircularEval asks every shift ``0..n-1``.

    >>> rotate({"A": "cat", "B": "dog", "C": "cow"}, "A", 1)
    ({'A': 'dog', 'B': 'cow', 'C': 'cat'}, 'C')
    """
    letters = list(options)
    texts = list(options.values())
    n = len(texts)
    shifted = {letters[i]: texts[(i + shift) % n] for i in range(n)}
    old = letters.index(answer)
    return shifted, letters[(old - shift) % n]


_INLINE_OPTION = re.compile(r"^\s*\(?([A-Z])[\)\.:]\s*(.*\S)\s*$")


def split_inline_options(text: str) -> tuple[str, dict[str, str]]:
    """Split a question that lists its options on their own lines (``(A) red`` / ``A. red`` / ``A: red``)
    into (question without them, options). Lines after the options (an instruction) are dropped.

    >>> split_inline_options("Color?\\n(A) red\\n(B) blue\\nAnswer with the letter.")
    ('Color?', {'A': 'red', 'B': 'blue'})
    """
    question_lines: list[str] = []
    options: dict[str, str] = {}
    for line in text.split("\n"):
        match = _INLINE_OPTION.match(line)
        expected = string.ascii_uppercase[len(options)]
        if match and match.group(1) == expected:
            options[expected] = match.group(2)
        elif not options:
            question_lines.append(line)
        else:
            break
    return "\n".join(question_lines).strip(), options
