"""Stage 3 rewards: accuracy through the eval scorers, the format rule, weights, raising rewards."""

from __future__ import annotations

import pytest

from seganswer_cli.train import rewards
from seganswer_cli.train.rewards import accuracy_reward, format_reward, score_completions, total_reward

SEG_THEN_ANSWER = "To find the answer, it should first observe <|seg|>.<|im_end|><answer> {} </answer>"


@pytest.mark.parametrize(("text", "answer", "kind", "options", "expected"), [
    ("<answer> (B) </answer>", "blue", "choice", ["red", "blue"], 1.0),
    ("<answer> B. blue </answer>", "blue", "choice", ["red", "blue"], 1.0),
    ("<answer> A </answer>", "blue", "choice", ["red", "blue"], 0.0),
    ("<answer> 1,200 </answer>", "1200", "number", [], 1.0),
    ("<answer> three </answer>", "3", "number", [], 1.0),
    ("<answer> 4 </answer>", "3", "number", [], 0.0),
    ("<answer> The Red. </answer>", "red", "text", [], 1.0),
    ("<answer> Yes, it is. </answer>", "yes", "text", [], 1.0),
    ("<answer> 0.5 </answer>", "1/2", "math", [], 1.0),
    ("It is <|seg|>.<|im_end|><answer> square </answer>", "square", "text", [], 1.0),
    ("no answer at all", "square", "text", [], 0.0),
])
def test_accuracy_uses_the_eval_scorers(text, answer, kind, options, expected):
    assert accuracy_reward([text], answer=[answer], answer_type=[kind], options=[options]) == [expected]


def test_format_rules():
    good = [SEG_THEN_ANSWER.format("red"), "<answer> red </answer>", "<answer> red </answer>.<|im_end|>"]
    bad = [
        "red<|im_end|>",  # no tags
        "<answer></answer>",  # empty answer
        "<answer> a </answer> <answer> b </answer>",  # two answers
        "<|seg|> <answer> red </answer>",  # seg and answer in one turn
        "It is red.<|im_end|><answer> red </answer>",  # an earlier turn without <|seg|>
        "observe <|seg|>.<|im_end|>",  # asked for a region and never answered (max_seg_steps)
        "observe <|seg|>.<|im_end|><answer> red",  # cut at the token limit
        "<answer> red </answer> and more text",
    ]
    assert format_reward(good) == [1.0, 1.0, 1.0]
    assert format_reward(bad) == [0.0] * len(bad)


def test_total_is_weighted_and_weights_are_configurable():
    texts = [SEG_THEN_ANSWER.format("red"), SEG_THEN_ANSWER.format("blue"), "red"]
    assert total_reward(texts, answer=["red"] * 3) == [1.0, 0.2, 0.8]
    assert total_reward(texts, weights={"accuracy": 0.5, "format": 0.5}, answer=["red"] * 3) == [1.0, 0.5, 0.5]


def test_a_raising_reward_scores_zero_and_is_counted():
    def picky(completions, answer, **_):
        out = []
        for a in answer:
            if a == "bad":
                raise ValueError("cannot parse the ground truth")
            out.append(1.0)
        return out

    texts = ["<answer> red </answer>"] * 3
    scores = score_completions(texts, {"format": 0.2, "picky": 0.8}, functions={**rewards.REWARDS, "picky": picky},
                               answer=["red", "bad", "blue"])
    assert scores.parts["picky"] == [1.0, 0.0, 1.0]
    assert scores.total == [1.0, 0.2, 1.0]
    assert scores.errors == {"picky": 1} and scores.error_count == 1
    assert scores.messages == ["picky: ValueError: cannot parse the ground truth"]


def test_a_prompt_without_answer_raises_in_accuracy_and_is_counted():
    scores = score_completions(["<answer> red </answer>"] * 2, rewards.PAPER_WEIGHTS, answer=["red", ""])
    assert scores.total == [1.0, 0.2] and scores.errors == {"accuracy": 1}


