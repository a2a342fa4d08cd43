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



# an option's mark: "(A) ", "A. ", "A: ", "A) " after a space or at a line's start
_OPTION_MARK = re.compile(r"(?:^|(?<=\s))(?:\(([A-Z])\)|([A-Z])[\.:\)])\s+", re.MULTILINE)


def inline_options(text: str) -> dict[str, str]:
    """The options a question lists in its text, whichever way it lists them: one per line (as
    ``split_inline_options`` reads them), else several to a line, ``A. 12 B. 15`` / ``(A) 12 (B) 15``
    / ``Choices: A: 12 B: 15``: the last run of marks ``A``, ``B``, ... in order (two at least), each
    option running to the next mark or the end of its line. Empty when there is none.

    >>> inline_options("What is x?\\nChoices:\\n(A) 12\\n(B) 15")
    {'A': '12', 'B': '15'}
    >>> inline_options("What is x? Choices: A: 12 B: 15 C: 18\\nAnswer with the letter.")
    {'A': '12', 'B': '15', 'C': '18'}
    >>> inline_options("Which? A. 1 cm B. 2 cm\\nC. 3 cm D. 4 cm")
    {'A': '1 cm', 'B': '2 cm', 'C': '3 cm', 'D': '4 cm'}
    >>> inline_options("Point A. lies on BC."), inline_options("How many?")
    ({}, {})
    """
    _, options = split_inline_options(text)
    if len(options) >= 2:
        return options
    marks = [(m.group(1) or m.group(2), m) for m in _OPTION_MARK.finditer(text)]
    # the last "A" that starts a run: an "A." earlier in the question ("point A. lies") starts none
    for start in reversed([i for i, (letter, _) in enumerate(marks) if letter == "A"]):
        chain = [marks[start][1]]
        for letter, mark in marks[start + 1 :]:
            if letter == string.ascii_uppercase[len(chain)]:
                chain.append(mark)
        if len(chain) < 2:
            continue
        ends = [m.start() for m in chain[1:]] + [len(text)]
        found = {m.group(1) or m.group(2): text[m.end() : end].split("\n")[0].strip() for m, end in zip(chain, ends)}
        if all(found.values()):
            return found
    return {}
