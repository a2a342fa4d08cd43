"""Can shapes-base's MLLM learn to read a shape's kind and colour, and at what size? (docs/shapes-experiment.md)

The MLLM of the shapes-base architecture (vision tower, merger and language model, from random
weights; SAM 2.1 is not involved) is trained with the next-token loss on one-turn conversations:
a grey 224 x 224 image with one shape of the demo world's kinds and colours, drawn ``--size-min``
to ``--size-max`` px across, and the question "What shape is it?" or "What is the colour of the
shape?" answered as ``<answer> star </answer>.``. Held-out images are scored teacher-forced over
the four candidate answers. The encoded image is 168 x 168 px (the global view's 36-token budget),
so a shape of S px in the image is 0.75 S px where the model sees it.

    python recipes/reading-probe.py --question kind --size-min 60 --size-max 120 --steps 1500   # ~chance
    python recipes/reading-probe.py --question kind --size-min 140 --size-max 160 --steps 800   # ~0.85

Seeded (``--seed``); ~8 steps/s per thread-pair on 2 CPU cores. Prints one JSON line per
``--eval-every`` steps (held-out accuracy per question type).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from seganswer_cli.data.shapes_scenes import COLOURS, shape_mask
from seganswer_cli.model import SegAnswerModel
from seganswer_cli.model.conversation import exchange_sequence

KINDS = ("circle", "square", "triangle", "star")
COLOUR_NAMES = ("red", "green", "blue", "yellow")
QUESTIONS = {"kind": "What shape is it?", "colour": "What is the colour of the shape?"}
IMAGE_SIZE = 224
VAL_SEED = 999
"""Data seed of the held-out images (training images use ``--seed``)."""


def sample(rng: np.random.Generator, args) -> tuple[Image.Image, str, str]:
    """One image, its question type and answer."""
    kind, colour = KINDS[rng.integers(4)], COLOUR_NAMES[rng.integers(4)]
    size = int(rng.integers(args.size_min, args.size_max + 1))
    y, x = (int(v) for v in rng.integers(0, IMAGE_SIZE - size + 1, size=2))
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128, np.uint8)
    pixels[y : y + size, x : x + size][shape_mask(kind, size)] = COLOURS[colour]
    question = args.question if args.question != "both" else ("kind", "colour")[rng.integers(2)]
    return Image.fromarray(pixels), question, kind if question == "kind" else colour


def answer_scores(model: SegAnswerModel, image: Image.Image, question: str, candidates) -> torch.Tensor:
    """Summed log-likelihood of each candidate's answer turn."""
    view = model.global_view(image)
    scores = model.token_logprobs([exchange_sequence(model, view, [(QUESTIONS[question], f"<answer> {c} </answer>.")])
                                   for c in candidates])
    return torch.stack([s.sum() for s in scores])


def evaluate(model: SegAnswerModel, args) -> dict:
    rng = np.random.default_rng(VAL_SEED)
    right: dict[str, list[bool]] = {"kind": [], "colour": []}
    model.eval()
    with torch.no_grad():
        for _ in range(args.val):
            image, question, answer = sample(rng, args)
            candidates = KINDS if question == "kind" else COLOUR_NAMES
            right[question].append(candidates[int(answer_scores(model, image, question, candidates).argmax())] == answer)
    model.train()
    return {f"{q}_accuracy": round(float(np.mean(v)), 3) for q, v in right.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", choices=("kind", "colour", "both"), default="kind")
    parser.add_argument("--size-min", type=int, default=140, help="smallest shape side in the 224-px image")
    parser.add_argument("--size-max", type=int, default=160)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val", type=int, default=100, help="held-out images")
    parser.add_argument("--eval-every", type=int, default=0, help="0: at the end only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not 8 <= args.size_min <= args.size_max <= IMAGE_SIZE:
        parser.error(f"need 8 <= --size-min <= --size-max <= {IMAGE_SIZE}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = SegAnswerModel.from_preset("shapes-base")
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.mllm.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    model.train()
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = [sample(rng, args) for _ in range(args.batch)]
        batch = model.collate([exchange_sequence(model, model.global_view(image), [(QUESTIONS[q], f"<answer> {a} </answer>.")])
                               for image, q, a in rows])
        hidden = model.language_model(model.embed(batch), batch.position_ids, batch.attention_mask).last_hidden_state
        loss = model.lm_loss(hidden, batch.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            row = {"step": step, "loss": round(loss.item(), 4), "size": [args.size_min, args.size_max],
                   **evaluate(model, args), "seconds": round(time.perf_counter() - started, 1)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