# ---------------------------------------------------------------------- maths (math_verify)

FRACTION = r"\frac{3}{4}"


@pytest.mark.parametrize(("said", "expected"), [
    ("3/4", 1.0), ("0.75", 1.0), (FRACTION, 1.0), (r"\boxed{\frac34}", 1.0), (r"$\dfrac{3}{4}$", 1.0),
    ("0.7", 0.0), ("4/3", 0.0), ("-3/4", 0.0), ("three quarters", 0.0),
])
def test_maths_answers_are_verified(said, expected):
    assert accuracy_reward([f"<answer> {said} </answer>"], answer=[FRACTION], answer_type=["math"]) == [expected]


def test_maths_cheap_rules_come_first_and_text_is_not_read_as_maths():
    texts = ["<answer> -3 </answer>", "<answer> 2\\sqrt{3} </answer>", "<answer> der </answer>",
             "<answer> Red. </answer>", "<answer> 12 cm </answer>"]
    # normalize_text would make -3 equal 3; read bare, 2\sqrt{3} is 2; as maths "red" is E*d*r = "der"
    assert accuracy_reward(texts, answer=["3", "2", "red", "red", "12"], answer_type=["math"] * 5) == [
        0.0, 0.0, 0.0, 1.0, 1.0]


def test_an_unparseable_maths_answer_scores_zero_and_is_counted():
    texts = [r"<answer> \frac{ </answer>", "<answer> 0.75 </answer>", "no tags at all {"]
    scores = score_completions(texts, rewards.PAPER_WEIGHTS, answer=[FRACTION] * 3, answer_type=["math"] * 3)
    assert scores.parts["accuracy"] == [0.0, 1.0, 0.0]
    assert scores.errors == {} and scores.counts == {"math_unparsed": 2}
    assert scores.total == [0.2, 1.0, 0.0]


def test_a_maths_check_that_times_out_scores_zero_and_is_counted(monkeypatch):
    import math_verify
    from math_verify.errors import TimeoutException

    from seganswer_cli.eval import answers

    def hangs(*args, **kwargs):
        raise TimeoutException("Operation timed out!")  # what math_verify's SIGALRM raises

    monkeypatch.setattr(math_verify, "parse", hangs)
    answers.verify_math.cache_clear()
    try:
        scores = score_completions(["<answer> 0.7 </answer>"], {"accuracy": 1.0}, answer=[FRACTION], answer_type=["math"])
    finally:
        answers.verify_math.cache_clear()  # nothing computed under the stub outlives the test
    assert scores.total == [0.0] and scores.errors == {} and scores.counts == {"math_timeout": 1}


# ---------------------------------------------------------------------- options written in the question

INLINE_QUESTIONS = [
    "What is x?\n(A) 12\n(B) 15",
    "What is x?\nChoices:\nA. 12\nB. 15\nC. 18",
    "What is x? A. 12 B. 15 C. 18",
    "What is x? Choices: A: 12 B: 15",
]


@pytest.mark.parametrize("question", INLINE_QUESTIONS)
@pytest.mark.parametrize("truth", ["A", "(A)", "12"])
def test_inline_options_match_by_letter_or_text(question, truth):
    said = ["(A) 12", "A", "A. 12", "12", "(B) 15", "B", "15"]
    texts = [f"<answer> {s} </answer>" for s in said]
    n = len(texts)
    got = accuracy_reward(texts, answer=[truth] * n, answer_type=["math"] * n, question=[question] * n)
    assert got == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_a_truth_that_names_no_listed_option_is_scored_as_maths():
    # "(A)"-like lines that are not the answer's options: the truth 20 is none of them
    question = "Sum the terms:\n(A) 12\n(B) 8"
    assert accuracy_reward(["<answer> 20 </answer>", "<answer> A </answer>"], answer=["20", "20"],
                           answer_type=["math", "math"], question=[question] * 2) == [1.0, 0.0]
