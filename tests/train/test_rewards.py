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
