"""One answer rule everywhere: an output reads the same answer in ``infer`` (the loop's trajectory
and its record), in ``eval`` (the scorer) and in Stage 3 (the accuracy and format rewards).

The outputs are those the copies once disagreed on: a later answer tag left unclosed, an answer cut
by ``<|im_end|>`` before ``</answer>``, upper-case tags; and a few more a model writes."""

from __future__ import annotations

import pytest
import torch

from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.items import EvalItem
from seganswer_cli.model.conversation import answer_of, model_turns
from seganswer_cli.reasoning import Trajectory, trajectory_record
from seganswer_cli.train.rewards import accuracy_reward, format_reward

SEG = "To find the answer, it should first observe <|seg|>.<|im_end|>"

CASES = [
    # (output as the loop decodes it, answer, source, a text answer that is right, well formed)
    ("<answer>A</answer> wait <answer> C", "C", "unclosed", "C", False),
    ("<answer> blue<|im_end|>", "blue", "unclosed", "blue", False),
    ("<ANSWER> red </ANSWER>", "red", "tag", "red", True),
    (SEG + "<answer> red </answer>.<|im_end|>", "red", "tag", "red", True),
    (SEG + "It is red.<|im_end|>", "It is red", "untagged", "It is red", False),
    ("It is <|seg|>.<|im_end|>", None, "missing", "red", False),
    # what the shipped model wrote on odd images: fragments of the preamble and broken tags, no answers
    ("To<|im_end|>", None, "missing", "to", False),
    ("To first observe triangle<|im_end|>", None, "missing", "triangle", False),
    ("<answer> To square </answer square<|im_end|>", None, "missing", "square", False),
]


class _Tokens:
    """What ``trajectory_record`` reads of a trajectory's sequence."""

    target_mask = torch.zeros(4, dtype=torch.bool)

    def __len__(self) -> int:
        return 4


def trajectory_of(output: str) -> Trajectory:
    """The trajectory the loop returns for ``output``: its turns as ``ReasoningLoop`` keeps them (each
    closed one with its ``<|im_end|>``), the answer read as ``ReasoningLoop._trajectory`` reads it."""
    closed, _, last = output.rpartition("<|im_end|>")
    turns = [t + "<|im_end|>" for t in closed.split("<|im_end|>")] if closed or output.endswith("<|im_end|>") else []
    turns += [last] if last else []
    answer = answer_of("".join(turns))
    return Trajectory(question="q", sequence=_Tokens(), logprobs=torch.zeros(0), steps=[], turns=turns,
                      answer=answer.value, answer_source=answer.source, stop_reason="answer", timings={},
                      answer_reason=answer.reason)


@pytest.mark.parametrize(("output", "answer", "source", "right", "formed"), CASES)
def test_infer_eval_and_reward_read_one_answer(output, answer, source, right, formed):
    traj = trajectory_of(output)
    assert traj.text == output and len(traj.turns) == len(model_turns(output))
    assert (traj.answer, traj.answer_source) == (answer, source)  # what `infer` prints
    record = trajectory_record(traj)  # what `infer --json` and `infer --batch` write
    assert (record["answer"], record["answer_source"]) == (answer, source)
    assert (record["answer_reason"] is None) == (answer is not None)

    item = EvalItem(id="0", benchmark="b", image=None, question="q", prompt="q", answer=right, answer_kind="text")
    scored = score_sample(output, item)  # what `eval` scores
    assert scored.extracted == answer and scored.correct == (answer is not None)
    assert scored.rule == ("none" if answer is None else f"{source}:exact")
    assert accuracy_reward([output], answer=[right], answer_type=["text"]) == [float(answer is not None)]
    wrong = "something else entirely"
    assert accuracy_reward([output], answer=[wrong], answer_type=["text"]) == [0.0]
    assert format_reward([output]) == [float(formed)]


def test_a_choice_reads_the_same_letter_in_eval_and_the_reward():
    output = "<answer>A</answer> wait <answer> C"
    item = EvalItem(id="0", benchmark="b", image=None, question="q", prompt="q", answer="C", answer_kind="choice",
                    options={"A": "red", "B": "blue", "C": "green"})
    assert score_sample(output, item).extracted == "C"
    assert accuracy_reward([output], answer=["green"], answer_type=["choice"], options=[["red", "blue", "green"]],
                           answer_letter=["C"]) == [1.0]
