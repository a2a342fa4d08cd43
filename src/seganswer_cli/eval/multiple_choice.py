"""Multiple-choice options of the benchmarks: CircularEval's rotation and options listed inside a
question's text. The prompt layouts (LLaVA's, VLMEvalKit's) are ``model/conversation.py``'s.
"""

from __future__ import annotations

import re
import string


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
