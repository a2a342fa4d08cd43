"""Answer extraction: the <answer> tag, each documented fallback, and the rule each one records."""

from __future__ import annotations

import pytest

from seganswer_cli.eval.answers import (
    extract_choice,
    extract_yes_no,
    normalize_number,
    normalize_text,
    score_answer,
    score_sample,
)
from seganswer_cli.eval.items import EvalItem
from seganswer_cli.model.conversation import Answer, answer_of

OPTIONS = {"A": "red", "B": "dark blue", "C": "green", "D": "white"}


@pytest.mark.parametrize(
    ("output", "letter", "rule"),
    [
        ("<think>maybe A</think><answer>B</answer>", "B", "tag:letter"),
        ("<answer>(B)</answer>", "B", "tag:letter"),
        ("<answer> B. </answer>", "B", "tag:letter"),
        ("<answer>B) dark blue</answer>", "B", "tag:letter"),
        ("<answer>The answer is C.</answer>", "C", "tag:answer_prefix"),
        ("<answer>\\boxed{D}</answer>", "D", "tag:answer_prefix"),
        ("<answer>Dark blue</answer>", "B", "tag:option_text"),
        ("B", "B", "untagged:letter"),
        ("(C)", "C", "untagged:letter"),
        ("D.", "D", "untagged:letter"),
        ("(b)", "B", "untagged:letter"),
        ("Answer: A", "A", "untagged:answer_prefix"),
        ("After looking closely, the correct option is (C) green.", "C", "untagged:answer_prefix"),
        ("The cup looks green to me.", "C", "untagged:option_text"),
        # a later answer tag wins over an earlier one; an unclosed final tag (cut off) still counts
        ("<answer>A</answer> no wait <answer>D</answer>", "D", "tag:letter"),
        ("<answer>A</answer> no wait <answer>C", "C", "unclosed:letter"),
    ],
)
def test_choice_extraction_rules(output, letter, rule):
    extraction = extract_choice(output, OPTIONS)
    assert (extraction.value, extraction.rule) == (letter, rule)


@pytest.mark.parametrize(
    "output",
    [
        "",
        "<answer></answer>",
        "I cannot tell.",
        "It is red or green.",  # two options named: ambiguous, nothing extracted
        "<answer>E</answer>",  # not an option
        "A cat is sitting on the mat.",  # article "A" is not a choice
    ],
)
def test_choice_extraction_gives_up_rather_than_guess(output):
    assert extract_choice(output, OPTIONS).value is None
    assert extract_choice(output, OPTIONS).rule == "none"


def test_option_text_equal_to_whole_answer_beats_substrings():
    options = {"A": "blue", "B": "dark blue"}
    assert extract_choice("<answer>dark blue</answer>", options).value == "B"


@pytest.mark.parametrize(
    ("output", "value", "rule"),
    [
        ("<answer>Yes</answer>", "yes", "tag:yes_no"),
        ("<answer>no.</answer>", "no", "tag:yes_no"),
        ("Yes, there is a dog in the image.", "yes", "untagged:yes_no"),
        ("There is no dog in the image.", "no", "untagged:negation"),
        ("The image doesn't show a dog.", "no", "untagged:negation"),
        ("I would say yes.", "yes", "untagged:contains_yes"),
        ("There is a dog.", None, "none"),
    ],
)
def test_yes_no_normalisation(output, value, rule):
    extraction = extract_yes_no(output)
    assert (extraction.value, extraction.rule) == (value, rule)


def test_answer_without_tag_is_whole_output():
    assert answer_of("  just B  ") == Answer("just B", "untagged")


def test_chat_special_tokens_are_not_part_of_the_answer():
    """The reasoning loop's output keeps the special tokens it generated; an answer whose tag was not
    closed before ``<|im_end|>`` still scores by its words."""
    assert answer_of("<answer> star.<|im_end|>") == Answer("star", "unclosed")
    assert answer_of("It is <|seg|> red.<|im_end|>") == Answer(None, "missing", "asks_for_region")  # a turn asking for a region
    assert score_answer("<answer> blue<|im_end|>", item("text", "blue")) == 1.0
    assert score_answer("<answer> (C)<|im_end|>", item("choice", "C", OPTIONS)) == 1.0
    assert score_answer("<answer> blue</answer>.<|im_end|>", item("text", "blue")) == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("The Red Car.", "red car"), ("  an  apple!", "apple"), ("Dark-Blue", "dark blue"), ("", "")],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42.0),
        ("1,234 people", 1234.0),
        ("-3.5", -3.5),
        ("1/4", 0.25),
        ("50%", 0.5),
        ("three", 3.0),
        ("Seven.", 7.0),
        ("3 or 4", None),
        ("none", None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def item(answer_kind, answer, options=None):
    return EvalItem("q", "test", None, "question", "prompt", answer, answer_kind, options or {})


def test_score_answer_per_kind():
    assert score_answer("<answer>B</answer>", item("choice", "B", OPTIONS)) == 1.0
    assert score_answer("<answer>red</answer>", item("choice", "B", OPTIONS)) == 0.0
    assert score_answer("<answer>No, none.</answer>", item("yesno", "no")) == 1.0
    assert score_answer("<answer>The Eiffel Tower</answer>", item("text", "eiffel tower")) == 1.0
    assert score_answer("<answer>12.0</answer>", item("number", "12")) == 1.0
    assert score_answer("<answer>thirteen</answer>", item("number", "12")) == 0.0
    assert score_answer("no answer at all", item("choice", "A", OPTIONS)) == 0.0
    with pytest.raises(ValueError, match="mask"):
        score_answer("x", item("mask", ""))


def test_score_sample_records_rule_and_groups():
    question = EvalItem(
        "7", "vstar", None, "q", "p", "B", "choice", OPTIONS, {"category": "direct_attributes"}
    )
    result = score_sample("The answer is B", question)
    assert result.correct and result.extracted == "B" and result.rule == "untagged:answer_prefix"
    assert result.groups == {"category": "direct_attributes"} and result.answer == "B"
