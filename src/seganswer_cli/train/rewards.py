"""Stage 3's rewards (paper §3.3, Eq. 2): plain functions ``reward(completions, **columns) -> list[float]``.

``completions`` are the trajectories' texts as the model wrote them (``Trajectory.text``: every
model turn, special tokens kept, each closed turn ending in ``<|im_end|>``); ``columns`` are the
prompt set's fields, one value per completion (``answer``, ``answer_type``, ``options``,
``answer_letter``, ``question``), as a dataset would hand them over.

- ``accuracy_reward``: 1.0 when the answer is right, scored by the benchmark scorers of
  ``eval/answers.py`` (the one answer rule, ``conversation.answer_of``, then option letters, yes/no,
  numbers, short text, maths, with their normalisation), so RL optimises what ``seganswer eval``
  measures. ``math`` answers (ViRL39K's boxed LaTeX) are checked cheaply first and then by
  math_verify (``answers.verify_math``: ``3/4``, ``0.75`` and ``\\boxed{\\frac34}`` are all right
  against ``\\frac{3}{4}``), under a time limit; a pair math_verify cannot read, or that runs out of
  time, scores 0 and is counted (``COUNTS``: ``math_unparsed``, ``math_timeout``, ``math_error``).
  A question whose options are written inside its text (ViRL39K: ``(A) 12\\n(B) 15``, ``A. 12 B. 15``,
  ``Choices: A: 12 ...``; ``multiple_choice.inline_options``) is scored as multiple choice when its
  ground truth names one of them (the letter, ``(A)``, or the option's text, read by the same
  choice rules): ``A``, ``(A) 12``, ``A. 12`` and ``12`` are then all right;
- ``format_reward``: 1.0 when ``<|seg|>`` is used the way the reasoning prompt asks (only in turns
  that end by asking for the segmented region) and the final turn answers inside one
  ``<answer>...</answer>`` pair (``conversation.well_formed``);
- ``total_reward``: ``w_a * accuracy + w_f * format`` (paper: 0.8 and 0.2);
- ``score_completions``: runs several reward functions with weights; a function that raises
  scores the samples it raised on 0 and counts them, so one bad record cannot stop a run. Each
  function is handed a ``counts`` ``Counter`` it may add named counts to (what it could not score
  and why); they come back in ``RewardScores.counts`` and go to the step's metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from seganswer_cli.eval.answers import (
    extract_choice,
    extract_for,
    is_correct,
    looks_mathematical,
    verify_math,
)
from seganswer_cli.eval.items import EvalItem
from seganswer_cli.eval.multiple_choice import inline_options
from seganswer_cli.model.conversation import lettered, well_formed

RewardFunction = Callable[..., list[float]]

#: The paper's weights (§4.2): w_a = 0.8, w_f = 0.2.
PAPER_WEIGHTS = {"accuracy": 0.8, "format": 0.2}


def scoring_item(answer: str, answer_type: str = "text", options: Sequence[str] | None = None,
                 answer_letter: str | None = None, question: str = "") -> EvalItem:
    """The ``EvalItem`` the eval scorers check a completion against, from one prompt's columns.

    Multiple choice is scored by letter (``answer_letter``, or the option equal to ``answer``), and
    so is a question with options inline in its ``question`` text whose ground truth names one of
    them; ``number`` numerically; ``math`` (ViRL39K's boxed answers) by ``answers.same_maths``;
    ``text`` as normalised short text, with equal numbers also accepted.

    >>> scoring_item("blue", "choice", ["red", "blue"]).answer
    'B'
    >>> item = scoring_item("(B)", "math", question="x?\\n(A) 12\\n(B) 15")
    >>> item.answer_kind, item.answer, item.options
    ('choice', 'B', {'A': '12', 'B': '15'})
    >>> scoring_item(r"\\frac{3}{4}", "math").answer_kind
    'math'
    """
    if not answer or not str(answer).strip():
        raise ValueError("the prompt has no ground-truth answer to verify against")
    if answer_type == "choice" or options:
        letters = lettered(list(options or []))
        letter = answer_letter or next((k for k, v in letters.items() if v.strip() == str(answer).strip()), None)
        if letter is None or letter not in letters:
            raise ValueError(f"answer {answer!r} is not one of the options {list(letters.values())}")
        return EvalItem("rl", "rl", None, "", "", letter, answer_kind="choice", options=letters)
    listed = inline_options(question) if question else {}
    if listed:
        # the ground truth read by the rules that read the model's answer: "A", "(A)", "A. 12" or "12"
        letter = extract_choice(str(answer), listed).value
        if letter is not None:
            return EvalItem("rl", "rl", None, "", "", letter, answer_kind="choice", options=listed)
    if str(answer).strip().lower() in ("yes", "no"):
        kind = "yesno"
    else:
        kind = answer_type if answer_type in ("number", "math") else "text"
    return EvalItem("rl", "rl", None, "", "", str(answer).strip(), answer_kind=kind)


def accuracy_reward(completions: list[str], answer: list[str], answer_type: list[str] | None = None,
                    options: list[list[str]] | None = None, answer_letter: list[str | None] | None = None,
                    question: list[str] | None = None, counts: Counter | None = None, **_) -> list[float]:
    """1.0 per completion whose answer the eval scorer accepts, else 0.0. A maths answer that
    math_verify cannot read or that runs out of time scores 0 and adds to ``counts``.

    >>> accuracy_reward(["It is <|seg|>.<|im_end|><answer> Red </answer>", "<answer> 4 </answer>"],
    ...                 answer=["red", "four"], answer_type=["text", "number"])
    [1.0, 1.0]
    >>> accuracy_reward(["<answer> (B) </answer>"], answer=["blue"], answer_type=["choice"], options=[["red", "blue"]])
    [1.0]
    >>> tally = Counter()
    >>> accuracy_reward(["<answer> 0.75 </answer>", r"<answer> \\frac{ </answer>"], answer=[r"\\frac{3}{4}"] * 2,
    ...                 answer_type=["math"] * 2, counts=tally), dict(tally)
    ([1.0, 0.0], {'math_unparsed': 1})
    """
    n = len(completions)
    answer_type = answer_type or ["text"] * n
    options = options or [[] for _ in range(n)]
    answer_letter = answer_letter or [None] * n
    question = question or [""] * n
    scores = []
    for text, a, t, o, letter, q in zip(completions, answer, answer_type, options, answer_letter, question,
                                        strict=True):
        item = scoring_item(a, t, o, letter, q)
        extracted = extract_for(text, item).value
        right = is_correct(extracted, item)
        scores.append(1.0 if right else 0.0)
        asked_math_verify = item.answer_kind == "math" and extracted is not None and looks_mathematical(item.answer)
        if not right and counts is not None and asked_math_verify:
            # why is_correct said no; verify_math is cached, so asking again costs nothing
            verdict = verify_math(extracted, item.answer)
            if verdict not in ("equal", "different"):
                counts[f"math_{verdict}"] += 1
    return scores


def format_reward(completions: list[str], **_) -> list[float]:
    """1.0 per completion that follows the reasoning prompt's format (``conversation.well_formed``:
    every turn before the last asks for a region, the last answers inside one ``<answer>...</answer>``
    pair), else 0.0.

    >>> format_reward(["To find it, observe <|seg|>.<|im_end|><answer> red </answer>",
    ...                "<answer> red </answer>.<|im_end|>", "red<|im_end|>", "<|seg|><answer> red </answer>"])
    [1.0, 1.0, 0.0, 0.0]
    """
    return [1.0 if well_formed(text) else 0.0 for text in completions]


REWARDS: dict[str, RewardFunction] = {"accuracy": accuracy_reward, "format": format_reward}
"""Reward functions by the name ``Stage3Config.reward_weights`` uses."""

COUNTS = ("math_unparsed", "math_timeout", "math_error")
"""The counts ``accuracy_reward`` keeps (maths answers scored 0 because math_verify could not read
them, ran out of time, or raised); Stage 3 logs each per step, so the names are fixed here."""


def total_reward(completions: list[str], weights: dict[str, float] | None = None, **columns) -> list[float]:
    """``sum_k w_k * reward_k`` (default: the paper's ``0.8 * accuracy + 0.2 * format``).

    >>> total_reward(["observe <|seg|>.<|im_end|><answer> red </answer>", "blue"], answer=["red", "red"])
    [1.0, 0.0]
    >>> total_reward(["<answer> blue </answer>"], answer=["red"])
    [0.2]
    """
    return score_completions(completions, weights or PAPER_WEIGHTS, **columns).total


@dataclass
class RewardScores:
    """Rewards of a batch of completions."""

    total: list[float]
    """Weighted sum per completion."""
    parts: dict[str, list[float]]
    """Each reward function's score per completion (0.0 where it raised)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Completions each function raised on (scored 0)."""
    counts: dict[str, int] = field(default_factory=dict)
    """What the functions counted (``COUNTS``), by name."""
    messages: list[str] = field(default_factory=list)
    """One line per distinct error (reward name: exception)."""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def score_completions(completions: list[str], weights: dict[str, float],
                      functions: dict[str, RewardFunction] | None = None, **columns) -> RewardScores:
    """Run each reward named in ``weights`` on the batch and combine them.

    A function that raises on the batch is run again one completion at a time; each completion it
    still raises on is scored 0 and counted in ``errors``. Every call gets its own ``counts``
    ``Counter``, kept only when the call returns, so a retried batch is not counted twice.

    >>> def broken(completions, **_):
    ...     raise KeyError("no answer")
    >>> s = score_completions(["<answer> red </answer>"], {"format": 1.0, "broken": 1.0},
    ...                       functions={**REWARDS, "broken": broken}, answer=["red"])
    >>> s.total, s.errors
    ([1.0], {'broken': 1})
    """
    functions = functions if functions is not None else REWARDS
    n = len(completions)
    unknown = sorted(set(weights) - set(functions))
    if unknown:
        raise KeyError(f"unknown reward(s) {unknown}; known: {sorted(functions)}")
    parts, errors, messages, counts = {}, {}, [], Counter()
    for name in weights:
        fn = functions[name]
        try:
            tally = Counter()
            scores = [float(s) for s in fn(completions, counts=tally, **columns)]
            if len(scores) != n:
                raise ValueError(f"returned {len(scores)} scores for {n} completions")
            counts += tally
        except Exception:  # noqa: BLE001 - a reward may fail on any record; isolate the bad ones
            scores = []
            for i in range(n):
                try:
                    tally = Counter()
                    (score,) = fn([completions[i]], counts=tally, **{k: [v[i]] for k, v in columns.items()})
                    scores.append(float(score))
                    counts += tally
                except Exception as e:  # noqa: BLE001
                    scores.append(0.0)
                    errors[name] = errors.get(name, 0) + 1
                    line = f"{name}: {type(e).__name__}: {e}"
                    if line not in messages:
                        messages.append(line)
        parts[name] = scores
    total = [sum(weights[k] * parts[k][i] for k in weights) for i in range(n)]
    return RewardScores(total=[round(t, 10) for t in total], parts=parts, errors=errors, counts=dict(counts),
                        messages=messages)
