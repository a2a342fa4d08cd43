"""How well do a model's own masks find the shape a question is about? (docs/shapes-experiment.md)

On the held-out shapes-vqa questions (seed 100003, the benchmark's), each model runs the prefix
Stage 2's pass 1 runs (the question, then ``To find the answer, it should first observe <|seg|>.``)
and its ``<|seg|>`` state goes through the projector and SAM 2.1: the mask its second look would
show. Scored against the question's annotated region: mean IoU, the share with IoU >= 0.5, the
share of the target the mask covers, and the mask's area over the target's (median). ``click_iou``
is SAM 2.1's mean IoU when prompted instead with one click on the target (its pixel nearest the
centroid): what the mask decoder can do on these targets, the language model aside.

    python recipes/question-grounding.py runs/shapes-demo/2-merged runs/shapes-demo/3-stage2/model shapes

Prints one JSON line per model. Deterministic (no sampling).
"""

from __future__ import annotations

import json

import numpy as np
from heldout import parse_args, questions

from seganswer_cli.eval.metrics import mask_counts
from seganswer_cli.model import SegAnswerModel
from seganswer_cli.model.conversation import prompt_and_answer, seg_request
from seganswer_cli.train.stage2 import own_masks

BATCH = 10


def scores(model: SegAnswerModel, samples) -> dict[str, float]:
    iou, coverage, area, click = [], [], [], []
    for start in range(0, len(samples), BATCH):
        chunk = samples[start : start + BATCH]
        images = [s.image.load() for s in chunk]
        prefixes = [seg_request(model, model.global_view(image), prompt_and_answer(s)[0]) for s, image in zip(chunk, images)]
        targets = [s.region() for s in chunk]
        clicked = model.clicked_masks(images, targets)
        for target, mask, click_mask in zip(targets, own_masks(model, images, prefixes)[0], clicked):
            (inter, union), size = mask_counts(mask, target), max(int(target.sum()), 1)
            iou.append(inter / max(union, 1))
            coverage.append(inter / size)
            area.append(mask.sum() / size)
            inter, union = mask_counts(click_mask, target)
            click.append(inter / max(union, 1))
    return {"iou": round(float(np.mean(iou)), 3), "iou>=0.5": round(float(np.mean(np.array(iou) >= 0.5)), 3),
            "coverage": round(float(np.mean(coverage)), 3), "area/target": round(float(np.median(area)), 2),
            "click_iou": round(float(np.mean(click)), 3)}


def main() -> None:
    args = parse_args(__doc__, many_models=True)
    samples = questions(args.n)
    for name in args.models:
        model = SegAnswerModel.from_pretrained(name).eval()
        print(json.dumps({"model": name, "n": args.n, **scores(model, samples)}), flush=True)


if __name__ == "__main__":
    main()
