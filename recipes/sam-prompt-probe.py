"""Does SAM 2.1, trained from scratch on the demo world, follow its prompt? (docs/shapes-experiment.md,
"Masks that follow the question, measured").

SAM 2.1 alone (the shapes-base architecture: Hiera image encoder, prompt encoder and mask decoder, all
from random weights) learns referring segmentation with the language model taken out of the question:
its prompt is an *oracle* text encoder, the sum of learned embeddings of the expression's words
(``--prompt words``), or SAM's own click on the shape's centroid (``--prompt click``). Each image is asked
about three of its shapes, so only the prompt tells the masks apart. Every ``--eval-every`` steps it
prints the held-out IoU (all shapes, and targets under 34 x 34 px, the size of the questions' targets)
and the mean IoU between the masks of different expressions of one image: near 1, SAM gives one mask
per image whatever it is asked.

    python recipes/sam-prompt-probe.py --lr 1e-3 --steps 600    # overlap -> 1.00: the prompt is ignored
    python recipes/sam-prompt-probe.py --lr 3e-4 --steps 600    # overlap ~0.2-0.3: it follows
    python recipes/sam-prompt-probe.py --lr 3e-4 --image-size 512
    python recipes/sam-prompt-probe.py --prompt click --steps 1500 --eval-every 250
        # ignored up to step 500, then it learns where a click points: IoU 0.81, small targets 0.74

Seeded (``--seed``); a few minutes per 600 steps at 256 px on 2 CPU cores (512 px: about 4x).
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch

from seganswer_cli.data.shapes_datasets import generate_samples
from seganswer_cli.data.shapes_language import more_expressions
from seganswer_cli.data.shapes_scenes import world
from seganswer_cli.model.losses import LossWeights, mask_losses, total_loss
from seganswer_cli.model.mask_decoder import SamMaskDecoder, build_tiny_sam, upsample_logits
from seganswer_cli.model.seganswer import resize_masks

SMALL = 34 * 34
"""Targets with fewer foreground pixels count as small (the questions' targets are 20-32 px)."""
TRAIN_SEED, VAL_SEED = 5, 999
"""Data seeds (plus ``--seed``) of the training scenes and the held-out ones: those of the runs the
docs quote."""


class WordPrompts(torch.nn.Module):
    """The oracle text encoder: one learned 256-d embedding per word, summed over the expression."""

    def __init__(self, dim: int = 256):
        super().__init__()
        self.vocab: dict[str, int] = {}
        self.embedding = torch.nn.Embedding(64, dim)
        torch.nn.init.normal_(self.embedding.weight, std=1.0)

    def forward(self, expressions: list[str]) -> torch.Tensor:
        rows = []
        for text in expressions:
            words = re.findall(r"[a-z]+", text.lower())
            ids = [self.vocab.setdefault(w, len(self.vocab)) for w in words]
            if max(ids) >= self.embedding.num_embeddings:
                raise ValueError("more distinct words than the oracle's 64 embeddings")
            rows.append(self.embedding(torch.tensor(ids)).sum(0))
        return torch.stack(rows)  # (n, dim)


def centroid(mask: np.ndarray, size: int) -> list[float]:
    """The mask's centroid ``(x, y)`` in SAM's input pixels."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return [xs.mean() / w * size, ys.mean() / h * size]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two bool masks of one size (0 when both are empty)."""
    return float((a & b).sum() / max(int((a | b).sum()), 1))


def scene_pairs(sample, extra: int) -> list[tuple[str, np.ndarray]]:
    """The sample's ``(expression, mask)`` and ``extra`` more of other shapes of its scene."""
    return [(sample.expression, sample.mask.decode().astype(bool))] + more_expressions(
        sample.extra["scene"], extra, seed=sample.id, exclude=sample.extra["target_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=256, help="SAM's input size (shapes-base: 256)")
    parser.add_argument("--prompt", choices=("words", "click"), default="words")
    parser.add_argument("--expressions", type=int, default=3, help="shapes asked about per image")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--val", type=int, default=64, help="held-out images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON line per evaluation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    size = args.image_size
    sam = SamMaskDecoder(build_tiny_sam(size, seed=args.seed))
    sam.requires_grad_(True)
    words = WordPrompts()
    params = [p for p in sam.parameters() if p.requires_grad] + list(words.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    weights = LossWeights()

    def prompts(pairs):
        if args.prompt == "click":
            return sam.point_prompts(torch.tensor([centroid(m, size) for _, m in pairs], dtype=torch.float32))
        return words([e for e, _ in pairs])

    demo = world("demo")
    val = [(s.image.load(), scene_pairs(s, args.expressions - 1))
           for s in generate_samples("refseg", args.val, demo, seed=VAL_SEED + args.seed)]

    @torch.no_grad()
    def evaluate(step: int, started: float) -> None:
        sam.eval()
        ious, small, overlap = [], [], []
        for image, pairs in val:
            pred = sam.decode(sam.encode(sam.preprocess([image])), prompts(pairs))
            masks = upsample_logits(pred.low_res_logits, (size, size)) > 0  # (n, S, S)
            targets = resize_masks([m for _, m in pairs], size) > 0.5
            for i, (_, native) in enumerate(pairs):
                ious.append(iou(masks[i], targets[i]))
                if native.sum() < SMALL:
                    small.append(ious[-1])
            overlap += [iou(masks[0], masks[i]) for i in range(1, len(pairs))]
        sam.train()
        row = {"step": step, "val_iou": round(float(np.mean(ious)), 4),
               "val_iou_small": round(float(np.mean(small)), 4) if small else None, "small_targets": len(small),
               "overlap_between_expressions": round(float(np.mean(overlap)), 4) if overlap else None,
               "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(row) if args.json else "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)

    train = generate_samples("refseg", args.steps * args.batch_size, demo, seed=TRAIN_SEED + args.seed)
    started = time.perf_counter()
    sam.train()
    for step in range(1, args.steps + 1):
        batch = [next(train) for _ in range(args.batch_size)]
        embeddings = sam.encode(sam.preprocess([s.image.load() for s in batch]))
        loss = 0.0
        for b, sample in enumerate(batch):
            pairs = scene_pairs(sample, args.expressions - 1)
            pred = sam.decode(embeddings.select(b), prompts(pairs))
            parts = mask_losses(upsample_logits(pred.low_res_logits, (size, size)),
                                resize_masks([m for _, m in pairs], size), pred.iou, pred.object_logits)
            loss = loss + total_loss(None, parts, weights) / len(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, started)


if __name__ == "__main__":
    main()
