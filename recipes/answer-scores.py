"""How well does a model read the answer from each kind of look, grounding aside? (docs/shapes-experiment.md)

Teacher-forced over the four candidate answers (summed log-likelihood of the answer turn), on the
held-out shapes-vqa questions (seed 100003, the benchmark's), the model is shown the question's
*annotated* region as the sparse mask view (``mask``), as the box crop (``bbox``), or answers
directly from the first look in the direct-answer format Stage 2 trains (``direct``: no
``<|seg|>``, no second look). ``direct`` is the teacher-forced counterpart of the generated
``eval shapes-vqa --roi none`` (same format: the answer turn opens with ``<answer>``); ``mask`` and
``bbox`` those of ``eval shapes-vqa --roi mask|bbox --masks gt``.

    python recipes/answer-scores.py runs/shapes-demo/0-standin/model
    python recipes/answer-scores.py shapes --n 100

Prints one JSON line: accuracy per look and question type. Deterministic (no sampling).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from heldout import parse_args, questions

from seganswer_cli.data.shapes_scenes import DEMO_COLOURS, DEMO_KINDS
from seganswer_cli.model import SegAnswerModel
from seganswer_cli.model.conversation import prompt_and_answer, reasoning_sequence

LOOKS = ("mask", "bbox", "direct")


def best_candidate(model: SegAnswerModel, sample, look: str, candidates) -> str:
    image = sample.image.load()
    prompt, _ = prompt_and_answer(sample)
    view = None if look == "direct" else model.second_look(image, sample.region(), mode=look)[0]
    global_view = model.global_view(image)
    scores = model.token_logprobs([reasoning_sequence(model, global_view, prompt, c, view=view) for c in candidates])
    return candidates[int(torch.stack([s.sum() for s in scores]).argmax())]


def main() -> None:
    args = parse_args(__doc__, many_models=False)
    model = SegAnswerModel.from_pretrained(args.model).eval()  # a folder or a preset name
    right = {look: {"colour": [], "shape": []} for look in LOOKS}
    with torch.no_grad():
        for sample in questions(args.n):
            question_type = sample.extra["question_type"]
            candidates = list(DEMO_COLOURS if question_type == "colour" else DEMO_KINDS)
            for look in LOOKS:
                right[look][question_type].append(best_candidate(model, sample, look, candidates) == sample.answer)
    summary = {look: {q: round(float(np.mean(v)), 3) for q, v in r.items() if v}
               | {"all": round(float(np.mean(r["colour"] + r["shape"])), 3)} for look, r in right.items()}
    print(json.dumps({"model": args.model, "n": args.n, **summary}))


if __name__ == "__main__":
    main()
